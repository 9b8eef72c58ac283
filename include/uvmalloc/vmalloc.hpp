// uvmalloc/vmalloc.hpp - real memory on a reserved range, the userspace vmalloc.
//
// Vmalloc reserves a range of the process's address space once (mmap
// PROT_NONE, MAP_NORESERVE: no pages, no commit charge) and runs a VaSpace
// over it. vmalloc(size) takes the lowest area that fits plus one guard page,
// makes the area readable and writable and returns it page aligned and zeroed;
// the guard page after it stays inaccessible, so running off the end faults.
// vfree(p) frees lazily: the pages stay until the next purge, which gives back
// every lazily freed area in one system call per run of adjacent areas. That
// is the userspace twin of the kernel's one TLB flush per purge: every
// munmap/mprotect in a multi-threaded process interrupts every other core
// running it (a TLB shootdown), so one call over sixteen adjacent buffers
// instead of sixteen calls is several times cheaper (DESIGN 2.2).
//
// A purge starts by itself once lazily freed pages exceed lazy_max_pages, so
// freed memory still resident is bounded by that figure; purge() forces one.
// After purge() returns, every page freed before the call faults when touched
// and no longer counts in the process's resident memory.
//
// Reuse (VmallocOptions::reuse, on by default): until the purge, a freed
// area's pages are still mapped and resident, so vmalloc first looks for the
// smallest freed area that fits (VaSpace::reuse_lazy; neighbouring freed
// buffers are joined into one area as they are freed), zeroes the part it
// hands out and cuts a new guard page after it if the area was larger (one
// mmap of that page; one mprotect more when the part spans the old guard
// pages of joined buffers). Zeroing asks the kernel which pages are resident
// (mincore): those are cleared with memset, which costs a fraction of a page
// fault per page (the kernel zeroes fresh pages too, and adds a trap, page
// allocation and accounting to each); long runs of absent pages are dropped
// with MADV_DONTNEED instead, so reuse never makes more memory resident than
// the last owner did. The purge still gives back whatever nobody took back,
// so the bound and the guarantee above are unchanged.
//
// Thread safety: every method may be called from any thread at any time, with
// no registration. Allocation and freeing serialise on the VaSpace's writers'
// lock for the bookkeeping only; the system calls run outside it.
// stats() and space().info() read without that lock.
//
// Limits: with guard pages each live area is two kernel mappings (the area
// and its guard), so a process's vm.max_map_count (65530 by default) caps
// live areas at about 32 k; past that the kernel refuses the mprotect and
// vmalloc() returns not_enough_memory. Without guard pages, neighbouring
// areas merge into one mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <memory>
#include <system_error>

#include "uvmalloc/va_space.hpp"

