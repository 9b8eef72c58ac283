# `uvmalloc bench churn` runs its jemalloc peer in a child process with
# LD_PRELOAD (Debian's libjemalloc replaces malloc rather than prefixing it),
# so the tool needs only the library's path, not a link against it.
find_library(UVMALLOC_JEMALLOC_LIBRARY NAMES libjemalloc.so.2 jemalloc)
if(UVMALLOC_JEMALLOC_LIBRARY)
  get_filename_component(_uvmalloc_jemalloc_real "${UVMALLOC_JEMALLOC_LIBRARY}" REALPATH)
  target_compile_definitions(uvmalloc_tool PRIVATE UVMALLOC_JEMALLOC_PATH="${_uvmalloc_jemalloc_real}")
else()
  message(STATUS "libjemalloc not found: `uvmalloc bench churn` runs without its jemalloc peer")
endif()
