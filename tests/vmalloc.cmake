# Vmalloc (issue 4): real pages, guard pages, batched purges, error paths.
# Labelled `concurrency` too: its pattern-writer threads and racing frees run
# under ThreadSanitizer in CI, the death tests and the rest come along.
uvmalloc_add_test(vmalloc_test vmalloc_test.cpp LABELS concurrency)

# `uvmalloc bench churn` end to end, briefly: every peer runs in its child
# process and reports; the mmap peer must count exactly one munmap per free.
if(UVMALLOC_BUILD_TOOLS)
  add_test(NAME bench_churn_smoke
           COMMAND ${UVMALLOC_TEST_LAUNCHER} $<TARGET_FILE:uvmalloc_tool> bench churn
                   --seconds 0.05 --repeats 1 --threads 1,2 --no-strace --json)
  set_tests_properties(bench_churn_smoke PROPERTIES
    LABELS "tool"
    ENVIRONMENT_MODIFICATION "${UVMALLOC_TEST_ENVIRONMENT}"
    TIMEOUT 120
    PASS_REGULAR_EXPRESSION "\"peer\": \"mmap\",[^}]*\"unmap_calls_per_1000_frees\": 1000\\.0"
    FAIL_REGULAR_EXPRESSION "error")
endif()
