// tests/stress_test.cpp - writers and lock-free readers at full speed.
//
// Writer threads allocate, free, lazily free and purge, each tracking its
// own areas; a shared page-ownership table catches any two live areas that
// overlap, even across threads, and lets on_purge check that nobody holds a
// page it is purging (ranges must not be reusable before the callback).
// A second run has the writers free lazily for reuse and take areas back
// with reuse_lazy() while a purger thread purges non-stop: no reuse may hand
// out a page another thread holds, or one a purge has already taken.
// Reader threads call info() in all three modes, vmallocinfo(), meminfo(),
// find() and for_each_area() non-stop and check what holds even for a walk
// that is not a snapshot. Once quiet, every figure must be exact.
//
// Runs ~2 s by default (seconds scale with UVMALLOC_TEST_SCALE); the work is
// bounded by time, not by count, so ThreadSanitizer's slowdown only lowers
// the number of operations. The test checks that enough of each happened.
#include "test_util.hpp"

#include <uvmalloc/errors.hpp>
#include <uvmalloc/va_space.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace uvmalloc::testing {
namespace {

using namespace std::chrono_literals;

constexpr std::uintptr_t kStart = 0x7e0000000000;
constexpr std::size_t kPages = 1024;  // small enough that writers run it full now and then
constexpr std::uintptr_t kEnd = kStart + kPages * kPage;
constexpr std::size_t kLazyMaxPages = 96;
constexpr std::size_t kMaxAreasPerWriter = 96;
constexpr int kWriters = 3;
constexpr int kReaders = 3;

// Collects violations from any thread; the test prints the first few.
class Violations {
 public:
  void add(std::string what) {
    const std::lock_guard lock(mutex_);
    if (++count_ <= 20) first_.push_back(std::move(what));
  }
  [[nodiscard]] ::testing::AssertionResult none() const {
    const std::lock_guard lock(mutex_);
    if (count_ == 0) return ::testing::AssertionSuccess();
    auto failure = ::testing::AssertionFailure() << count_ << " violations, first ones:";
    for (const std::string& what : first_) failure << "\n  " << what;
    return failure;
  }

 private:
  mutable std::mutex mutex_;
  std::size_t count_ = 0;
  std::vector<std::string> first_;
};

// Who holds each page of the space: 0 for nobody, else a writer's id.
class PageOwners {
 public:
  // Takes every page of [start, end) for `owner`; false if any was held.
  [[nodiscard]] bool claim(Area area, std::uint32_t owner) {
    bool all_free = true;
    for (std::uintptr_t page = area.start; page < area.end; page += kPage)
      if (slot(page).exchange(owner, std::memory_order_acq_rel) != 0) all_free = false;
    return all_free;
  }
  void release(Area area) {
    for (std::uintptr_t page = area.start; page < area.end; page += kPage)
      slot(page).store(0, std::memory_order_release);
  }
  [[nodiscard]] std::uint32_t owner(std::uintptr_t page) const {
    return owners_[(page - kStart) / kPage].load(std::memory_order_acquire);
  }

