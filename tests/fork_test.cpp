// A process that forks keeps working in the child.
//
// fork() copies only the calling thread. liburcu's call_rcu worker threads
// and every other thread of the parent are gone in the child, while their
// bookkeeping is copied: the RCU reader registry (a thread that was inside a
// read-side section stays "inside" forever), the queued callbacks, and any
// lock another thread held. Unless the library handles fork (liburcu-bp's
// fork handlers prune the registry and restart call_rcu; the core takes
// every space's locks around fork()), the child's first grace period, or
// its first write, waits forever. So every child here runs under a
// deadline, and a child that hangs, crashes or sees a wrong figure fails the
// test with the reason.
//
// A child reports through its exit status only (no gtest inside it):
// 0 passed; otherwise the step number that failed.

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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
constexpr auto kChildDeadline = std::chrono::seconds(20);

std::unique_ptr<VaSpace> make_space(std::size_t pages, std::size_t lazy_max_pages) {
  VaSpaceOptions options;
  options.start = 0x200000000;
  options.end = options.start + pages * kPage;
  options.lazy_max_pages = lazy_max_pages;
  auto space = VaSpace::create(options);
  return space ? std::move(*space) : nullptr;
}

// What a child does with a space it inherited or made: writes that retire
// list nodes through call_rcu, purges, reads in every mode, and the checks
// that prove the state is still exact. Returns 0 or the failing step.
int exercise(VaSpace& space) {
  space.purge();
  const auto before = space.info(InfoMode::locked);
  std::vector<std::uintptr_t> live;
  for (int i = 0; i < 2000; ++i) {
    auto a = space.alloc(kPage * (1 + i % 3), kPage);
    if (!a) return 1;
    live.push_back(*a);
    if (i % 3 == 0) {
      if (space.free(live.front())) return 2;
      live.erase(live.begin());
    } else if (i % 3 == 1) {
      if (space.free_lazy(live.back())) return 3;
      live.pop_back();
    }
  }
  space.purge();
  const auto during = space.info(InfoMode::locked);
  for (InfoMode mode : kModes)
    if (space.info(mode) != during) return 4;
  std::size_t used = 0;
  for (std::uintptr_t start : live) {
    const auto area = space.find(start);
    if (!area || area->start != start) return 5;
    used += area->end - area->start;
  }
  if (during.used != before.used + used) return 6;
  if (!space.check_invariants().empty()) return 7;
  // Give everything back, half lazily, and land exactly where we started.
  for (std::size_t i = 0; i < live.size(); ++i)
    if (i % 2 ? space.free_lazy(live[i]) : space.free(live[i])) return 8;
  space.purge();
  for (InfoMode mode : kModes)
    if (space.info(mode) != before) return 9;
  return 0;
}

// Runs `child` in a forked child under a deadline; returns a description of
// what went wrong, or "" when the child exited 0.
std::string run_in_child(const std::function<int()>& child) {
  const pid_t pid = fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    // A hang is a failure, not a stuck test run: the default SIGALRM kills.
    alarm(static_cast<unsigned>(kChildDeadline.count()));
    _exit(child());
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + kChildDeadline +
                        std::chrono::seconds(5);
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return "child hung past its deadline";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFSIGNALED(status)) {
    if (WTERMSIG(status) == SIGALRM)
      return "child hung (killed by its deadline): a grace period or deferred "
             "release waited for a thread that fork() did not copy";
    return "child killed by signal " + std::to_string(WTERMSIG(status));
  }
  if (WEXITSTATUS(status) != 0)
    return "child failed at step " + std::to_string(WEXITSTATUS(status));
  return "";
}

TEST(Fork, ChildKeepsUsingTheSpaceItInherited) {
  auto space = make_space(1 << 16, 64);
  ASSERT_NE(space, nullptr);
  ASSERT_EQ(exercise(*space), 0);  // call_rcu is now running, with callbacks queued
  EXPECT_EQ(run_in_child([&] {
              if (int step = exercise(*space)) return 10 + step;
              space.reset();  // waits for the child's own deferred releases
              return 0;
            }),
            "");
  // The parent's call_rcu machinery survived the fork too.
  EXPECT_EQ(exercise(*space), 0);
}

