# Tests of the `uvmalloc` command line tool (tools/), included by
# tests/CMakeLists.txt. tool_test runs the built binary and checks its exit
# codes, error lines, JSON/CSV shape and pictures; tool_demo_finishes runs
# `uvmalloc demo` on defaults and fails if it takes a minute or more.
if(UVMALLOC_BUILD_TOOLS)
  find_package(nlohmann_json 3 CONFIG REQUIRED)
  uvmalloc_add_test(tool_test tool_test.cpp LABELS tool)
  target_link_libraries(tool_test PRIVATE nlohmann_json::nlohmann_json)
  # uvmalloc_tool is defined later (tools/ comes after tests/); both of these
  # resolve at generate time.
  target_compile_definitions(tool_test PRIVATE UVMALLOC_TOOL_PATH="$<TARGET_FILE:uvmalloc_tool>")
  add_dependencies(tool_test uvmalloc_tool)

  add_test(NAME tool_demo_finishes COMMAND ${UVMALLOC_TEST_LAUNCHER} $<TARGET_FILE:uvmalloc_tool> demo)
  set_tests_properties(tool_demo_finishes PROPERTIES
    LABELS "tool;slow"
    ENVIRONMENT_MODIFICATION "${UVMALLOC_TEST_ENVIRONMENT}"
    TIMEOUT 60  # the demo's promise: under a minute on defaults
    PASS_REGULAR_EXPRESSION "the writer kept [0-9.]+% of its speed when meminfo takes the lock")
endif()
