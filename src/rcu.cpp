// rcu.cpp - registration, read-side sections, deferred callbacks, fork.
#include "rcu.hpp"

#include <pthread.h>


#if defined(__SANITIZE_THREAD__)
#define UVMALLOC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UVMALLOC_TSAN 1
#endif
#endif

#ifdef UVMALLOC_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace uvmalloc::detail::rcu {
namespace {

#ifdef UVMALLOC_TSAN
// Stands for "a grace period has elapsed": readers release on it when they
// leave a section, callbacks acquire it before touching retired objects.
char grace_period_domain;
inline void tsan_release(void* p) { __tsan_release(p); }
inline void tsan_acquire(void* p) { __tsan_acquire(p); }
#else
inline void tsan_release(void*) {}
inline void tsan_acquire(void*) {}
#endif
void* domain() {
#ifdef UVMALLOC_TSAN
  return &grace_period_domain;
#else
  return nullptr;
#endif
}

// Both the reader registry and call_rcu's worker threads need fork handlers
// (liburcu's README, "Interaction with fork()"). Our callbacks never call
// malloc/free, which is what makes pthread_atfork safe here.
void before_fork() {
  urcu_bp_call_rcu_before_fork();
  urcu_bp_before_fork();
}
void after_fork_parent() {
  urcu_bp_after_fork_parent();
  urcu_bp_call_rcu_after_fork_parent();
}
void after_fork_child() {
  urcu_bp_after_fork_child();
  urcu_bp_call_rcu_after_fork_child();
}

}  // namespace

void install_fork_handlers() {
  // A function-local static: after the first call, one inline acquire load.
  static const bool installed =
      pthread_atfork(before_fork, after_fork_parent, after_fork_child) == 0;
  (void)installed;
}

ReadGuard::ReadGuard() {
  install_fork_handlers();
  urcu_bp_read_lock();
}

ReadGuard::~ReadGuard() {
  tsan_release(domain());
  urcu_bp_read_unlock();
}

void call(Head* head, Callback cb, void* object) {
  install_fork_handlers();
  tsan_release(object);
  urcu_bp_call_rcu(head, cb);
}

void callback_entered(void* object) {
  tsan_acquire(domain());
  tsan_acquire(object);
}

void barrier() { urcu_bp_barrier(); }

}  // namespace uvmalloc::detail::rcu
