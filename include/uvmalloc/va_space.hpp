// uvmalloc/va_space.hpp - the virtual-area allocator.
//
// VaSpace manages the numbers [start, end): it hands out aligned areas at the
// lowest address that fits, frees them at once or lazily (a batch at a time,
// as the kernel's vfree does), and lets any thread read its statistics and
// walk its areas without taking the writers' lock. It maps nothing itself;
// Vmalloc (uvmalloc/vmalloc.hpp) runs one over a reserved mmap range.
//
// Thread safety: every method may be called from any thread at any time,
// without registering the thread with anything first. Writers (alloc, free,
// free_lazy, free_lazy_reusable, reuse_lazy, purge) serialise on one lock,
// which find() takes too. Readers never take it in the
// rcu_walk and counters modes: info(), vmallocinfo() and for_each_area() walk
// an RCU-protected list, info(counters) reads a published pair of figures.
//
// Memory ordering: a reader that observes an area also observes its start and
// end as the writer set them (release publish, acquire follow). A walk under
// RCU is not a snapshot of one instant (see DESIGN 1); counters are.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>

namespace uvmalloc {

// How info() computes its figures.
enum class InfoMode {
  locked,    // walk the area list under the writers' lock (Linux before the seed)
  rcu_walk,  // walk the area list under RCU, no lock (the seed)
  counters,  // O(1): read the exact figures the writers publish
};

// A half-open range of addresses [start, end).
struct Area {
  std::uintptr_t start;
  std::uintptr_t end;
  friend bool operator==(const Area&, const Area&) = default;
};

struct VaSpaceOptions {
  std::uintptr_t start = 0;        // first managed address, multiple of page_size
  std::uintptr_t end = 0;          // one past the last, multiple of page_size, > start
  std::size_t page_size = 4096;    // power of two
  InfoMode info_mode = InfoMode::rcu_walk;
  std::size_t lazy_max_pages = 0;  // 0: the kernel's formula for this machine
  // Called once per purge with the lazily freed ranges, adjacent ones merged,
  // before any of them can be allocated again (the kernel's one TLB flush).
  // Runs in the purging thread without the writers' lock held; purges are
  // serialised, so it is never called concurrently with itself.
  std::function<void(std::span<const Area> merged)> on_purge;
};

// /proc/meminfo's figures, in bytes. Lazily freed areas count as free.
struct VmallocInfo {
  std::size_t total;          // end - start
  std::size_t used;           // summed size of live areas
  std::size_t largest_chunk;  // largest gap between live areas (and the range's ends)
  friend bool operator==(const VmallocInfo&, const VmallocInfo&) = default;
};

// What an enumeration reports for each area on the list.
struct AreaInfo {
  std::uintptr_t start;
  std::uintptr_t end;
  bool lazy;  // freed with free_lazy, waiting for a purge
};

// What VaSpace::reuse_lazy() took back.
struct ReusedArea {
  // The reusable lazily freed area before the cut; the new live area is its
  // first round_up(size, page_size) bytes.
  Area was;
  // true when `was` was joined from areas freed separately (see
  // free_lazy_reusable): whatever the owner kept at their old boundaries
  // (Vmalloc: a guard page after each) may lie inside it. A piece left over
  // from a joined area stays joined.
  bool joined;
};

// Writer-side event counts since create(); read without the lock.
struct VaSpaceStats {
  std::uint64_t allocs, frees, lazy_frees, purges, purged_areas, failed_allocs;
  std::uint64_t lazy_reuses;  // successful reuse_lazy() calls (not counted in allocs)
};

// The kernel's lazy_max_pages(): 32 MiB worth of pages times fls(online CPUs).
[[nodiscard]] std::size_t default_lazy_max_pages(std::size_t page_size);

class VaSpace {
 public:
  // VaSpace::create()
  // Errors: invalid_argument when start/end are not multiples of page_size,
  // end <= start, or page_size is not a power of two.
  [[nodiscard]] static std::expected<std::unique_ptr<VaSpace>, std::error_code> create(
      const VaSpaceOptions& options);

  // Waits for every deferred release of this space (call_rcu callbacks).
  // No other thread may be inside a method of this space, or call one after.
  ~VaSpace();
  VaSpace(const VaSpace&) = delete;
  VaSpace& operator=(const VaSpace&) = delete;

