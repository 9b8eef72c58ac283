// va_space.cpp - VaSpace: allocation, freeing, lazy purge, statistics.
//
// Concurrency, kernel style
// -------------------------
// lock (std::mutex, the vmap_area_lock twin) guards:
//   tree        the B+tree of areas on the list (busy index + free space +
//               largest live gap); never read without the lock;
//   list        every insertion and removal (readers walk it under RCU);
//   pool        node allocation and retirement;
//   lazy_head, reusable, lazy_pages, lazy_count, purging_count, used;
//   the writer side of `published` (a seqlock).
// purge_lock (std::mutex, vmap_purge_lock's twin) serialises purges. Order:
//   purge_lock, then lock. on_purge runs with purge_lock held and lock not
//   held, so a slow unmap stalls no allocation, only the next purge.
// Lock-free paths:
//   info(rcu_walk), vmallocinfo(), for_each_area(): an RCU read-side
//     section over `list`; never blocks a writer, sees no torn area, but
//     is not a snapshot of one instant (DESIGN 1).
//   info(counters): a seqlock read of {used, largest_chunk}, both written
//     together under the lock after every change, so the pair is exact and
//     from one instant; retried only while a writer is mid-publish.
//   stats(): relaxed loads of event counters.
// fork(): a registry of live spaces lets pthread_atfork handlers take every
//   space's purge_lock and lock before fork and release them after, in parent
//   and child, so the child never inherits a lock held by a thread it lacks
//   (e.g. a reader inside info(locked)). Order: registry, purge_lock, lock.
//   So a fork from inside on_purge would deadlock: don't.
// Reclamation: a node unlinked from `list` is retired to the pool and
//   reused only after a grace period (batched call_rcu, node_pool.hpp). The
//   destructor waits for the space's outstanding callbacks.
#include "uvmalloc/va_space.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "area_list.hpp"
#include "area_tree.hpp"
#include "node_pool.hpp"
#include "rcu.hpp"
#include "uvmalloc/errors.hpp"

namespace uvmalloc {

using detail::AreaList;
using detail::AreaNode;
using detail::AreaTree;
using detail::FitRequest;
using detail::NodePool;

std::size_t default_lazy_max_pages(std::size_t page_size) {
  // Kernel: lazy_max_pages() = (32 MiB >> PAGE_SHIFT) * fls(num_online_cpus()).
  // The trade-off: a larger batch means fewer purges (fewer TLB shootdowns,
  // fewer unmap calls) but more freed memory still mapped in between.
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  const auto fls = static_cast<std::size_t>(std::bit_width(static_cast<unsigned long>(
      cpus > 0 ? cpus : 1)));
  return (std::size_t{32} << 20) / page_size * fls;
}

namespace {

// {used, largest_chunk} published by writers for O(1) readers.
// Seqlock: seq is odd while a writer is storing. Its own cache line, so a
// polling reader costs the writer one line transfer per update, no more.
struct alignas(64) PublishedInfo {
  std::atomic<std::uint64_t> seq{0};
  std::atomic<std::size_t> used{0};
  std::atomic<std::size_t> largest_chunk{0};
};

// std::has_single_bit becomes a libgcc popcount call without -mpopcnt.
constexpr bool is_power_of_two(std::size_t x) noexcept { return x != 0 && (x & (x - 1)) == 0; }

struct Figures {
  std::size_t used;
  std::size_t largest_chunk;
};

// The kernel's get_vmalloc_info() walk over the address-ordered list.
// Caller holds the lock or is inside a read-side section.
Figures walk_figures(const AreaList& list, std::uintptr_t start, std::uintptr_t end) {
  Figures f{0, 0};
  std::uintptr_t prev_end = start;
  for (const AreaNode* n = list.first(); n; n = AreaList::next(n)) {
    if (n->lazy()) continue;  // lazily freed areas count as free
    f.used += n->end - n->start;
    if (n->start >= prev_end) f.largest_chunk = std::max(f.largest_chunk, n->start - prev_end);
    prev_end = n->end;
  }
  if (end >= prev_end) f.largest_chunk = std::max(f.largest_chunk, end - prev_end);
  return f;
}

}  // namespace

struct VaSpace::Impl {
  explicit Impl(const VaSpaceOptions& o)
      : options(o),
        lazy_max(o.lazy_max_pages ? o.lazy_max_pages : default_lazy_max_pages(o.page_size)) {
    publish_locked();
    register_for_fork(this);
  }