TEST(Fork, ChildCanCreateUseAndDestroyANewSpace) {
  auto parent_space = make_space(1 << 16, 16);
  ASSERT_NE(parent_space, nullptr);
  ASSERT_EQ(exercise(*parent_space), 0);
  EXPECT_EQ(run_in_child([] {
              auto space = make_space(1 << 16, 16);
              if (!space) return 20;
              if (int step = exercise(*space)) return 20 + step;
              space.reset();
              return 0;
            }),
            "");
}

TEST(Fork, ChildWorksAfterForkingWhileReaderThreadsRun) {
  // The hard case: threads are inside read-side sections when fork() copies
  // the process. In the child those threads do not exist; their registration
  // must not hold up the child's grace periods.
  auto space = make_space(1 << 16, 64);
  ASSERT_NE(space, nullptr);
  ASSERT_EQ(exercise(*space), 0);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        for (InfoMode mode : kModes) (void)space->info(mode);
        (void)space->vmallocinfo();
        reads.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  while (reads.load(std::memory_order_relaxed) < 100) std::this_thread::yield();
  // Several forks, so some land while a reader is inside its walk.
  for (int i = 0; i < 10; ++i) {
    const std::string failure = run_in_child([&] {
      if (int step = exercise(*space)) return 30 + step;
      space.reset();
      return 0;
    });
    EXPECT_EQ(failure, "") << "fork #" << i;
    if (!failure.empty()) break;
  }
  stop.store(true, std::memory_order_relaxed);
  for (auto& t : readers) t.join();
  EXPECT_EQ(exercise(*space), 0);
}

TEST(Fork, ChildSeesAConsistentSpaceWhenForkedWhileWritersRun) {
  // Writers hold the space's locks for short moments; the library's fork
  // handlers take them around fork(), so the child never inherits a lock
  // held by a thread it does not have, nor a half-done update.
  auto space = make_space(1 << 16, 64);
  ASSERT_NE(space, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> writes{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      std::vector<std::uintptr_t> mine;
      for (unsigned i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        if (mine.size() < 200) {
          if (auto a = space->alloc(kPage * (1 + i % 4), kPage)) mine.push_back(*a);
        } else {
          const std::uintptr_t start = mine[i % mine.size()];
          mine[i % mine.size()] = mine.back();
          mine.pop_back();
          if ((i + w) % 2 ? space->free(start) : space->free_lazy(start)) std::abort();
        }
        if (i % 500 == 0) space->purge();
        writes.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  std::thread reader([&] {
    while (!stop.load(std::memory_order_relaxed))
      for (InfoMode mode : kModes) (void)space->info(mode);
  });
  for (int i = 0; i < 10; ++i) {
    const std::uint64_t target = writes.load(std::memory_order_relaxed) + 1000;
    while (writes.load(std::memory_order_relaxed) < target) std::this_thread::yield();
    const std::string failure = run_in_child([&] {
      if (!space->check_invariants().empty()) return 70;
      const auto reference = space->info(InfoMode::locked);
      for (InfoMode mode : kModes)
        if (space->info(mode) != reference) return 71;
      if (int step = exercise(*space)) return 72 + step;
      space.reset();
      return 0;
    });
    EXPECT_EQ(failure, "") << "fork #" << i;
    if (!failure.empty()) break;
  }
  stop.store(true, std::memory_order_relaxed);
  for (auto& t : writers) t.join();
  reader.join();
  EXPECT_EQ(space->check_invariants(), "");
}

TEST(Fork, ChildOfAChildStillWorks) {
  auto space = make_space(1 << 16, 64);
  ASSERT_NE(space, nullptr);
  ASSERT_EQ(exercise(*space), 0);
  EXPECT_EQ(run_in_child([&] {
              if (int step = exercise(*space)) return 40 + step;
              const std::string grandchild = run_in_child([&] {
                if (int step = exercise(*space)) return 50 + step;
                space.reset();
                return 0;
              });
              if (!grandchild.empty()) return 60;
              space.reset();
              return 0;
            }),
            "");
}

}  // namespace
