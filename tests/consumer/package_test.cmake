# The package test, run as `cmake -P` by ctest (see register.cmake):
# installs the current build into a fresh prefix, builds tests/consumer
# against that prefix alone, and runs it.
#
#   -DBUILD_DIR=...    the uvmalloc build to install
#   -DWORK_DIR=...     scratch directory, emptied first
#   -DCONFIG=...       the build configuration (ctest -C, or CMAKE_BUILD_TYPE)
#   -DVIA=cmake        find_package(uvmalloc CONFIG) from tests/consumer/CMakeLists.txt
#   -DVIA=pkgconfig    the compiler alone, with `pkg-config --static uvmalloc`
#   -DCXX=... -DCXX_FLAGS=... -DLINK_FLAGS=...   how the library was compiled
#                      (sanitizer builds must build the consumer the same way)
#   -DLIBDIR=...       CMAKE_INSTALL_LIBDIR of the build
cmake_minimum_required(VERSION 3.20)
foreach(var BUILD_DIR WORK_DIR VIA CXX LIBDIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "package_test.cmake: -D${var}=... is required")
  endif()
endforeach()
set(consumer_dir ${CMAKE_CURRENT_LIST_DIR})
set(prefix ${WORK_DIR}/prefix)

# run(<what> COMMAND ...) runs a step and stops the test with its output
# when the step fails.
function(run what)
  execute_process(${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "package test: ${what} failed (${status}):\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()
run("cmake --install ${BUILD_DIR}"
    COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} ${config_args})

if(VIA STREQUAL "cmake")
  run("configuring the consumer"
      COMMAND ${CMAKE_COMMAND} -S ${consumer_dir} -B ${WORK_DIR}/build
              -DCMAKE_BUILD_TYPE=${CONFIG}
              -DCMAKE_CXX_COMPILER=${CXX}
              "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
              "-DCMAKE_EXE_LINKER_FLAGS=${LINK_FLAGS}"
              -DCMAKE_PREFIX_PATH=${prefix}
              -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
  # The package must come from the fresh prefix, not from a system install.
  file(STRINGS ${WORK_DIR}/build/CMakeCache.txt found_dir REGEX "^uvmalloc_DIR:")
  string(FIND "${found_dir}" "${prefix}/" at)
  if(NOT at GREATER -1)
    message(FATAL_ERROR "package test: the consumer found uvmalloc outside ${prefix}: ${found_dir}")
  endif()
  run("building the consumer"
      COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build ${config_args})
  find_program(consumer NAMES consumer PATHS ${WORK_DIR}/build ${WORK_DIR}/build/${CONFIG}
               NO_DEFAULT_PATH REQUIRED)
elseif(VIA STREQUAL "pkgconfig")
  find_program(PKG_CONFIG NAMES pkg-config REQUIRED)
  set(ENV{PKG_CONFIG_PATH} "${prefix}/${LIBDIR}/pkgconfig:$ENV{PKG_CONFIG_PATH}")
  run("pkg-config uvmalloc"
      COMMAND ${PKG_CONFIG} --static --cflags --libs uvmalloc)
  separate_arguments(pc_flags UNIX_COMMAND "${step_output}")
  separate_arguments(cxx_flags UNIX_COMMAND "${CXX_FLAGS} ${LINK_FLAGS}")
  set(consumer ${WORK_DIR}/consumer)
  run("compiling the consumer with pkg-config's flags"
      COMMAND ${CXX} -std=c++23 ${cxx_flags} ${consumer_dir}/main.cpp ${pc_flags} -o ${consumer})
else()
  message(FATAL_ERROR "package_test.cmake: VIA must be cmake or pkgconfig, not '${VIA}'")
endif()

run("running the consumer" COMMAND ${consumer})
message(STATUS "package test (${VIA}) passed; the consumer printed:\n${step_output}")