  ~Impl() {
    unregister_for_fork(this);
    // The pool's memory must outlive every callback still queued for it.
    while (pool.callbacks_pending() != 0) detail::rcu::barrier();
  }

  static void register_for_fork(Impl* space);
  static void unregister_for_fork(Impl* space);

  // Publishes the exact figures; lock held.
  void publish_locked() {
    const std::size_t chunk = tree.largest_live_gap(options.start, options.end);
    const std::uint64_t s = published.seq.load(std::memory_order_relaxed);
    published.seq.store(s + 1, std::memory_order_relaxed);
    // Release fence: the odd seq is visible before the new figures.
    std::atomic_thread_fence(std::memory_order_release);
    published.used.store(used, std::memory_order_relaxed);
    published.largest_chunk.store(chunk, std::memory_order_relaxed);
    // Release: the figures are visible before the even seq that vouches for them.
    published.seq.store(s + 2, std::memory_order_release);
  }

  Figures read_published() const {
    for (;;) {
      // Acquire: pairs with the writer's final release store of seq.
      const std::uint64_t s1 = published.seq.load(std::memory_order_acquire);
      const std::size_t u = published.used.load(std::memory_order_relaxed);
      const std::size_t c = published.largest_chunk.load(std::memory_order_relaxed);
      // Acquire fence: the figures are read before seq is read again.
      std::atomic_thread_fence(std::memory_order_acquire);
      const std::uint64_t s2 = published.seq.load(std::memory_order_relaxed);
      if (s1 == s2 && (s1 & 1) == 0) return {u, c};
    }
  }

  // Inserts the new live area [a, a + size); lock held. May throw
  // std::bad_alloc before anything changes.
  void insert_area_locked(std::uintptr_t a, std::size_t size) {
    tree.reserve_for_insert();
    AreaNode* node = pool.get_locked();
    node->start = a;
    node->end = a + size;
    AreaNode* pred = tree.insert(a, a + size, node, /*live=*/true);
    list.insert_after_locked(pred, node);
    used += size;
    count(allocs);
    publish_locked();
  }

  // Takes the area off the tree and the list; lock held.
  void remove_area_locked(AreaNode* node) {
    tree.erase(node->start);
    list.remove_locked(node);
    pool.retire_locked(node);
  }

  static void count(std::atomic<std::uint64_t>& c) {
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);  // lock held
  }

  // blocking == false: give up if another purge runs (automatic purges, so
  // a vfree never waits for someone else's unmapping).
  void purge(bool blocking);

  std::error_code free_lazy(std::uintptr_t start, bool reusable);

  // The reusable index orders by size, then most recently indexed first.
  using ReuseKey = std::pair<std::size_t, std::uint64_t>;
  static ReuseKey reuse_key(const AreaNode* n) noexcept {
    return {n->end - n->start, ~n->reuse_stamp};
  }
  // Adds the lazily freed n to the index as the most recent of its size.
  // Lock held. May throw std::bad_alloc; nothing changes then.
  void index_reusable_locked(AreaNode* n) {
    n->reuse_stamp = ++reuse_clock;
    reusable.emplace(reuse_key(n), n);
    n->reusable = true;
  }
  void unindex_locked(AreaNode* n) noexcept {
    reusable.erase(reuse_key(n));
    n->reusable = false;
  }
  // Indexes the area just freed lazily, joined with reusable neighbours that
  // touch it. Lock held. May throw std::bad_alloc; nothing changes then.
  void make_reusable_locked(AreaNode* area);

