// rcu.cpp - registration, read-side sections, deferred callbacks, fork.
#include "rcu.hpp"

#include <pthread.h>

#include <mutex>

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

// call_rcu's worker threads must be paused across fork() and recreated in
// the child (liburcu's rcu-api.md). Our callbacks never call malloc/free,
// which is what makes pthread_atfork safe here.
void install_fork_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    pthread_atfork(urcu_memb_call_rcu_before_fork, urcu_memb_call_rcu_after_fork_parent,
                   urcu_memb_call_rcu_after_fork_child);
  });
}

struct ThreadRegistration {
  bool registered = false;
  ~ThreadRegistration() {
    if (registered) urcu_memb_unregister_thread();
  }
};
thread_local ThreadRegistration registration;

}  // namespace

void ensure_registered() {
  if (registration.registered) [[likely]]
    return;
  install_fork_handlers();
  urcu_memb_register_thread();
  registration.registered = true;
}

ReadGuard::ReadGuard() {
  ensure_registered();
  urcu_memb_read_lock();
}

ReadGuard::~ReadGuard() {
  tsan_release(domain());
  urcu_memb_read_unlock();
}

void call(Head* head, Callback cb, void* object) {
  ensure_registered();
  tsan_release(object);
  urcu_memb_call_rcu(head, cb);
}

void callback_entered(void* object) {
  tsan_acquire(domain());
  tsan_acquire(object);
}

void barrier() {
  ensure_registered();
  urcu_memb_barrier();
}

}  // namespace uvmalloc::detail::rcu
