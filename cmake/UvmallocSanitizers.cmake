# UVMALLOC_SANITIZE=address -> AddressSanitizer + UBSan; =thread -> ThreadSanitizer.
# Applied to every target of the build, so library, tests and tools agree.
if(UVMALLOC_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(UVMALLOC_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(NOT UVMALLOC_SANITIZE STREQUAL "")
  message(FATAL_ERROR "UVMALLOC_SANITIZE must be '', 'address' or 'thread', not '${UVMALLOC_SANITIZE}'")
endif()