  const VaSpaceOptions options;
  const std::size_t lazy_max;  // pages

  mutable std::mutex lock;
  AreaTree tree;                 // lock
  AreaList list;                 // updates: lock; walks: RCU or lock
  NodePool pool;                 // lock
  // Lazily freed areas not yet being purged are on exactly one of these two:
  AreaNode* lazy_head = nullptr;  // lock; freed with free_lazy
  // lock; freed with free_lazy_reusable (joined, or left by a reuse_lazy
  // cut), by size in bytes; among equal sizes the most recently added first.
  // Invariant: no two reusable areas touch (free_lazy_reusable joins them).
  std::map<ReuseKey, AreaNode*> reusable;
  std::uint64_t reuse_clock = 0;  // lock
  std::size_t lazy_pages = 0;    // lock; pages on lazy_head and in reusable
  std::size_t lazy_count = 0;    // lock; areas on lazy_head and in reusable
  std::size_t purging_count = 0;  // lock; taken off lazy_head by a running purge
  std::size_t used = 0;          // lock; bytes in live areas
  std::mutex purge_lock;

  PublishedInfo published;

  // Event counters: written under the lock, read anywhere (relaxed).
  std::atomic<std::uint64_t> allocs{0}, frees{0}, lazy_frees{0}, purges{0}, purged_areas{0},
      failed_allocs{0}, lazy_reuses{0};
};

/*** fork ***/

namespace {

// Every live space, for the fork handlers. Guarded by fork_registry_mutex.
std::mutex fork_registry_mutex;
std::vector<VaSpace::Impl*>& fork_registry() {
  static std::vector<VaSpace::Impl*> spaces;
  return spaces;
}

}  // namespace

void VaSpace::Impl::register_for_fork(Impl* space) {
  static const bool installed = [] {
    detail::rcu::install_fork_handlers();  // first, so ours run before them
    auto lock_all = [] {
      fork_registry_mutex.lock();
      for (Impl* s : fork_registry()) {
        s->purge_lock.lock();
        s->lock.lock();
      }
    };
    auto unlock_all = [] {
      for (Impl* s : fork_registry()) {
        s->lock.unlock();
        s->purge_lock.unlock();
      }
      fork_registry_mutex.unlock();
    };
    return pthread_atfork(lock_all, unlock_all, unlock_all) == 0;
  }();
  (void)installed;
  std::lock_guard<std::mutex> g(fork_registry_mutex);
  fork_registry().push_back(space);
}

void VaSpace::Impl::unregister_for_fork(Impl* space) {
  std::lock_guard<std::mutex> g(fork_registry_mutex);
  auto& spaces = fork_registry();
  spaces.erase(std::find(spaces.begin(), spaces.end(), space));
}

