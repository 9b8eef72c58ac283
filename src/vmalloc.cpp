// vmalloc.cpp - Vmalloc: real pages on a reserved range (DESIGN 2.2).
//
// Layout of the reservation [base, base + reserve):
//
//   | area: committed, RW       | guard | area ...  | guard | lazily freed ... | reserved
//   ^ vmalloc's pointer          PROT_NONE                   committed until the purge
//
// Each VaSpace area is the caller's pages plus one guard page. vmalloc commits
// only the caller's pages, so the guard keeps the reservation's PROT_NONE.
//
// Invariant: every address range that is free in the VaSpace is reserved
// (PROT_NONE, no pages), except runs in quarantined_runs. It holds because
// the reservation starts reserved, a purge decommits every run before VaSpace
// makes it free (on_purge runs first), and a roll-back uncommits before it
// frees. That is why a fresh area needs no memset: a committed page that was
// reserved reads as zero, the kernel's fresh anonymous page.
//
// Reuse (options.reuse): vfree frees with free_lazy_reusable, so until the
// purge begins VaSpace::reuse_lazy may hand the area back. Invariant: every
// reusable lazily freed area ends in a reserved guard page, and every other
// page of it is committed or a reserved guard page of an area it was joined
// from (ReusedArea::joined); without guard pages, every page is committed.
// vfree keeps it (the area was handed out that way); VaSpace joining two
// such areas keeps it; a cut keeps it for both pieces because vmalloc
// reserves the new guard page right after the part it hands out (os::guard)
// before anything else can happen to it, and the rest ends in the old
// guard page. A joined area's part is committed whole first (os::commit:
// one mprotect over it, old guards included). If either call fails, the
// piece is freed with plain free_lazy (never reused, the purge decommits
// it) and vmalloc takes fresh pages. Reused pages hold the last owner's
// data: os::zero clears them.
//
// Concurrency:
// * VaSpace's writers' lock guards the areas (inside VaSpace). The system
//   calls run outside it: vmalloc commits after alloc() returned, and purges
//   call give_back() without the lock (VaSpaceOptions::on_purge).
// * give_back() is never concurrent with itself (VaSpace serialises purges),
//   so the purge counters have one writer; they are atomics for stats().
// * quarantine_mutex guards quarantined_runs and quarantine_holders. It is
//   never held while calling into VaSpace, so it has no order with VaSpace's
//   locks and give_back() may take it inside a purge.
// * quarantine_active is read relaxed on the fast paths. A run enters the
//   quarantine in give_back(), before VaSpace frees it under its lock; the
//   alloc() that later returns that range takes the same lock, so it sees
//   the flag set.
#include "uvmalloc/vmalloc.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <span>
#include <vector>

#include "os_pages.hpp"
#include "uvmalloc/errors.hpp"

namespace uvmalloc {
namespace {

void* as_pointer(std::uintptr_t address) { return reinterpret_cast<void*>(address); }

std::size_t size_of(const Area& area) { return area.end - area.start; }

bool overlaps(const Area& a, const Area& b) { return a.start < b.end && b.start < a.end; }

// For VaSpace calls that fail only if Vmalloc's own bookkeeping is wrong
// (freeing an area it just allocated): a bug, not an input error.
void must_succeed(std::error_code ec, const char* what) {
  if (!ec) return;
  std::fprintf(stderr, "uvmalloc: internal error: %s: %s\n", what, ec.message().c_str());
  std::abort();
}

}  // namespace

struct Vmalloc::Impl {
  Impl(const VmallocOptions& options, std::uintptr_t base, std::size_t page_size)
      : options(options),
        base(base),
        page_size(page_size),
        guard_bytes(options.guard_page ? page_size : 0) {}

  // Drops the VaSpace first (it waits for its deferred releases and may still
  // purge through give_back()), then the whole reservation in one munmap:
  // live, lazily freed and reserved pages alike, so no purge is needed first.
  ~Impl() {
    space.reset();
    if (!os::release(as_pointer(base), options.reserve)) return;
    // A destructor cannot report. If the kernel keeps the range, take it all
    // back to reserved (no access, no pages), so what leaks is address space
    // only; failing that, drop the pages at least.
    if (os::decommit(as_pointer(base), options.reserve)) os::discard(as_pointer(base), options.reserve);
  }

  [[nodiscard]] std::expected<void*, std::error_code> vmalloc(std::size_t size, VmallocFlags flags);
  // A reusable freed area for the request, zeroed, or nullptr.
  [[nodiscard]] void* reuse(std::size_t usable_bytes, std::size_t area_bytes, bool populate);
  [[nodiscard]] std::error_code vfree(void* p);
  void purge();