namespace uvmalloc {

struct VmallocOptions {
  std::size_t reserve = std::size_t{1} << 36;  // bytes of address space to reserve
  InfoMode info_mode = InfoMode::rcu_walk;
  std::size_t lazy_max_pages = 0;              // 0: the kernel's formula
  bool guard_page = true;                      // one inaccessible page after each area
  bool populate = false;                       // vmalloc(size) pre-faults (VmallocFlags::populate)
  // vmalloc may take back a freed area whose pages the next purge has not
  // given back yet (VaSpace::reuse_lazy) and zero it with memset, instead of
  // faulting in fresh pages: several times faster for buffers that are
  // written soon (`uvmalloc bench churn`). Resident memory stays bounded by
  // lazy_max_pages either way. false: every vmalloc takes fresh pages.
  bool reuse = true;
};

// Per-call choices for Vmalloc::vmalloc(size, flags).
enum class VmallocFlags : unsigned {
  none = 0,
  // Fault every page in during vmalloc, writable, in one system call
  // (MADV_POPULATE_WRITE; MAP_POPULATE on kernels before 5.14), instead of
  // one page fault per page at first touch. The kernel zeroes the same pages
  // either way; what populate saves is the trap per page (measured by
  // `uvmalloc bench churn`), and it moves the cost into vmalloc so later
  // accesses run at full speed. It pays when the caller will touch every page
  // soon; it costs memory and time for pages that would never be touched.
  populate = 1u << 0,
};

struct VmallocStats {
  // What vmalloc handed out and is not freed. bytes_live counts the sizes
  // asked for, rounded up to pages; guard pages are not included (the VaSpace
  // areas in space().info() are, one page each).
  std::uint64_t areas_live, bytes_live;
  // What purges gave back: purges that had something to give, decommit system
  // calls they made (one per merged run), and bytes given back by those calls.
  std::uint64_t purges, unmap_calls, unmapped_bytes;
  // Runs the kernel refused to decommit (a failed call in a purge or a
  // rollback). Such a run keeps its address space committed and is
  // quarantined: its pages are dropped (MADV_DONTNEED) and no vmalloc hands
  // it out while quarantined_bytes counts it; the decommit is retried before
  // every vmalloc and purge until it succeeds.
  std::uint64_t decommit_failures, quarantined_bytes;
  // vmallocs served from freed, not yet purged pages (VmallocOptions::reuse);
  // how many of those cut a larger freed area, and how many took (part of)
  // an area joined from neighbours freed separately. With guard pages each
  // cut makes one system call for the new guard page and each joined one
  // one mprotect over the part handed out (its old guard pages become
  // writable); an exact fit of one freed buffer makes none.
  std::uint64_t reuses, reuse_splits, reuse_joined;
};

class Vmalloc {
 public:
  // Vmalloc::create()
  // Reserves options.reserve bytes of address space.
  // Errors: invalid_argument (bad_options) when reserve is not a multiple of
  // the page size or leaves no room for one page (and its guard page);
  // not_enough_memory (os_refused) when the kernel refuses the reservation.
  [[nodiscard]] static std::expected<std::unique_ptr<Vmalloc>, std::error_code> create(
      const VmallocOptions& options);

  // Gives the whole reservation back to the kernel in one munmap, freed and
  // live areas alike (should the kernel refuse, the range is decommitted
  // instead: it keeps no pages and no access). No other thread may be inside
  // a method, or call one after.
  ~Vmalloc();
  Vmalloc(const Vmalloc&) = delete;
  Vmalloc& operator=(const Vmalloc&) = delete;

  // Vmalloc::vmalloc()
  // round_up(size, page) bytes, page aligned, zeroed, readable and writable,
  // followed by a guard page that faults when touched (unless
  // options.guard_page is false): a freed, not yet purged area that fits
  // when options.reuse is set and there is one (its pages are resident),
  // else fresh pages at the lowest address of the reservation that fits.
  // vmalloc(size) pre-faults when options.populate is set, reused pages
  // too (those the last owner never touched).
  // Errors: invalid_argument (zero_size, size_overflow); not_enough_memory
  // when the reservation has no room even after purging (no_space) or the
  // kernel refuses the pages (os_refused). On an error nothing is left
  // allocated or mapped.
  [[nodiscard]] std::expected<void*, std::error_code> vmalloc(std::size_t size);
  [[nodiscard]] std::expected<void*, std::error_code> vmalloc(std::size_t size, VmallocFlags flags);

  // Vmalloc::vfree()
  // Frees lazily what vmalloc returned: the pages go back at the next purge.
  // nullptr is a no-op. Errors: invalid_argument (not_an_area) for any
  // pointer vmalloc did not return or that was freed already; nothing changes.
  std::error_code vfree(void* p);

  // Vmalloc::purge()
  // When it returns, every area freed before the call is decommitted: its
  // pages fault when touched and are no longer resident.
  void purge();

  // Vmalloc::space() - the reservation's VaSpace, for info(), meminfo() and
  // vmallocinfo(). Its areas include the guard pages.
  [[nodiscard]] const VaSpace& space() const noexcept;

  // Vmalloc::stats() - counters read without a lock; not a snapshot of one
  // instant while other threads allocate or free.
  [[nodiscard]] VmallocStats stats() const noexcept;

  struct Impl;

 private:
  explicit Vmalloc(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace uvmalloc