void VaSpace::Impl::purge(bool blocking) {
  std::unique_lock<std::mutex> serial(purge_lock, std::defer_lock);
  if (blocking) {
    serial.lock();
  } else if (!serial.try_lock()) {
    return;
  }
  AreaNode* batch;
  std::size_t batch_pages, batch_count;
  std::vector<Area> ranges;
  {
    std::lock_guard<std::mutex> g(lock);
    if (lazy_count == 0) return;
    ranges.reserve(lazy_count);  // may throw: nothing changed yet
    // From here on no reuse_lazy() can take these areas back.
    batch = lazy_head;
    for (const auto& entry : reusable) {
      entry.second->reusable = false;
      entry.second->lazy_next = batch;
      batch = entry.second;
    }
    reusable.clear();
    for (AreaNode* n = batch; n; n = n->lazy_next) ranges.push_back({n->start, n->end});
    batch_pages = lazy_pages;
    batch_count = lazy_count;
    purging_count = lazy_count;
    lazy_head = nullptr;
    lazy_pages = 0;
    lazy_count = 0;
  }
  // The detached areas stay in the tree, so nothing can be allocated over
  // them until they are erased below, after on_purge.
  std::sort(ranges.begin(), ranges.end(),
            [](const Area& a, const Area& b) { return a.start < b.start; });
  std::size_t merged = 0;
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[merged].end == ranges[i].start) {
      ranges[merged].end = ranges[i].end;
    } else {
      ranges[++merged] = ranges[i];
    }
  }
  ranges.resize(merged + 1);
  try {
    if (options.on_purge) options.on_purge(std::span<const Area>(ranges));
  } catch (...) {
    // The ranges may still be mapped, or half given back: keep them lazily
    // freed and unusable, and no longer reusable (their state is unknown).
    std::lock_guard<std::mutex> g(lock);
    AreaNode* tail = batch;
    while (tail->lazy_next) tail = tail->lazy_next;
    tail->lazy_next = lazy_head;
    lazy_head = batch;
    lazy_pages += batch_pages;
    lazy_count += batch_count;
    purging_count = 0;
    throw;
  }
  std::lock_guard<std::mutex> g(lock);
  std::uint64_t n_areas = 0;
  for (AreaNode* n = batch; n;) {
    AreaNode* next = n->lazy_next;  // retire_locked reuses the link
    remove_area_locked(n);
    ++n_areas;
    n = next;
  }
  purging_count = 0;
  purged_areas.store(purged_areas.load(std::memory_order_relaxed) + n_areas,
                     std::memory_order_relaxed);
  count(purges);
  publish_locked();
}

/*** VaSpace ***/

VaSpace::VaSpace(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VaSpace::~VaSpace() = default;

std::expected<std::unique_ptr<VaSpace>, std::error_code> VaSpace::create(
    const VaSpaceOptions& o) {
  const bool page_ok = is_power_of_two(o.page_size);
  const bool mode_ok = o.info_mode == InfoMode::locked || o.info_mode == InfoMode::rcu_walk ||
                       o.info_mode == InfoMode::counters;
  if (!page_ok || !mode_ok || o.start % o.page_size != 0 || o.end % o.page_size != 0 ||
      o.end <= o.start) {
    return std::unexpected(make_error_code(errc::bad_options));
  }
  return std::unique_ptr<VaSpace>(new VaSpace(std::make_unique<Impl>(o)));
}

std::expected<std::uintptr_t, std::error_code> VaSpace::alloc(std::size_t size,
                                                              std::size_t align) {
  return alloc(size, align, impl_->options.start, impl_->options.end);
}

std::expected<std::uintptr_t, std::error_code> VaSpace::alloc(std::size_t size, std::size_t align,
                                                              std::uintptr_t vstart,
                                                              std::uintptr_t vend) {
  Impl& s = *impl_;
  const std::size_t page = s.options.page_size;
  if (size == 0) return std::unexpected(make_error_code(errc::zero_size));
  if (!is_power_of_two(align)) return std::unexpected(make_error_code(errc::bad_alignment));
  if (vstart >= vend || vstart < s.options.start || vend > s.options.end) {
    return std::unexpected(make_error_code(errc::bad_range));
  }
  if (size > SIZE_MAX - (page - 1)) return std::unexpected(make_error_code(errc::size_overflow));
  const FitRequest request{(size + page - 1) & ~(page - 1), std::max(align, page), vstart, vend};
  if (request.size <= vend - vstart) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      {
        std::lock_guard<std::mutex> g(s.lock);
        if (auto a = s.tree.lowest_fit(request, s.options.start, s.options.end)) {
          s.insert_area_locked(*a, request.size);
          return *a;
        }
        // A purge can only help if something is lazily freed or being purged.
        if (attempt == 1 || (s.lazy_count == 0 && s.purging_count == 0)) break;
      }
      s.purge(/*blocking=*/true);
    }
  }
  std::lock_guard<std::mutex> g(s.lock);
  Impl::count(s.failed_allocs);
  return std::unexpected(make_error_code(errc::no_space));
}

