// os_pages.hpp - the one place uvmalloc asks the kernel for memory.
//
// Every mmap, mprotect, madvise and munmap of uvmalloc lives in os_pages.cpp,
// behind the fault-injection seam of uvmalloc/fault_injection.hpp, so tests
// can make any of them fail. Errors are errno values in std::system_category();
// callers turn them into uvmalloc::errc::os_refused.
//
// The state of a page of a reservation is one of:
//   reserved   PROT_NONE, no page behind it, reads as zero once committed
//   committed  PROT_READ | PROT_WRITE, a page appears on first touch (or populate)
// decommit() takes any range back to reserved in one call, whatever mix of
// states and mappings it covers; that is what makes one call per merged run of
// freed areas possible.
#pragma once

#include <cstddef>
#include <expected>
#include <system_error>

namespace uvmalloc::os {

// os::page_size() - the kernel's page size (sysconf), read once.
[[nodiscard]] std::size_t page_size() noexcept;

// os::reserve() - `bytes` of fresh address space, PROT_NONE, MAP_NORESERVE
// (no commit charge, no pages). OsCall::reserve.
[[nodiscard]] std::expected<void*, std::error_code> reserve(std::size_t bytes);

// os::commit() - make reserved pages readable and writable (one mprotect).
// They stay absent until touched and read as zero. OsCall::commit.
[[nodiscard]] std::error_code commit(void* start, std::size_t bytes);

// os::populate() - fault committed pages in now, writable, instead of one
// page fault per page later: MADV_POPULATE_WRITE (Linux 5.14+), else a
// MAP_FIXED | MAP_POPULATE remap of the (still untouched) range. OsCall::populate.
[[nodiscard]] std::error_code populate(void* start, std::size_t bytes);

// os::decommit() - back to reserved: one mmap(MAP_FIXED, PROT_NONE,
// MAP_NORESERVE) over the range drops its pages and keeps the address space
// ours (munmap would let any other mmap of the process land there).
// OsCall::decommit.
[[nodiscard]] std::error_code decommit(void* start, std::size_t bytes);

// os::guard() - turn committed pages (a reused area's new guard page) back
// to reserved: the same call as decommit(), its own fault-injection kind so
// tests can fail it alone. OsCall::guard.
[[nodiscard]] std::error_code guard(void* start, std::size_t bytes);

// os::uncommit() - undo commit() and populate() on a range nobody has used
// yet: mprotect(PROT_NONE), then madvise(MADV_DONTNEED) for pages populate
// faulted in. Unlike decommit() it never needs a new kernel mapping (it only
// puts back the protection its neighbours have), so it still works when a
// commit failed because the process ran out of mappings. OsCall::decommit.
[[nodiscard]] std::error_code uncommit(void* start, std::size_t bytes);

// os::discard() - drop the pages of a committed range, leaving it committed
// (madvise MADV_DONTNEED: later reads see zero). The fallback when decommit()
// fails; it needs no new mapping, so it does not fail for the reason
// decommit() usually does (the process's map count limit). Best effort, not
// an injectable call.
void discard(void* start, std::size_t bytes) noexcept;

// os::zero() - make committed pages read as zero without making more of
// them resident: mincore() tells which pages are resident; those are zeroed
// with memset (far cheaper than the page fault a fresh page costs), runs of
// at least kDropRunPages absent pages are dropped with MADV_DONTNEED (a page
// in swap must not come back; an absent page costs nothing to drop), shorter
// absent runs are memset too. Should mincore or madvise fail, it memsets the
// range. Not an injectable call: it cannot fail.
inline constexpr std::size_t kDropRunPages = 16;
void zero(void* start, std::size_t bytes) noexcept;

// os::release() - give the address space back (munmap). OsCall::release.
[[nodiscard]] std::error_code release(void* start, std::size_t bytes);

}  // namespace uvmalloc::os
