# Installation and packaging: `cmake --install` lays out headers, the library,
# a CMake package (find_package(uvmalloc CONFIG)) and a pkg-config file.
#
# The library links liburcu-bp PRIVATE, through the imported target
# PkgConfig::URCU. A shared libuvmalloc hides it from consumers; a static one
# (the default) names it in its exported link interface, so the installed
# config recreates that target with pkg-config and a consumer links nothing by
# hand.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(UVMALLOC_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/uvmalloc)

install(TARGETS uvmalloc EXPORT uvmallocTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/uvmalloc
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp")
install(EXPORT uvmallocTargets
  NAMESPACE uvmalloc::
  DESTINATION ${UVMALLOC_INSTALL_CMAKEDIR})

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/uvmallocConfig.cmake.in
  ${PROJECT_BINARY_DIR}/uvmallocConfig.cmake
  INSTALL_DESTINATION ${UVMALLOC_INSTALL_CMAKEDIR})
# 0.x releases may break the API between minor versions.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/uvmallocConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/uvmallocConfig.cmake
  ${PROJECT_BINARY_DIR}/uvmallocConfigVersion.cmake
  DESTINATION ${UVMALLOC_INSTALL_CMAKEDIR})

# The .pc file locates its prefix from its own directory (${pcfiledir}), so an
# installation can be moved, or made with `cmake --install --prefix`, and
# still point at itself.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(UVMALLOC_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(UVMALLOC_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  file(RELATIVE_PATH UVMALLOC_PC_UP "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
  string(REGEX REPLACE "/$" "" UVMALLOC_PC_UP "${UVMALLOC_PC_UP}")
  set(UVMALLOC_PC_PREFIX "\${pcfiledir}/${UVMALLOC_PC_UP}")
  set(UVMALLOC_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(UVMALLOC_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(UVMALLOC_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/uvmalloc.pc.in
  ${PROJECT_BINARY_DIR}/uvmalloc.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/uvmalloc.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