  // VaSpace::alloc()
  // The lowest address a, a % max(align, page_size) == 0, with
  // [a, a + round_up(size, page_size)) inside [vstart, vend) and overlapping
  // no live or lazily freed area. On no fit, purges and retries once.
  // Errors: invalid_argument (size 0, align not a power of two, bad or
  // out-of-space range, size overflow); not_enough_memory (no fit).
  [[nodiscard]] std::expected<std::uintptr_t, std::error_code> alloc(std::size_t size,
                                                                     std::size_t align);
  [[nodiscard]] std::expected<std::uintptr_t, std::error_code> alloc(std::size_t size,
                                                                     std::size_t align,
                                                                     std::uintptr_t vstart,
                                                                     std::uintptr_t vend);

  // VaSpace::free() gives the area starting at `start` back now.
  // VaSpace::free_lazy() keeps it unusable until the next purge, which starts
  // by itself once lazily freed pages exceed lazy_max_pages.
  // Errors: invalid_argument unless `start` is the start of a live area.
  std::error_code free(std::uintptr_t start);
  std::error_code free_lazy(std::uintptr_t start);

  // VaSpace::free_lazy_reusable() is free_lazy(), and until a purge begins on
  // the area, reuse_lazy() may hand it (or its front part) out again. Only
  // for an owner whose mapping of the area stays intact until on_purge sees
  // it: Vmalloc keeps a freed area's pages committed until the purge, so
  // reusing them skips a page fault per page. The area still counts as
  // lazily freed (info(), lazy_max_pages, purge) until it is reused.
  // It is joined at once with a reusable lazily freed area that ends where
  // it starts and with one that starts where it ends, into one reusable area
  // (one entry in for_each_area), so the pieces that cuts leave behind grow
  // back into large areas instead of piling up until a purge.
  // Errors: invalid_argument unless `start` is the start of a live area.
  std::error_code free_lazy_reusable(std::uintptr_t start);

  // VaSpace::reuse_lazy() takes back an area freed with free_lazy_reusable()
  // that no purge has begun on, instead of a fresh one: the smallest such
  // area of at least round_up(size, page_size) bytes, the most recently made
  // reusable among equal sizes (freed, joined, or left over from a cut).
  // Its first round_up(size, page_size) bytes become a live area at its
  // start (page aligned); the rest, if any, stays lazily freed and reusable.
  // Returns the lazily freed area as it was before, so the owner knows the
  // state of the pages it got back. Never purges.
  // Errors: invalid_argument (zero_size, size_overflow); not_enough_memory
  // (nothing_reusable) when no reusable area is large enough. Nothing
  // changes on an error.
  [[nodiscard]] std::expected<ReusedArea, std::error_code> reuse_lazy(std::size_t size);

  // VaSpace::purge() hands every lazily freed area to on_purge (merged) and
  // then makes it free. When it returns, every area lazily freed before the
  // call has been purged (unless reuse_lazy() took it back first). If
  // on_purge throws, the batch stays lazily freed, no longer reusable, and
  // the exception propagates.
  void purge();

  // VaSpace::find() - the live area holding addr, if any.
  [[nodiscard]] std::optional<Area> find(std::uintptr_t addr) const;

  // VaSpace::info() - the meminfo figures, read per options().info_mode or
  // per `mode`. All modes agree exactly while no writer runs.
  [[nodiscard]] VmallocInfo info() const;
  [[nodiscard]] VmallocInfo info(InfoMode mode) const;

  // "VmallocTotal:   %8lu kB\nVmallocUsed:    %8lu kB\nVmallocChunk:   %8lu kB\n"
  [[nodiscard]] std::string meminfo() const;
  // One line per live area by address: "0x%016lx-0x%016lx %7lu\n".
  [[nodiscard]] std::string vmallocinfo() const;

  // Calls fn for every area on the list (live and lazily freed) in address
  // order, under RCU, without the writers' lock. fn must not call back into
  // a writer method of this space. Like info(rcu_walk), not a snapshot.
  void for_each_area(const std::function<void(const AreaInfo&)>& fn) const;

  [[nodiscard]] const VaSpaceOptions& options() const noexcept;
  [[nodiscard]] std::size_t lazy_max_pages() const noexcept;  // the effective limit
  [[nodiscard]] VaSpaceStats stats() const noexcept;

  // Debug self-check under the writers' lock: no overlap, list and tree
  // agree, counters equal recomputed sums. Returns "" when all holds, else a
  // description of the first violation.
  [[nodiscard]] std::string check_invariants() const;

  struct Impl;

 private:
  explicit VaSpace(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace uvmalloc