std::error_code VaSpace::free(std::uintptr_t start) {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> g(s.lock);
  const auto ref = s.tree.erase_live(start);
  if (!ref) return make_error_code(errc::not_an_area);
  s.used -= ref->end - ref->start;
  s.list.remove_locked(ref->node);
  s.pool.retire_locked(ref->node);
  Impl::count(s.frees);
  s.publish_locked();
  return {};
}

std::error_code VaSpace::free_lazy(std::uintptr_t start) {
  return impl_->free_lazy(start, /*reusable=*/false);
}

std::error_code VaSpace::free_lazy_reusable(std::uintptr_t start) {
  return impl_->free_lazy(start, /*reusable=*/true);
}

std::error_code VaSpace::Impl::free_lazy(std::uintptr_t start, bool reusable_area) {
  bool over_limit;
  {
    std::lock_guard<std::mutex> g(lock);
    const auto ref = tree.mark_lazy(start);
    if (!ref) return make_error_code(errc::not_an_area);
    AreaNode* node = ref->node;
    const std::size_t bytes = ref->end - ref->start;
    node->flags.store(AreaNode::kLazy, std::memory_order_relaxed);
    lazy_pages += bytes / options.page_size;
    ++lazy_count;
    used -= bytes;
    bool indexed = false;
    if (reusable_area) {
      try {
        make_reusable_locked(node);
        indexed = true;
      } catch (const std::bad_alloc&) {
        // Out of memory for the index: the area is freed all the same,
        // just never reused.
      }
    }
    if (!indexed) {
      node->lazy_next = lazy_head;
      lazy_head = node;
    }
    count(lazy_frees);
    publish_locked();
    over_limit = lazy_pages > lazy_max;
  }
  if (over_limit) purge(/*blocking=*/false);
  return {};
}

void VaSpace::Impl::make_reusable_locked(AreaNode* area) {
  AreaNode* prev = nullptr;
  AreaNode* next = nullptr;
  if (area->start > options.start) {
    const auto before = tree.containing(area->start - 1);
    if (before && before->end == area->start && before->node->reusable) prev = before->node;
  }
  const auto after = tree.containing(area->end);
  if (after && after->start == area->end && after->node->reusable) next = after->node;
  if (!prev && !next) {
    index_reusable_locked(area);
    return;
  }
  // Join: one new node replaces the two or three, as in reuse_lazy (starts
  // and ends never change while readers may see a node). What can throw
  // comes first.
  AreaNode* const joined = pool.get_locked();
  joined->start = prev ? prev->start : area->start;
  joined->end = next ? next->end : area->end;
  joined->flags.store(AreaNode::kLazy, std::memory_order_relaxed);
  try {
    index_reusable_locked(joined);
  } catch (...) {
    pool.retire_locked(joined);  // never published
    throw;
  }
  joined->joined = true;
  if (prev) unindex_locked(prev);
  if (next) {
    unindex_locked(next);
    tree.erase(next->start);
  }
  if (prev) tree.erase(area->start);
  tree.reshape(joined->start, joined->end, joined, /*live=*/false);
  list.replace_range_locked(prev ? prev : area, next ? next : area, joined);
  if (prev) pool.retire_locked(prev);
  pool.retire_locked(area);
  if (next) pool.retire_locked(next);
  lazy_count -= (prev ? 1 : 0) + (next ? 1 : 0);
}

