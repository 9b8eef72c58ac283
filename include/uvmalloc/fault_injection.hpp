// uvmalloc/fault_injection.hpp - make uvmalloc's system calls fail on purpose.
//
// Every call uvmalloc makes to the kernel for memory goes through one small
// file (src/os_pages.cpp), and each kind of call passes through this seam
// first. A test arms a kind with inject(): after `skip` more calls of that
// kind succeed, the next `count` calls fail with errno `err` without reaching
// the kernel. That is how the tests prove the error paths ("the kernel refused
// memory, nothing leaked") that a healthy machine never takes.
//
//   OsCall     system call                                  made by
//   reserve    mmap(PROT_NONE, MAP_NORESERVE)               Vmalloc::create()
//   commit     mprotect(PROT_READ | PROT_WRITE)             Vmalloc::vmalloc() (fresh pages, or
//                                                           the part of a reused joined area)
//   populate   madvise(MADV_POPULATE_WRITE) (or MAP_POPULATE) vmalloc() with populate
//   decommit   mmap(MAP_FIXED, PROT_NONE, MAP_NORESERVE)    purges (one per merged run)
//              mprotect(PROT_NONE) + madvise(MADV_DONTNEED) vmalloc() rolling back a failure
//   release    munmap() of the whole reservation            ~Vmalloc()
//   guard      mmap(MAP_FIXED, PROT_NONE, MAP_NORESERVE)    vmalloc() cutting a reused area
//              over one page                                (its new guard page)
//
// Thread safety: every function may be called from any thread at any time.
// Counting is one relaxed fetch_add per call (beside a system call that costs
// a microsecond or more); the injection check is one relaxed load while
// nothing is armed. Arming and clearing while other threads make calls is
// safe, but which of their concurrent calls fail is then up to timing.
#pragma once

#include <cstdint>

namespace uvmalloc::fault {

// The kinds of system call that can be made to fail (table above).
enum class OsCall { reserve, commit, populate, decommit, release, guard };

// fault::inject()
// After `skip` further successful calls of kind `call`, the next `count`
// calls of that kind fail with errno `err` (e.g. ENOMEM) and do nothing.
// Replaces any injection armed earlier for the same kind; other kinds keep
// theirs. count == 0 disarms the kind.
void inject(OsCall call, unsigned skip, unsigned count, int err);

// fault::clear()
// Disarms every kind and sets every call count back to zero.
void clear();

// fault::calls()
// How many calls of kind `call` were attempted since the start of the
// process or the last clear(), injected failures included.
[[nodiscard]] std::uint64_t calls(OsCall call);

}  // namespace uvmalloc::fault
