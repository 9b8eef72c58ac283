# Vmalloc (issue 4): real pages, guard pages, batched purges, error paths.
# Labelled `concurrency` too: its pattern-writer threads and racing frees run
# under ThreadSanitizer in CI, the death tests and the rest come along.
uvmalloc_add_test(vmalloc_test vmalloc_test.cpp LABELS concurrency)
