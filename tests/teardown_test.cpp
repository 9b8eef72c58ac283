// Destroying a VaSpace: what is allowed, proven clean under AddressSanitizer.
//
// The rule (va_space.hpp, ~VaSpace): no thread may be inside a method of the
// space being destroyed, or call one after; the destructor waits for the
// space's deferred releases (call_rcu callbacks). Everything else is allowed
// and exercised here: destroying right after heavy reader and writer traffic
// with retirements still queued, destroying one space while readers hammer
// another, threads that read a destroyed space going on to use a new one,
// and reader threads coming and going (RCU registration churn).
//
// These tests assert the figures they can see; use-after-free, double free
// and leaks of the deferred releases are what the ASan build (CI) catches.

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <uvmalloc/va_space.hpp>

namespace {

using uvmalloc::InfoMode;
using uvmalloc::VaSpace;
using uvmalloc::VaSpaceOptions;

constexpr std::size_t kPage = 4096;
constexpr InfoMode kModes[] = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters};

std::unique_ptr<VaSpace> make_space(std::size_t pages, std::size_t lazy_max_pages = 64) {
  VaSpaceOptions options;
  options.start = 0x100000000;
  options.end = options.start + pages * kPage;
  options.lazy_max_pages = lazy_max_pages;
  auto space = VaSpace::create(options);
  EXPECT_TRUE(space.has_value()) << space.error().message();
  return space ? std::move(*space) : nullptr;
}

// Readers of every kind, until `stop`; counts their rounds so the test can
// prove they really ran concurrently with the writers.
void read_until(const VaSpace& space, const std::atomic<bool>& stop,
                std::atomic<std::uint64_t>& reads) {
  while (!stop.load(std::memory_order_relaxed)) {
    for (InfoMode mode : kModes) {
      const auto info = space.info(mode);
      // A torn read cannot claim more than the space holds.
      if (info.used > info.total || info.largest_chunk > info.total) std::abort();
    }
    (void)space.vmallocinfo();
    space.for_each_area([](const uvmalloc::AreaInfo& area) {
      if (area.end <= area.start) std::abort();
    });
    (void)space.find(space.options().start);
    reads.fetch_add(1, std::memory_order_relaxed);
  }
}

// Returns once the readers have completed `rounds` more rounds: on a loaded
// machine a reader thread may not have been scheduled yet.
void wait_for_reads(const std::atomic<std::uint64_t>& reads, std::uint64_t rounds) {
  const std::uint64_t target = reads.load(std::memory_order_relaxed) + rounds;
  while (reads.load(std::memory_order_relaxed) < target) std::this_thread::yield();
}

// Allocations and frees of both kinds; leaves some areas live and some lazily
// freed so the destructor meets every state an area can be in.
void churn(VaSpace& space, unsigned seed, int steps) {
  std::mt19937 rng(seed);
  std::vector<std::uintptr_t> live;
  for (int i = 0; i < steps; ++i) {
    const unsigned dice = rng() % 8;
    if (dice < 4 || live.empty()) {
      if (auto a = space.alloc((1 + rng() % 4) * kPage, kPage)) live.push_back(*a);
    } else {
      const std::size_t victim = rng() % live.size();
      const std::uintptr_t start = live[victim];
      live[victim] = live.back();
      live.pop_back();
      const std::error_code ec = dice < 6 ? space.free(start) : space.free_lazy(start);
      if (ec) std::abort();  // a start we got from alloc() must free
    }
    if (i % 97 == 0) space.purge();
  }
}

TEST(Teardown, DestroyRightAfterReadersAndWritersStopIsClean) {
  for (int cycle = 0; cycle < 20; ++cycle) {
    auto space = make_space(4096);
    ASSERT_NE(space, nullptr);
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> reads{0};
    std::vector<std::thread> readers;
    for (int r = 0; r < 2; ++r)
      readers.emplace_back(read_until, std::cref(*space), std::cref(stop), std::ref(reads));
    std::thread writer(churn, std::ref(*space), 1000 + cycle, 3000);
    churn(*space, 2000 + cycle, 3000);
    writer.join();
    wait_for_reads(reads, 4);
    stop.store(true, std::memory_order_relaxed);
    for (auto& t : readers) t.join();
    EXPECT_EQ(space->check_invariants(), "");
    // Destroyed at once: nodes retired by the last frees and purges are
    // still waiting for their grace period.
    space.reset();
  }
}

TEST(Teardown, DestroyWithLiveAndLazyAreasLeftIsClean) {
  auto space = make_space(1024, /*lazy_max_pages=*/1 << 20);  // never purges by itself
  ASSERT_NE(space, nullptr);
  std::vector<std::uintptr_t> starts;
  for (int i = 0; i < 100; ++i) {
    auto a = space->alloc(kPage, kPage);
    ASSERT_TRUE(a.has_value()) << a.error().message();
    starts.push_back(*a);
  }
  for (int i = 0; i < 100; i += 2) ASSERT_FALSE(space->free_lazy(starts[i]));
  for (int i = 1; i < 50; i += 2) ASSERT_FALSE(space->free(starts[i]));
  EXPECT_EQ(space->info(InfoMode::counters).used, 25 * kPage);
  EXPECT_EQ(space->check_invariants(), "");
  space.reset();  // 25 live, 50 lazily freed, 25 freed with retirements pending
}