 private:
  std::atomic<std::uint32_t>& slot(std::uintptr_t page) { return owners_[(page - kStart) / kPage]; }
  std::unique_ptr<std::atomic<std::uint32_t>[]> owners_ =
      std::make_unique<std::atomic<std::uint32_t>[]>(kPages);
};

struct Totals {
  std::atomic<std::uint64_t> allocs{0}, no_space{0}, frees{0}, lazy_frees{0}, purges{0},
      finds{0}, reads{0}, walks{0}, purge_calls{0}, reusable_frees{0}, reuses{0}, reuse_splits{0},
      reuse_joined{0}, reuse_no_space{0};
};

// How the writers work: the classic mix (they purge now and then), or with
// free_lazy_reusable/reuse_lazy in it while a separate thread purges.
enum class WriterMix { classic, reuse };

class StressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    VaSpaceOptions options;
    options.start = kStart;
    options.end = kEnd;
    options.lazy_max_pages = kLazyMaxPages;
    options.on_purge = [this](std::span<const Area> merged) { check_purge(merged); };
    space_ = create_space(options);
  }

  // on_purge: never re-entered, ranges sorted, disjoint and not touching
  // (touching ones must be merged), and no page in them owned by anyone yet.
  void check_purge(std::span<const Area> merged) {
    if (in_purge_.exchange(true, std::memory_order_acq_rel)) violations_.add("on_purge re-entered");
    totals_.purge_calls.fetch_add(1, std::memory_order_relaxed);
    if (merged.empty()) violations_.add("on_purge called with no ranges");
    for (std::size_t i = 0; i < merged.size(); ++i) {
      const Area& range = merged[i];
      if (range.start >= range.end || range.start < kStart || range.end > kEnd ||
          range.start % kPage != 0 || range.end % kPage != 0)
        violations_.add("on_purge: bad range " + describe(std::optional<Area>(range)));
      if (i > 0 && merged[i - 1].end >= range.start)
        violations_.add("on_purge: ranges unsorted, overlapping or touching: " + describe(merged));
      for (std::uintptr_t page = range.start; page < range.end && page < kEnd; page += kPage)
        if (const std::uint32_t owner = owners_.owner(page); owner != 0)
          violations_.add("on_purge: page " + hex(page) + " already owned by writer " +
                          std::to_string(owner) + ": reused before the purge finished");
    }
    in_purge_.store(false, std::memory_order_release);
  }

  void writer(std::uint32_t id, const std::atomic<bool>& stop, WriterMix mix = WriterMix::classic) {
    std::mt19937_64 random(id * 7919);
    std::vector<Area> mine;
    auto uniform = [&](std::uint64_t low, std::uint64_t high) {
      return std::uniform_int_distribution<std::uint64_t>(low, high)(random);
    };
    auto give_back = [&](std::size_t index) {
      const Area area = mine[index];
      mine[index] = mine.back();
      mine.pop_back();
      owners_.release(area);  // before the call: afterwards someone else may get it
      // classic: free or free_lazy; reuse: mostly free_lazy_reusable.
      const auto how = mix == WriterMix::classic ? uniform(0, 1) : uniform(0, 5);
      const std::error_code ec = how == 0   ? space_->free(area.start)
                                 : how == 1 ? space_->free_lazy(area.start)
                                            : space_->free_lazy_reusable(area.start);
      if (ec)
        violations_.add("writer " + std::to_string(id) + ": free of own area " +
                        describe(std::optional<Area>(area)) + " failed: " + ec.message());
      (how == 0 ? totals_.frees : how == 1 ? totals_.lazy_frees : totals_.reusable_frees)
          .fetch_add(1, std::memory_order_relaxed);
    };
    // reuse_lazy(): the front of a reusable area becomes mine; it must lie
    // in the space, be found live at once and overlap nobody's pages.
    auto take_back = [&] {
      const std::size_t size = uniform(1, 6 * kPage);
      const std::size_t rounded = (size + kPage - 1) / kPage * kPage;
      const auto result = space_->reuse_lazy(size);
      if (!result) {
        if (result.error() != std::errc::not_enough_memory)
          violations_.add("reuse_lazy: unexpected error " + result.error().message());
        totals_.reuse_no_space.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      const Area& was = result->was;
      const Area area{was.start, was.start + rounded};
      if (was.start % kPage != 0 || was.end % kPage != 0 || was.start < kStart || was.end > kEnd ||
          was.end - was.start < rounded)
        violations_.add("reuse_lazy(" + hex(size) + ") gave " + describe(*result));
      if (!owners_.claim(area, id))
        violations_.add("reuse_lazy gave " + describe(std::optional<Area>(area)) +
                        ", overlapping a live area");
      if (const auto found = space_->find(area.end - 1); found != area)
        violations_.add("reuse_lazy: find(" + hex(area.end - 1) + ") gave " + describe(found) +
                        ", reused " + describe(std::optional<Area>(area)));
      mine.push_back(area);
      totals_.reuses.fetch_add(1, std::memory_order_relaxed);
      if (was.end > area.end) totals_.reuse_splits.fetch_add(1, std::memory_order_relaxed);
      if (result->joined) totals_.reuse_joined.fetch_add(1, std::memory_order_relaxed);
    };
    while (!stop.load(std::memory_order_acquire)) {
      // Percent. classic: 45 alloc, 40 give back, 2 purge, 13 find.
      // reuse: 25 alloc, 20 reuse_lazy, 42 give back, 13 find; the purger purges.
      enum class Action { alloc, reuse, give_back, purge, find };
      const auto dice = uniform(0, 99);
      const Action action = mix == WriterMix::classic
                                ? (dice < 45 ? Action::alloc
                                   : dice < 85 ? Action::give_back
                                   : dice < 87 ? Action::purge
                                               : Action::find)
                                : (dice < 25 ? Action::alloc
                                   : dice < 45 ? Action::reuse
                                   : dice < 87 ? Action::give_back
                                               : Action::find);
      const bool room = mine.size() < kMaxAreasPerWriter;
      if (action == Action::alloc && room) {
        const std::size_t size = uniform(1, 6 * kPage);
        const std::size_t align = std::size_t{1} << uniform(0, 15);  // up to 8 pages
        const auto result = space_->alloc(size, align);
        if (!result) {
          if (result.error() != std::errc::not_enough_memory)
            violations_.add("alloc: unexpected error " + result.error().message());
          totals_.no_space.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        const std::size_t pages = (size + kPage - 1) / kPage;
        const Area area{*result, *result + pages * kPage};
        if (area.start % std::max(align, kPage) != 0 || area.start < kStart || area.end > kEnd)
          violations_.add("alloc(" + hex(size) + ", " + hex(align) + ") gave " + hex(area.start));
        if (!owners_.claim(area, id))
          violations_.add("alloc gave " + describe(std::optional<Area>(area)) +
                          ", overlapping a live area");
        mine.push_back(area);
        totals_.allocs.fetch_add(1, std::memory_order_relaxed);
      } else if (action == Action::reuse && room) {
        take_back();
      } else if ((action == Action::give_back || action == Action::alloc || action == Action::reuse) &&
                 !mine.empty()) {  // a full writer gives back instead
        give_back(uniform(0, mine.size() - 1));
      } else if (action == Action::purge) {
        space_->purge();
        totals_.purges.fetch_add(1, std::memory_order_relaxed);
      } else if (!mine.empty()) {
        // Every live area of mine is found exactly, from its start, inside, and its last byte.
        const Area& area = mine[uniform(0, mine.size() - 1)];
        for (std::uintptr_t address : {area.start, area.start + uniform(0, area.end - area.start - 1), area.end - 1})
          if (const auto found = space_->find(address); found != area)
            violations_.add("writer " + std::to_string(id) + ": find(" + hex(address) + ") gave " +
                            describe(found) + ", own area is " + describe(std::optional<Area>(area)));
        totals_.finds.fetch_add(1, std::memory_order_relaxed);
      }
    }
    // Prove the whole set once more, then leave it for the quiet checks.
    for (const Area& area : mine)
      if (space_->find(area.start) != area || space_->find(area.end - 1) != area)
        violations_.add("writer " + std::to_string(id) + ": own area not found at the end");
    const std::lock_guard lock(final_mutex_);
    final_areas_.insert(final_areas_.end(), mine.begin(), mine.end());
  }

  // Checks on figures that hold at any instant, snapshot or not.
  void check_figures(InfoMode mode, const VmallocInfo& info) {
    const std::size_t total = kEnd - kStart;
    if (info.total != total || info.used > total || info.largest_chunk > total ||
        info.used % kPage != 0 || info.largest_chunk % kPage != 0)
      violations_.add(std::string("info(") + name(mode) + ") impossible: " + describe(info));
    // counters publish one consistent pair, so used and chunk cannot overlap
    if (mode == InfoMode::counters && info.used + info.largest_chunk > total)
      violations_.add("info(counters): used + largest_chunk > total: " + describe(info));
  }

  void reader(std::uint32_t id, const std::atomic<bool>& stop) {
    std::mt19937_64 random(id * 104729);
    while (!stop.load(std::memory_order_acquire)) {
      for (InfoMode mode : kAllInfoModes) check_figures(mode, space_->info(mode));
      check_figures(InfoMode::rcu_walk, space_->info());

      // for_each_area: one walk sees areas strictly increasing, disjoint, inside the space.
      std::uintptr_t previous_end = kStart;
      space_->for_each_area([&](const AreaInfo& area) {
        if (area.start >= area.end || area.start < previous_end || area.end > kEnd ||
            area.start % kPage != 0 || area.end % kPage != 0)
          violations_.add("for_each_area: [" + hex(area.start) + ", " + hex(area.end) +
                          ") after end " + hex(previous_end));
        previous_end = area.end;
      });

      // vmallocinfo: the same rules, from the text.
      std::istringstream lines(space_->vmallocinfo());
      std::string line;
      previous_end = kStart;
      while (std::getline(lines, line)) {
        unsigned long start = 0, end = 0, size = 0;
        if (std::sscanf(line.c_str(), "0x%16lx-0x%16lx %lu", &start, &end, &size) != 3 ||
            line.size() < 45 || end - start != size || start < previous_end || end > kEnd ||
            start >= end)
          violations_.add("vmallocinfo line '" + line + "' after end " + hex(previous_end));
        previous_end = end;
      }

      // find() of any address: if something is found, it holds the address.
      const std::uintptr_t address = kStart + random() % (kEnd - kStart);
      if (const auto found = space_->find(address); found && !(found->start <= address && address < found->end))
        violations_.add("find(" + hex(address) + ") gave " + describe(found));
      if (space_->meminfo().find("VmallocChunk:") == std::string::npos) violations_.add("meminfo malformed");
      totals_.reads.fetch_add(4, std::memory_order_relaxed);
      totals_.walks.fetch_add(1, std::memory_order_relaxed);
    }
  }

  // With no writer running, all three modes must give exactly the figures
  // recomputed from the list; returns the live areas.
  std::vector<Area> expect_exact_figures(const char* when) {
    const std::vector<AreaInfo> areas = list_areas(*space_);
    VmallocInfo recomputed{kEnd - kStart, 0, 0};
    std::uintptr_t previous_end = kStart;
    std::vector<Area> live;
    for (const AreaInfo& area : areas) {
      if (area.lazy) continue;
      recomputed.used += area.end - area.start;
      recomputed.largest_chunk = std::max<std::size_t>(recomputed.largest_chunk, area.start - previous_end);
      previous_end = area.end;
      live.push_back({area.start, area.end});
    }
    recomputed.largest_chunk = std::max<std::size_t>(recomputed.largest_chunk, kEnd - previous_end);
    for (InfoMode mode : kAllInfoModes)
      EXPECT_EQ(space_->info(mode), recomputed)
          << when << ", " << name(mode) << ": " << describe(space_->info(mode)) << " vs "
          << describe(recomputed);
    EXPECT_EQ(space_->check_invariants(), "") << when;
    return live;
  }

  // With no writer running, everything must be exact.
  void give_everything_back();

  void check_quiet() {
    const std::vector<Area> live = expect_exact_figures("once quiet");
    std::vector<Area> expected = final_areas_;
    std::sort(expected.begin(), expected.end(), [](const Area& a, const Area& b) { return a.start < b.start; });
    EXPECT_EQ(describe(std::span<const Area>(live)), describe(std::span<const Area>(expected)))
        << "the live areas are not exactly the writers' areas";
    std::vector<std::string> lines;
    for (const Area& area : live) {
      char line[64];
      std::snprintf(line, sizeof line, "0x%016" PRIxPTR "-0x%016" PRIxPTR " %7zu", area.start, area.end,
                    static_cast<std::size_t>(area.end - area.start));
      lines.emplace_back(line);
    }
    EXPECT_TRUE(VmallocinfoMatches(space_->vmallocinfo(), lines));
  }

  Violations violations_;
  PageOwners owners_;
  Totals totals_;
  // Purges non-stop until stopped (the reuse run's writers do not purge).
  void purger(const std::atomic<bool>& stop) {
    while (!stop.load(std::memory_order_acquire)) {
      space_->purge();
      totals_.purges.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::yield();
    }
  }

  std::atomic<bool> in_purge_{false};
  std::mutex final_mutex_;
  std::vector<Area> final_areas_;
  std::unique_ptr<VaSpace> space_;  // last: destroyed first, while the rest is alive
};

TEST_F(StressTest, WritersAndLockFreeReadersKeepEveryFigureConsistent) {
  const auto duration = std::chrono::duration<double>(2.0 * test_scale());
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (std::uint32_t id = 1; id <= kWriters; ++id) threads.emplace_back([&, id] { writer(id, stop); });
  for (std::uint32_t id = 1; id <= kReaders; ++id) threads.emplace_back([&, id] { reader(id, stop); });
  std::this_thread::sleep_for(duration);
  stop.store(true, std::memory_order_release);
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(violations_.none());

  std::printf("allocs %" PRIu64 " (no space %" PRIu64 "), frees %" PRIu64 ", lazy frees %" PRIu64
              ", purge() %" PRIu64 ", on_purge %" PRIu64 ", finds %" PRIu64 ", reader walks %" PRIu64 "\n",
              totals_.allocs.load(), totals_.no_space.load(), totals_.frees.load(), totals_.lazy_frees.load(),
              totals_.purges.load(), totals_.purge_calls.load(), totals_.finds.load(), totals_.walks.load());
  // Enough happened for the checks to mean something, even under TSan.
  EXPECT_GT(totals_.allocs.load(), 1000u);
  EXPECT_GT(totals_.frees.load(), 100u);
  EXPECT_GT(totals_.lazy_frees.load(), 100u);
  EXPECT_GT(totals_.purge_calls.load(), 10u);
  EXPECT_GT(totals_.finds.load(), 100u);
  EXPECT_GT(totals_.walks.load(), 30u);

  check_quiet();
  give_everything_back();
}

TEST_F(StressTest, ReusingWritersNeverShareAPageAndPurgesNeverTakeAReusedOne) {
  const auto duration = std::chrono::duration<double>(2.0 * test_scale());
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (std::uint32_t id = 1; id <= kWriters; ++id)
    threads.emplace_back([&, id] { writer(id, stop, WriterMix::reuse); });
  for (std::uint32_t id = 1; id <= kReaders - 1; ++id) threads.emplace_back([&, id] { reader(id, stop); });
  threads.emplace_back([&] { purger(stop); });
  std::this_thread::sleep_for(duration);
  stop.store(true, std::memory_order_release);
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(violations_.none());

  std::printf("allocs %" PRIu64 " (no space %" PRIu64 "), reuses %" PRIu64 " (splits %" PRIu64
              ", joined %" PRIu64 ", none fit %" PRIu64 "), frees %" PRIu64 ", lazy frees %" PRIu64 ", reusable frees %" PRIu64
              ", purge() %" PRIu64 ", on_purge %" PRIu64 ", finds %" PRIu64 ", reader walks %" PRIu64 "\n",
              totals_.allocs.load(), totals_.no_space.load(), totals_.reuses.load(),
              totals_.reuse_splits.load(), totals_.reuse_joined.load(), totals_.reuse_no_space.load(), totals_.frees.load(),
              totals_.lazy_frees.load(), totals_.reusable_frees.load(), totals_.purges.load(),
              totals_.purge_calls.load(), totals_.finds.load(), totals_.walks.load());
  EXPECT_GT(totals_.allocs.load(), 500u);
  EXPECT_GT(totals_.reusable_frees.load(), 500u);
  EXPECT_GT(totals_.reuses.load(), 200u);
  EXPECT_GT(totals_.reuse_splits.load(), 20u);
  EXPECT_GT(totals_.reuse_joined.load(), 20u);
  EXPECT_GT(totals_.reuse_no_space.load(), 20u) << "purges must win some races against reuse";
  EXPECT_GT(totals_.purge_calls.load(), 10u);
  EXPECT_GT(totals_.walks.load(), 30u);
  EXPECT_EQ(space_->stats().lazy_reuses, totals_.reuses.load());

  check_quiet();
  give_everything_back();
}

void StressTest::give_everything_back() {
  // Give everything back: the space must end empty and whole.
  for (std::size_t i = 0; i < final_areas_.size(); ++i) {
    owners_.release(final_areas_[i]);
    ASSERT_FALSE(i % 2 ? space_->free(final_areas_[i].start) : space_->free_lazy(final_areas_[i].start));
    if (i % 16 == 0) expect_exact_figures("while freeing the rest");
  }
  expect_exact_figures("after freeing the rest");
  space_->purge();
  for (InfoMode mode : kAllInfoModes)
    EXPECT_EQ(space_->info(mode), (VmallocInfo{kEnd - kStart, 0, kEnd - kStart})) << name(mode);
  EXPECT_TRUE(list_areas(*space_).empty());
  EXPECT_EQ(space_->vmallocinfo(), "");
  EXPECT_TRUE(violations_.none());
}

}  // namespace
}  // namespace uvmalloc::testing