std::expected<ReusedArea, std::error_code> VaSpace::reuse_lazy(std::size_t size) {
  Impl& s = *impl_;
  const std::size_t page = s.options.page_size;
  if (size == 0) return std::unexpected(make_error_code(errc::zero_size));
  if (size > SIZE_MAX - (page - 1)) return std::unexpected(make_error_code(errc::size_overflow));
  const std::size_t bytes = (size + page - 1) & ~(page - 1);
  std::lock_guard<std::mutex> g(s.lock);
  // Smallest fit, most recent first.
  const auto it = s.reusable.lower_bound(Impl::ReuseKey{bytes, 0});
  if (it == s.reusable.end()) return std::unexpected(make_error_code(errc::nothing_reusable));
  AreaNode* const old = it->second;
  const Area was{old->start, old->end};
  const bool joined = old->joined;
  if (was.end - was.start == bytes) {
    // Exact fit: the same node turns live again; readers see its flag flip.
    s.reusable.erase(it);
    old->reusable = false;
    old->joined = false;
    s.tree.reshape(was.start, was.end, old, /*live=*/true);
    old->flags.store(0, std::memory_order_relaxed);
    --s.lazy_count;
  } else {
    // Cut: [start, start + bytes) live, the rest stays lazily freed and
    // reusable. Node starts and ends never change while readers may see a
    // node, so two new nodes replace the old one. Everything that can throw
    // comes first, while nothing has changed.
    s.tree.reserve_for_insert();
    AreaNode* const live = s.pool.get_locked();
    AreaNode* rest = nullptr;
    try {
      rest = s.pool.get_locked();
      rest->start = was.start + bytes;
      rest->end = was.end;
      s.index_reusable_locked(rest);
    } catch (...) {
      s.pool.retire_locked(live);  // never published; reused after a grace period
      if (rest) s.pool.retire_locked(rest);
      throw;
    }
    s.reusable.erase(it);
    old->reusable = false;
    rest->joined = joined;
    live->start = was.start;
    live->end = was.start + bytes;
    rest->flags.store(AreaNode::kLazy, std::memory_order_relaxed);
    s.tree.reshape(was.start, live->end, live, /*live=*/true);
    s.tree.insert(rest->start, rest->end, rest, /*live=*/false);
    s.list.replace_locked(old, live, rest);
    s.pool.retire_locked(old);
  }
  s.lazy_pages -= bytes / page;
  s.used += bytes;
  Impl::count(s.lazy_reuses);
  s.publish_locked();
  return ReusedArea{was, joined};
}

void VaSpace::purge() { impl_->purge(/*blocking=*/true); }

std::optional<Area> VaSpace::find(std::uintptr_t addr) const {
  std::lock_guard<std::mutex> g(impl_->lock);
  const auto ref = impl_->tree.containing(addr);
  if (!ref || !ref->live) return std::nullopt;
  return Area{ref->start, ref->end};
}

VmallocInfo VaSpace::info() const { return info(impl_->options.info_mode); }

VmallocInfo VaSpace::info(InfoMode mode) const {
  const Impl& s = *impl_;
  const std::size_t total = s.options.end - s.options.start;
  Figures f{};
  switch (mode) {
    case InfoMode::counters:
      f = s.read_published();
      break;
    case InfoMode::rcu_walk: {
      detail::rcu::ReadGuard g;
      f = walk_figures(s.list, s.options.start, s.options.end);
      break;
    }
    case InfoMode::locked: {
      std::lock_guard<std::mutex> g(s.lock);
      f = walk_figures(s.list, s.options.start, s.options.end);
      break;
    }
  }
  return {total, f.used, f.largest_chunk};
}

std::string VaSpace::meminfo() const {
  const VmallocInfo i = info();
  char buf[128];
  const int n = std::snprintf(buf, sizeof buf,
                              "VmallocTotal:   %8zu kB\nVmallocUsed:    %8zu kB\n"
                              "VmallocChunk:   %8zu kB\n",
                              i.total / 1024, i.used / 1024, i.largest_chunk / 1024);
  return std::string(buf, static_cast<std::size_t>(n));
}