  // on_purge: one decommit per merged run.
  void give_back(std::span<const Area> runs);
  // Uncommits an area whose commit or populate failed, and frees it.
  void roll_back(const Area& area, std::size_t usable_bytes);

  // Quarantine: runs the kernel would not decommit (see VmallocStats).
  void quarantine(const Area& run);
  [[nodiscard]] bool hold_if_quarantined(const Area& area);
  [[nodiscard]] bool is_quarantine_holder(std::uintptr_t start);
  void retry_quarantine();
  void update_quarantine_active_locked();

  const VmallocOptions options;
  const std::uintptr_t base;
  const std::size_t page_size;
  const std::size_t guard_bytes;
  std::unique_ptr<VaSpace> space;

  // Counters for stats(); relaxed: each is an independent count.
  std::atomic<std::uint64_t> areas_live{0};
  std::atomic<std::uint64_t> bytes_live{0};
  std::atomic<std::uint64_t> purges{0};
  std::atomic<std::uint64_t> unmap_calls{0};
  std::atomic<std::uint64_t> unmapped_bytes{0};
  std::atomic<std::uint64_t> decommit_failures{0};
  std::atomic<std::uint64_t> quarantined_bytes{0};
  std::atomic<std::uint64_t> reuses{0};
  std::atomic<std::uint64_t> reuse_splits{0};
  std::atomic<std::uint64_t> reuse_joined{0};

