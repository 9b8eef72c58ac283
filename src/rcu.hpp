// rcu.hpp - the one place uvmalloc talks to liburcu (memb flavour).
//
// Callers of uvmalloc never register threads: the first read-side section or
// call_rcu() of a thread registers it, and a thread_local guard unregisters it
// when the thread exits, so short-lived threads leak nothing.
//
// ThreadSanitizer cannot see liburcu's grace periods (0.13 is not TSan-aware).
// When built with TSan, every read-side unlock releases on one domain object
// and every retired object is released before call_rcu; the callback
// acquires both before reusing the object (DESIGN 3, recipe item 2).
#pragma once

#include <urcu/urcu-memb.h>

namespace uvmalloc::detail::rcu {

using Head = rcu_head;
using Callback = void (*)(Head*);

// Registers the calling thread with liburcu once; cheap after the first call.
void ensure_registered();

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