std::string VaSpace::vmallocinfo() const {
  std::string out;
  char line[64];
  detail::rcu::ReadGuard g;
  for (const AreaNode* n = impl_->list.first(); n; n = AreaList::next(n)) {
    if (n->lazy()) continue;
    const int len = std::snprintf(line, sizeof line, "0x%016" PRIxPTR "-0x%016" PRIxPTR " %7zu\n",
                                  n->start, n->end, static_cast<std::size_t>(n->end - n->start));
    out.append(line, static_cast<std::size_t>(len));
  }
  return out;
}

void VaSpace::for_each_area(const std::function<void(const AreaInfo&)>& fn) const {
  detail::rcu::ReadGuard g;
  for (const AreaNode* n = impl_->list.first(); n; n = AreaList::next(n)) {
    fn(AreaInfo{n->start, n->end, n->lazy()});
  }
}

const VaSpaceOptions& VaSpace::options() const noexcept { return impl_->options; }
std::size_t VaSpace::lazy_max_pages() const noexcept { return impl_->lazy_max; }

VaSpaceStats VaSpace::stats() const noexcept {
  const Impl& s = *impl_;
  auto r = [](const std::atomic<std::uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  return {r(s.allocs), r(s.frees), r(s.lazy_frees), r(s.purges), r(s.purged_areas),
          r(s.failed_allocs), r(s.lazy_reuses)};
}

std::string VaSpace::check_invariants() const {
  const Impl& s = *impl_;
  std::lock_guard<std::mutex> g(s.lock);
  std::string e = s.tree.check();
  if (!e.empty()) return "tree: " + e;
  const auto entries = s.tree.entries();
  const std::size_t page = s.options.page_size;
  std::size_t used = 0, lazy_areas = 0;
  const AreaNode* n = s.list.first();
  for (const auto& ref : entries) {
    if (ref.start < s.options.start || ref.end > s.options.end) return "area outside the space";
    if (ref.start % page != 0 || ref.end % page != 0) return "area not page aligned";
    if (n != ref.node) return "list and tree disagree on the areas or their order";
    if (n->start != ref.start || n->end != ref.end) return "list node and tree entry differ";
    if (n->lazy() == ref.live) return "list and tree disagree on an area's lazy flag";
    if (ref.live) {
      used += ref.end - ref.start;
    } else {
      ++lazy_areas;
    }
    n = AreaList::next(n);
  }
  if (n) return "list has areas the tree lacks";
  if (used != s.used) return "used counter differs from the sum of live areas";
  std::size_t lazy_listed = 0, lazy_pages = 0;
  for (const AreaNode* l = s.lazy_head; l; l = l->lazy_next) {
    if (!l->lazy()) return "live area on the lazy list";
    ++lazy_listed;
    lazy_pages += (l->end - l->start) / page;
  }
  for (const auto& [key, l] : s.reusable) {
    if (!l->lazy() || !l->reusable) return "live or unmarked area in the reusable index";
    if (key != Impl::reuse_key(l)) return "reusable index key differs from the area's size or stamp";
    ++lazy_listed;
    lazy_pages += (l->end - l->start) / page;
  }
  std::size_t marked = 0;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (!entries[i].node->reusable) continue;
    ++marked;
    if (i + 1 < entries.size() && entries[i + 1].node->reusable && entries[i].end == entries[i + 1].start) {
      return "two reusable areas touch and were not joined";
    }
  }
  if (marked != s.reusable.size()) return "areas marked reusable differ from the reusable index";
  if (lazy_listed != s.lazy_count || lazy_pages != s.lazy_pages) {
    return "lazy counters differ from the lazy list";
  }
  if (lazy_areas != s.lazy_count + s.purging_count) {
    return "lazily freed areas in the tree differ from the lazy and purging counts";
  }
  if (s.pool.in_use() != entries.size()) return "node pool count differs from the tree";
  const Figures walked = walk_figures(s.list, s.options.start, s.options.end);
  const Figures pub = s.read_published();
  if (walked.used != pub.used || walked.largest_chunk != pub.largest_chunk) {
    return "published counters differ from a walk of the list";
  }
  return {};
}

}  // namespace uvmalloc