TEST(Teardown, DestroyingOneSpaceWhileReadersRunOnAnotherIsClean) {
  auto kept = make_space(1024);
  ASSERT_NE(kept, nullptr);
  std::vector<std::uintptr_t> kept_areas;
  for (int i = 0; i < 64; ++i) kept_areas.push_back(kept->alloc(kPage, kPage).value());
  const auto kept_info = kept->info(InfoMode::locked);

  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r)
    readers.emplace_back(read_until, std::cref(*kept), std::cref(stop), std::ref(reads));

  for (int cycle = 0; cycle < 30; ++cycle) {
    auto doomed = make_space(1024);
    ASSERT_NE(doomed, nullptr);
    churn(*doomed, 3000 + cycle, 500);
    wait_for_reads(reads, 1);  // readers of `kept` are active across each destruction
    doomed.reset();  // its grace periods must wait for readers of `kept` too
  }
  stop.store(true, std::memory_order_relaxed);
  for (auto& t : readers) t.join();
  EXPECT_GE(reads.load(std::memory_order_relaxed), 30u);
  for (InfoMode mode : kModes) EXPECT_EQ(kept->info(mode), kept_info);
  EXPECT_EQ(kept->check_invariants(), "");
}

TEST(Teardown, ThreadsThatReadADestroyedSpaceCanUseANewOne) {
  // The same reader threads outlive three spaces in turn: their RCU
  // registration belongs to the thread, not to any space.
  std::atomic<VaSpace*> current{nullptr};
  std::atomic<int> generation{-1};  // no space published yet
  std::atomic<int> done_with{-1};
  std::atomic<int> readers_done{0};
  constexpr int kReaders = 2;
  constexpr int kGenerations = 3;

  auto reader = [&] {
    for (int g = 0; g < kGenerations; ++g) {
      while (generation.load(std::memory_order_acquire) != g) std::this_thread::yield();
      // acquire: pairs with the release below, so the space is fully built.
      const VaSpace* space = current.load(std::memory_order_acquire);
      for (int i = 0; i < 2000; ++i) {
        const auto info = space->info(InfoMode::rcu_walk);
        if (info.used != 8 * kPage) std::abort();  // the writer is quiet in this test
      }
      // acq_rel: the last reader's increment publishes every reader's done.
      if (readers_done.fetch_add(1, std::memory_order_acq_rel) + 1 == (g + 1) * kReaders)
        done_with.store(g, std::memory_order_release);
    }
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < kReaders; ++r) threads.emplace_back(reader);

  for (int g = 0; g < kGenerations; ++g) {
    auto space = make_space(256);
    ASSERT_NE(space, nullptr);
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(space->alloc(kPage, kPage).has_value());
    current.store(space.get(), std::memory_order_release);
    generation.store(g, std::memory_order_release);
    while (done_with.load(std::memory_order_acquire) != g) std::this_thread::yield();
    space.reset();  // every reader is out of it and still alive
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(readers_done.load(std::memory_order_relaxed), kGenerations * kReaders);
}

TEST(Teardown, ShortLivedReaderThreadsComeAndGoWithoutLeaking) {
  // Each thread registers with RCU on its first read and must unregister when
  // it exits; a stale registration would make the next grace period (the
  // destructor's) wait forever or read freed thread-local memory.
  auto space = make_space(1024);
  ASSERT_NE(space, nullptr);
  std::vector<std::uintptr_t> areas;
  for (int i = 0; i < 16; ++i) areas.push_back(space->alloc(kPage, kPage).value());
  for (int round = 0; round < 50; ++round) {
    // One after the other, so the reader's figures must agree exactly.
    std::thread writer([&, round] {
      const std::uintptr_t start = areas[round % areas.size()];
      if (space->free(start)) std::abort();
      areas[round % areas.size()] = space->alloc(kPage, kPage).value();
    });
    writer.join();
    std::thread reader([&] {
      if (space->info(InfoMode::rcu_walk) != space->info(InfoMode::counters)) std::abort();
    });
    reader.join();
  }
  EXPECT_EQ(space->info(InfoMode::locked).used, 16 * kPage);
  EXPECT_EQ(space->check_invariants(), "");
  space.reset();
}

TEST(Teardown, DestroyFromAThreadOtherThanTheCreatorReleasesEverything) {
  // The space owns its options; once destroyed, the on_purge callback (and
  // what it captured) must be gone, whichever thread destroyed it.
  auto purges = std::make_shared<std::atomic<int>>(0);
  VaSpaceOptions options;
  options.start = 0x100000000;
  options.end = options.start + 1024 * kPage;
  options.lazy_max_pages = 8;
  options.on_purge = [purges](std::span<const uvmalloc::Area>) {
    purges->fetch_add(1, std::memory_order_relaxed);
  };
  auto created = VaSpace::create(options);
  ASSERT_TRUE(created.has_value()) << created.error().message();
  options.on_purge = nullptr;
  std::unique_ptr<VaSpace> space = std::move(*created);
  churn(*space, 42, 1000);
  EXPECT_GT(purges->load(std::memory_order_relaxed), 0);
  EXPECT_GT(purges.use_count(), 1);
  std::thread destroyer([owned = std::move(space)]() mutable { owned.reset(); });
  destroyer.join();
  EXPECT_EQ(purges.use_count(), 1);
}

}  // namespace