  std::atomic<bool> quarantine_active{false};  // runs or holders not empty
  std::mutex quarantine_mutex;
  // Freed runs still committed because their decommit failed. They are free
  // in the VaSpace (on_purge cannot veto that), so no area overlapping one
  // may be handed out. GUARDED_BY(quarantine_mutex)
  std::vector<Area> quarantined_runs;
  // VaSpace areas that vmalloc allocated, found overlapping a quarantined
  // run, and keeps (live, never handed out) until that run is decommitted.
  // GUARDED_BY(quarantine_mutex)
  std::vector<Area> quarantine_holders;
};

/*** Allocation ***/

std::expected<void*, std::error_code> Vmalloc::Impl::vmalloc(std::size_t size, VmallocFlags flags) {
  if (size == 0) return std::unexpected(make_error_code(errc::zero_size));
  if (size > std::numeric_limits<std::size_t>::max() - (page_size - 1) - guard_bytes) {
    return std::unexpected(make_error_code(errc::size_overflow));
  }
  const std::size_t usable_bytes = (size + page_size - 1) & ~(page_size - 1);
  const std::size_t area_bytes = usable_bytes + guard_bytes;

  if (quarantine_active.load(std::memory_order_relaxed)) retry_quarantine();
  const bool populate = (static_cast<unsigned>(flags) & static_cast<unsigned>(VmallocFlags::populate)) != 0;
  if (options.reuse) {
    if (void* const reused = reuse(usable_bytes, area_bytes, populate)) return reused;
  }
  Area area{};
  for (;;) {
    auto start = space->alloc(area_bytes, page_size);
    if (!start) return std::unexpected(start.error());
    area = Area{*start, *start + area_bytes};
    // Each held area is out of the way for good, so the loop ends, at the
    // latest with no_space.
    if (!quarantine_active.load(std::memory_order_relaxed) || !hold_if_quarantined(area)) break;
  }

  void* const pointer = as_pointer(area.start);
  std::error_code ec = os::commit(pointer, usable_bytes);
  if (!ec && populate) {
    ec = os::populate(pointer, usable_bytes);
  }
  if (ec) {
    roll_back(area, usable_bytes);
    return std::unexpected(make_error_code(errc::os_refused));
  }
  areas_live.fetch_add(1, std::memory_order_relaxed);
  bytes_live.fetch_add(usable_bytes, std::memory_order_relaxed);
  return pointer;
}

void* Vmalloc::Impl::reuse(std::size_t usable_bytes, std::size_t area_bytes, bool populate) {
  const auto taken = space->reuse_lazy(area_bytes);
  if (!taken) return nullptr;  // nothing reusable fits: fresh pages
  const Area& was = taken->was;
  void* const pointer = as_pointer(was.start);
  const bool cut = size_of(was) != area_bytes;
  // Old guard pages inside the part handed out become writable, and the
  // page after it becomes the guard. If the kernel refuses either, the piece
  // is never handed out nor reused; the next purge decommits it whatever
  // state it is in.
  bool refused = guard_bytes != 0 &&
                 ((taken->joined && os::commit(pointer, usable_bytes)) ||
                  (cut && os::guard(as_pointer(was.start + usable_bytes), guard_bytes)));
  if (!refused) {
    os::zero(pointer, usable_bytes);
    // zero() leaves the pages the last owner never touched absent; populate
    // promises every page resident.
    refused = populate && os::populate(pointer, usable_bytes);
  }
  if (refused) {
    must_succeed(space->free_lazy(was.start), "lazy free of a piece the kernel would not prepare");
    return nullptr;
  }
  if (cut) reuse_splits.fetch_add(1, std::memory_order_relaxed);
  if (taken->joined) reuse_joined.fetch_add(1, std::memory_order_relaxed);
  reuses.fetch_add(1, std::memory_order_relaxed);
  areas_live.fetch_add(1, std::memory_order_relaxed);
  bytes_live.fetch_add(usable_bytes, std::memory_order_relaxed);
  return pointer;
}

void Vmalloc::Impl::roll_back(const Area& area, std::size_t usable_bytes) {
  // A failed mprotect or populate may have changed part of the range, so put
  // all of it back to reserved before VaSpace may hand it out again. The
  // guard page was never touched.
  if (!os::uncommit(as_pointer(area.start), usable_bytes)) {
    must_succeed(space->free(area.start), "free after roll-back");
    return;
  }
  decommit_failures.fetch_add(1, std::memory_order_relaxed);
  os::discard(as_pointer(area.start), usable_bytes);
  // The next purge tries again with a decommit, and quarantines the run if
  // the kernel still refuses; the range is never free while committed.
  must_succeed(space->free_lazy(area.start), "lazy free after failed roll-back");
}

/*** Freeing and purging ***/

std::error_code Vmalloc::Impl::vfree(void* p) {
  if (p == nullptr) return {};
  const auto start = reinterpret_cast<std::uintptr_t>(p);
  const std::optional<Area> area = space->find(start);
  if (!area || area->start != start) return make_error_code(errc::not_an_area);
  if (quarantine_active.load(std::memory_order_relaxed) && is_quarantine_holder(start)) {
    return make_error_code(errc::not_an_area);
  }
  if (std::error_code ec = options.reuse ? space->free_lazy_reusable(start) : space->free_lazy(start)) {
    return ec;
  }
  areas_live.fetch_sub(1, std::memory_order_relaxed);
  bytes_live.fetch_sub(size_of(*area) - guard_bytes, std::memory_order_relaxed);
  return {};
}

void Vmalloc::Impl::purge() {
  if (quarantine_active.load(std::memory_order_relaxed)) retry_quarantine();
  space->purge();
}

void Vmalloc::Impl::give_back(std::span<const Area> runs) {
  if (runs.empty()) return;
  purges.fetch_add(1, std::memory_order_relaxed);
  for (const Area& run : runs) {
    unmap_calls.fetch_add(1, std::memory_order_relaxed);
    if (!os::decommit(as_pointer(run.start), size_of(run))) {
      unmapped_bytes.fetch_add(size_of(run), std::memory_order_relaxed);
      continue;
    }
    // VaSpace frees the run when on_purge returns. It would keep the whole
    // batch lazily freed if on_purge threw, but then every later purge would
    // retry the batch's runs that were decommitted too, and the exception
    // would leave through whichever vfree or vmalloc started the purge. A
    // hook that let on_purge return just the runs it could not release (to
    // stay lazily freed) would make the quarantine unnecessary.
    decommit_failures.fetch_add(1, std::memory_order_relaxed);
    os::discard(as_pointer(run.start), size_of(run));
    quarantine(run);
  }
}

/*** Quarantine ***/

void Vmalloc::Impl::update_quarantine_active_locked() {
  quarantine_active.store(!quarantined_runs.empty() || !quarantine_holders.empty(),
                          std::memory_order_relaxed);
}

void Vmalloc::Impl::quarantine(const Area& run) {
  std::lock_guard lock(quarantine_mutex);
  quarantined_runs.push_back(run);
  quarantined_bytes.fetch_add(size_of(run), std::memory_order_relaxed);
  update_quarantine_active_locked();
}

bool Vmalloc::Impl::hold_if_quarantined(const Area& area) {
  std::lock_guard lock(quarantine_mutex);
  const bool hits = std::ranges::any_of(quarantined_runs, [&](const Area& run) { return overlaps(run, area); });
  if (hits) quarantine_holders.push_back(area);
  return hits;
}

bool Vmalloc::Impl::is_quarantine_holder(std::uintptr_t start) {
  std::lock_guard lock(quarantine_mutex);
  return std::ranges::any_of(quarantine_holders, [&](const Area& holder) { return holder.start == start; });
}

void Vmalloc::Impl::retry_quarantine() {
  std::vector<std::uintptr_t> released_holders;
  {
    std::lock_guard lock(quarantine_mutex);
    std::erase_if(quarantined_runs, [&](const Area& run) {
      unmap_calls.fetch_add(1, std::memory_order_relaxed);
      if (os::decommit(as_pointer(run.start), size_of(run))) return false;
      unmapped_bytes.fetch_add(size_of(run), std::memory_order_relaxed);
      quarantined_bytes.fetch_sub(size_of(run), std::memory_order_relaxed);
      return true;
    });
    // A holder whose runs are all decommitted is reserved end to end again.
    std::erase_if(quarantine_holders, [&](const Area& holder) {
      const bool still_needed =
          std::ranges::any_of(quarantined_runs, [&](const Area& run) { return overlaps(run, holder); });
      if (!still_needed) released_holders.push_back(holder.start);
      return !still_needed;
    });
    update_quarantine_active_locked();
  }
  for (const std::uintptr_t start : released_holders) {
    must_succeed(space->free(start), "free of a quarantine holder");
  }
}

/*** Vmalloc ***/

std::expected<std::unique_ptr<Vmalloc>, std::error_code> Vmalloc::create(const VmallocOptions& options) {
  const std::size_t page_size = os::page_size();
  const std::size_t smallest_area = page_size + (options.guard_page ? page_size : 0);
  if (options.reserve % page_size != 0 || options.reserve < smallest_area) {
    return std::unexpected(make_error_code(errc::bad_options));
  }
  auto reservation = os::reserve(options.reserve);
  if (!reservation) return std::unexpected(make_error_code(errc::os_refused));
  const auto base = reinterpret_cast<std::uintptr_t>(*reservation);

  auto impl = std::make_unique<Impl>(options, base, page_size);
  VaSpaceOptions space_options;
  space_options.start = base;
  space_options.end = base + options.reserve;
  space_options.page_size = page_size;
  space_options.info_mode = options.info_mode;
  space_options.lazy_max_pages = options.lazy_max_pages;
  space_options.on_purge = [owner = impl.get()](std::span<const Area> runs) { owner->give_back(runs); };
  auto space = VaSpace::create(space_options);
  if (!space) return std::unexpected(space.error());  // ~Impl releases the reservation
  impl->space = std::move(*space);
  return std::unique_ptr<Vmalloc>(new Vmalloc(std::move(impl)));
}

Vmalloc::Vmalloc(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Vmalloc::~Vmalloc() = default;

std::expected<void*, std::error_code> Vmalloc::vmalloc(std::size_t size) {
  return impl_->vmalloc(size, impl_->options.populate ? VmallocFlags::populate : VmallocFlags::none);
}

std::expected<void*, std::error_code> Vmalloc::vmalloc(std::size_t size, VmallocFlags flags) {
  return impl_->vmalloc(size, flags);
}

std::error_code Vmalloc::vfree(void* p) { return impl_->vfree(p); }

void Vmalloc::purge() { impl_->purge(); }

const VaSpace& Vmalloc::space() const noexcept { return *impl_->space; }

VmallocStats Vmalloc::stats() const noexcept {
  const Impl& impl = *impl_;
  return VmallocStats{
      .areas_live = impl.areas_live.load(std::memory_order_relaxed),
      .bytes_live = impl.bytes_live.load(std::memory_order_relaxed),
      .purges = impl.purges.load(std::memory_order_relaxed),
      .unmap_calls = impl.unmap_calls.load(std::memory_order_relaxed),
      .unmapped_bytes = impl.unmapped_bytes.load(std::memory_order_relaxed),
      .decommit_failures = impl.decommit_failures.load(std::memory_order_relaxed),
      .quarantined_bytes = impl.quarantined_bytes.load(std::memory_order_relaxed),
      .reuses = impl.reuses.load(std::memory_order_relaxed),
      .reuse_splits = impl.reuse_splits.load(std::memory_order_relaxed),
      .reuse_joined = impl.reuse_joined.load(std::memory_order_relaxed),
  };
}

}  // namespace uvmalloc
