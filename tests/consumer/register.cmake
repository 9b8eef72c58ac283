# Registers the package tests; included by the top-level CMakeLists.txt after
# the tests directory. Each builds tests/consumer against a fresh
# `cmake --install` of this build tree, so they work from any build directory
# and need the whole build done first (ctest runs after the build).
#
# A sanitizer build installs a sanitized library, so the consumer is compiled
# with the same options (the directory's COMPILE_OPTIONS/LINK_OPTIONS, which
# cmake/UvmallocSanitizers.cmake sets).
include(GNUInstallDirs)
get_directory_property(uvmalloc_dir_compile_options DIRECTORY ${PROJECT_SOURCE_DIR} COMPILE_OPTIONS)
get_directory_property(uvmalloc_dir_link_options DIRECTORY ${PROJECT_SOURCE_DIR} LINK_OPTIONS)
string(JOIN " " uvmalloc_consumer_cxx_flags ${CMAKE_CXX_FLAGS} ${uvmalloc_dir_compile_options})
string(JOIN " " uvmalloc_consumer_link_flags ${CMAKE_EXE_LINKER_FLAGS} ${uvmalloc_dir_link_options})

foreach(via cmake pkgconfig)
  add_test(NAME package_consumer_builds_against_install_via_${via}
    COMMAND ${CMAKE_COMMAND}
      -DBUILD_DIR=${PROJECT_BINARY_DIR}
      -DWORK_DIR=${PROJECT_BINARY_DIR}/package-test/${via}
      -DCONFIG=$<CONFIG>
      -DVIA=${via}
      -DCXX=${CMAKE_CXX_COMPILER}
      "-DCXX_FLAGS=${uvmalloc_consumer_cxx_flags}"
      "-DLINK_FLAGS=${uvmalloc_consumer_link_flags}"
      -DLIBDIR=${CMAKE_INSTALL_LIBDIR}
      -P ${CMAKE_CURRENT_LIST_DIR}/package_test.cmake)
  set_tests_properties(package_consumer_builds_against_install_via_${via} PROPERTIES
    LABELS package TIMEOUT 600)
endforeach()

add_test(NAME package_readme_example_is_the_consumer
  COMMAND ${CMAKE_COMMAND} -DREADME=${PROJECT_SOURCE_DIR}/README.md
    -DEXAMPLE=${CMAKE_CURRENT_LIST_DIR}/main.cpp
    -P ${CMAKE_CURRENT_LIST_DIR}/readme_example.cmake)
set_tests_properties(package_readme_example_is_the_consumer PROPERTIES LABELS package)
