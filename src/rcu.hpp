// rcu.hpp - the one place uvmalloc talks to liburcu.
//
// We use liburcu's "bulletproof" flavour (urcu-bp): callers never register
// threads, because liburcu registers a thread at its first read-side section
// and drops the registration when the thread exits, so short-lived threads
// leak nothing. It is also the one flavour that survives fork() without exec
// while other threads are inside read-side sections: its fork handlers prune
// the registry of threads the child does not have, where the memb flavour's
// child would wait forever for them in the next grace period. The price is a
// registration check on each read-side entry, which our read-side sections
// (whole-list walks) do not notice.
//
// ThreadSanitizer cannot see liburcu's grace periods (0.13 is not TSan-aware).
// When built with TSan, every read-side unlock releases on one domain object
// and every retired object is released before call_rcu; the callback
// acquires both before reusing the object (DESIGN 3, recipe item 2).
#pragma once

#include <urcu/urcu-bp.h>

namespace uvmalloc::detail::rcu {

using Head = rcu_head;
using Callback = void (*)(Head*);

// Installs liburcu's fork handlers (once). Call before installing handlers
// that must run before them at fork (prepare handlers run last-in first).
void install_fork_handlers();

// A read-side critical section. Nests. Never blocks writers.
class ReadGuard {
 public:
  ReadGuard();
  ~ReadGuard();
  ReadGuard(const ReadGuard&) = delete;
  ReadGuard& operator=(const ReadGuard&) = delete;
};

// Runs cb(head) after a grace period on liburcu's call_rcu worker thread.
// `object` is what the callback will reuse (for the TSan annotation).
void call(Head* head, Callback cb, void* object);

// Called first thing in a callback passed to call(), with the same object.
void callback_entered(void* object);

// Waits for every callback queued with call() before it (rcu_barrier).
void barrier();

}  // namespace uvmalloc::detail::rcu
