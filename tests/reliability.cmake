# Issue 5's tests: fault injection at every system call, teardown, fork.
#
# fork_test is kept out of the ThreadSanitizer run (no `concurrency` label):
# TSan refuses a child that starts threads after a multi-threaded fork
# (die_after_fork), and liburcu's fork handling restarts call_rcu's worker
# thread in the child by design. It runs in the release and ASan builds.
uvmalloc_add_test(fault_injection_test fault_injection_test.cpp LABELS reliability)
uvmalloc_add_test(teardown_test teardown_test.cpp LABELS reliability concurrency)
uvmalloc_add_test(fork_test fork_test.cpp LABELS reliability)
