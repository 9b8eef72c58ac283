// Fault injection: every system call Vmalloc makes can fail, and no failure
// corrupts state, loses an area or leaks memory.
//
// For each call site (uvmalloc/fault_injection.hpp) the tests make the kernel
// "refuse" through the seam in src/os_pages.cpp and prove:
//   * vmalloc / create return not_enough_memory (errc::os_refused);
//   * nothing leaks: stats(), the VaSpace's snapshot (info in every mode,
//     vmallocinfo, the area list) and the kernel's own view of the
//     reservation (/proc/self/smaps: mappings, protections, resident pages)
//     are exactly as before the failed call;
//   * later calls work;
//   * a purge that cannot give memory back keeps those ranges out of reuse
//     (Vmalloc's quarantine) instead of handing out memory that may still
//     be mapped, and gives them back once the kernel agrees.
// A randomized test then injects faults at every site while allocating,
// freeing and purging, checking everything after every step
// (UVMALLOC_TEST_SCALE=N runs N times longer).
//
// Each test reports how many failures it injected per call site; the totals
// print at the end of the run.

#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <uvmalloc/errors.hpp>
#include <uvmalloc/fault_injection.hpp>
#include <uvmalloc/vmalloc.hpp>

#include "test_util.hpp"

namespace {

using uvmalloc::Vmalloc;
using uvmalloc::VmallocFlags;
using uvmalloc::VmallocOptions;
using uvmalloc::VmallocStats;
using uvmalloc::errc;
using uvmalloc::fault::OsCall;
using uvmalloc::testing::IsError;
using uvmalloc::testing::snapshot;
using uvmalloc::testing::test_scale;

namespace fault = uvmalloc::fault;

const std::size_t kPage = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
constexpr OsCall kOsCalls[] = {OsCall::reserve,  OsCall::commit,  OsCall::populate,
                               OsCall::decommit, OsCall::release, OsCall::guard};
constexpr const char* kOsCallNames[] = {"reserve (mmap)",           "commit (mprotect)",
                                        "populate (madvise)",       "decommit (mmap MAP_FIXED)",
                                        "release (munmap)",         "guard (mmap MAP_FIXED)"};

// Failures injected per call site over the whole run, printed at the end.
std::array<std::uint64_t, std::size(kOsCalls)> g_injected{};

// Arms `count` failures of `call` after `skip` successful ones; when it goes
// out of scope, disarms, checks the failures really happened (all of them,
// or, with `at_most`, however many the code reached) and tallies them.
class Injection {
 public:
  Injection(OsCall call, unsigned skip, unsigned count, int err = ENOMEM, bool at_most = false)
      : call_(call), skip_(skip), count_(count), at_most_(at_most),
        calls_before_(fault::calls(call)) {
    fault::inject(call, skip, count, err);
  }
  ~Injection() {
    const std::uint64_t made = fault::calls(call_) - calls_before_;
    const std::uint64_t failed = made > skip_ ? std::min<std::uint64_t>(made - skip_, count_) : 0;
    fault::inject(call_, 0, 0, 0);
    if (!at_most_) {
      EXPECT_EQ(failed, count_) << "armed failures of " << kOsCallNames[index()]
                                << " that no call reached";
    }
    g_injected[index()] += failed;
  }
  Injection(const Injection&) = delete;
  Injection& operator=(const Injection&) = delete;

 private:
  [[nodiscard]] std::size_t index() const { return static_cast<std::size_t>(call_); }
  OsCall call_;
  unsigned skip_;
  unsigned count_;
  bool at_most_;
  std::uint64_t calls_before_;
};

class InjectedTotals : public ::testing::Environment {
 public:
  void TearDown() override {
    std::printf("[ faults  ] injected per call site:");
    for (std::size_t i = 0; i < g_injected.size(); ++i)
      std::printf(" %s %llu%s", kOsCallNames[i], static_cast<unsigned long long>(g_injected[i]),
                  i + 1 < g_injected.size() ? "," : "\n");
  }
};
const auto* const g_totals = ::testing::AddGlobalTestEnvironment(new InjectedTotals);

// The error of a failed call; success is a test failure of its own.
std::error_code error_of(const std::expected<void*, std::error_code>& result) {
  EXPECT_FALSE(result.has_value()) << "expected an error, got " << *result;
  return result ? std::error_code{} : result.error();
}

// One kernel mapping, as /proc/self/smaps describes it.
struct Mapping {
  std::uintptr_t start, end;
  std::string perms;
  std::size_t rss_kb;
  friend bool operator==(const Mapping&, const Mapping&) = default;
};

// The kernel's view of [start, end): every mapping overlapping it, with its
// protection and resident size. What "no mapping leaked" is checked against.
std::vector<Mapping> kernel_view(std::uintptr_t start, std::uintptr_t end) {
  std::ifstream smaps("/proc/self/smaps");
  std::vector<Mapping> mappings;
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t from = 0, to = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &from, &to, perms) == 3 &&
        line.find(':') > line.find(' ')) {
      inside = from < end && start < to;
      if (inside) mappings.push_back({from, to, perms, 0});
    } else if (inside && line.starts_with("Rss:")) {
      mappings.back().rss_kb = std::strtoul(line.c_str() + 4, nullptr, 10);
    }
  }
  return mappings;
}

std::string describe(const std::vector<Mapping>& mappings) {
  std::ostringstream out;
  for (const Mapping& m : mappings)
    out << std::hex << m.start << "-" << m.end << std::dec << " " << m.perms << " rss " << m.rss_kb
        << " kB\n";
  return out.str();
}

std::string describe(const VmallocStats& s) {
  std::ostringstream out;
  out << "areas_live " << s.areas_live << ", bytes_live " << s.bytes_live << ", purges "
      << s.purges << ", unmap_calls " << s.unmap_calls << ", unmapped_bytes " << s.unmapped_bytes
      << ", decommit_failures " << s.decommit_failures << ", quarantined_bytes "
      << s.quarantined_bytes << ", reuses " << s.reuses << ", reuse_splits " << s.reuse_splits
      << ", reuse_joined " << s.reuse_joined;
  return out.str();
}

// Everything that must not change when a call fails.
struct Observed {
  std::string stats, space, kernel;
  friend bool operator==(const Observed&, const Observed&) = default;
  friend void PrintTo(const Observed& o, std::ostream* out) {
    *out << "\nstats: " << o.stats << "\nspace:\n" << o.space << "kernel:\n" << o.kernel;
  }
};

class FaultInjection : public ::testing::Test {
 protected:
  void SetUp() override {
    fault::clear();
    VmallocOptions options;
    options.reserve = 256 * kPage;
    options.lazy_max_pages = 1 << 20;  // purges only when a test asks
    heap_ = make(options);
    ASSERT_NE(heap_, nullptr);
  }
  void TearDown() override { fault::clear(); }

  static std::unique_ptr<Vmalloc> make(const VmallocOptions& options) {
    auto created = Vmalloc::create(options);
    EXPECT_TRUE(created.has_value()) << created.error().message();
    return created ? std::move(*created) : nullptr;
  }

  [[nodiscard]] std::uintptr_t base() const { return heap_->space().options().start; }
  [[nodiscard]] std::uintptr_t limit() const { return heap_->space().options().end; }

  // The space's event counters (allocs, frees) are left out: a failed call
  // that allocated and gave back its area counts both, and that is history,
  // not state.
  [[nodiscard]] Observed observe() const {
    std::string space = snapshot(heap_->space());
    if (const auto at = space.find("stats: allocs"); at != std::string::npos)
      space.erase(at, space.find('\n', at) + 1 - at);
    return {describe(heap_->stats()), space, describe(kernel_view(base(), limit()))};
  }

  [[nodiscard]] void* must_vmalloc(std::size_t size, VmallocFlags flags = VmallocFlags::none) {
    auto p = heap_->vmalloc(size, flags);
    EXPECT_TRUE(p.has_value()) << p.error().message();
    return p ? *p : nullptr;
  }

  // The pointer is usable: zeroed, writable, and keeps what was written.
  static void expect_usable(void* p, std::size_t size) {
    auto* bytes = static_cast<unsigned char*>(p);
    ASSERT_EQ(bytes[0], 0);
    ASSERT_EQ(bytes[size - 1], 0);
    std::memset(bytes, 0xa5, size);
    EXPECT_EQ(bytes[size / 2], 0xa5);
  }

  // The kernel's protection of every page in [p, p + size): "rw-p", "---p", or
  // "mixed" when the range spans mappings with different protections.
  [[nodiscard]] std::string protection(const void* p, std::size_t size) const {
    const auto start = reinterpret_cast<std::uintptr_t>(p);
    std::string perms;
    for (const Mapping& m : kernel_view(start, start + size)) {
      if (!perms.empty() && perms != m.perms) return "mixed";
      perms = m.perms;
    }
    return perms;
  }

  std::unique_ptr<Vmalloc> heap_;
};

/*** commit: mprotect(PROT_READ | PROT_WRITE) in vmalloc ***/

TEST_F(FaultInjection, RefusedCommitReturnsNotEnoughMemoryAndLeaksNothing) {
  void* kept = must_vmalloc(3 * kPage);
  const Observed before = observe();
  for (int err : {ENOMEM, EAGAIN, EPERM}) {
    Injection refuse(OsCall::commit, 0, 1, err);
    auto p = heap_->vmalloc(2 * kPage);
    ASSERT_FALSE(p.has_value());
    EXPECT_TRUE(IsError(p.error(), errc::os_refused, std::errc::not_enough_memory));
  }
  EXPECT_EQ(observe(), before);
  // The area went back: the next vmalloc gets the lowest fit, right after
  // `kept` and its guard page, and it works.
  void* next = must_vmalloc(2 * kPage);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(next),
            reinterpret_cast<std::uintptr_t>(kept) + 4 * kPage);
  expect_usable(next, 2 * kPage);
  EXPECT_EQ(heap_->stats().areas_live, 2u);
}

TEST_F(FaultInjection, OnlyTheArmedCommitFails) {
  Injection third(OsCall::commit, 2, 1);
  EXPECT_NE(must_vmalloc(kPage), nullptr);
  EXPECT_NE(must_vmalloc(kPage), nullptr);
  EXPECT_TRUE(IsError(error_of(heap_->vmalloc(kPage)), errc::os_refused,
                      std::errc::not_enough_memory));
  EXPECT_NE(must_vmalloc(kPage), nullptr);
  EXPECT_EQ(heap_->stats().areas_live, 3u);
}

/*** populate: madvise(MADV_POPULATE_WRITE) in vmalloc(size, populate) ***/

TEST_F(FaultInjection, RefusedPopulateReturnsNotEnoughMemoryAndUndoesTheCommit) {
  void* kept = must_vmalloc(kPage, VmallocFlags::populate);
  const Observed before = observe();
  void* failed_at = nullptr;
  {
    Injection refuse(OsCall::populate, 0, 1);
    auto p = heap_->vmalloc(8 * kPage, VmallocFlags::populate);
    ASSERT_FALSE(p.has_value());
    EXPECT_TRUE(IsError(p.error(), errc::os_refused, std::errc::not_enough_memory));
    failed_at = static_cast<char*>(kept) + 2 * kPage;  // where it would have been
  }
  // The commit that had succeeded is rolled back: the range is reserved
  // again, nothing of it is resident, and the kernel's view is unchanged.
  EXPECT_EQ(protection(failed_at, 8 * kPage), "---p");
  EXPECT_EQ(observe(), before);
  void* next = must_vmalloc(8 * kPage, VmallocFlags::populate);
  EXPECT_EQ(next, failed_at);
  expect_usable(next, 8 * kPage);
}

TEST_F(FaultInjection, RefusedPopulateThroughTheOptionFailsTheSameWay) {
  VmallocOptions options;
  options.reserve = 64 * kPage;
  options.populate = true;
  auto heap = make(options);
  ASSERT_NE(heap, nullptr);
  const VmallocStats before = heap->stats();
  {
    Injection refuse(OsCall::populate, 0, 1);
    EXPECT_TRUE(IsError(error_of(heap->vmalloc(kPage)), errc::os_refused,
                        std::errc::not_enough_memory));
  }
  EXPECT_EQ(describe(heap->stats()), describe(before));
  EXPECT_EQ(heap->space().info().used, 0u);
  auto p = heap->vmalloc(kPage);
  ASSERT_TRUE(p.has_value());
  expect_usable(*p, kPage);
}

/*** decommit: mmap(MAP_FIXED, PROT_NONE) in a roll-back ***/

TEST_F(FaultInjection, RefusedRollBackKeepsTheAreaOutOfReuseUntilAPurgeSucceeds) {
  // The commit fails, and so does the decommit that undoes it: the area may
  // be partly committed, so it must not become free until it is decommitted.
  void* first = nullptr;
  {
    Injection refuse_commit(OsCall::commit, 0, 1);
    Injection refuse_roll_back(OsCall::decommit, 0, 1);
    EXPECT_TRUE(IsError(error_of(heap_->vmalloc(4 * kPage)), errc::os_refused,
                        std::errc::not_enough_memory));
    first = reinterpret_cast<void*>(base());
  }
  EXPECT_EQ(heap_->stats().areas_live, 0u);
  EXPECT_EQ(heap_->stats().decommit_failures, 1u);
  // Not handed out again before it is decommitted...
  void* other = must_vmalloc(4 * kPage);
  EXPECT_NE(other, first);
  // ...and after the purge decommits it, it is reserved and reusable.
  heap_->purge();
  EXPECT_EQ(protection(first, 4 * kPage), "---p");
  EXPECT_EQ(must_vmalloc(4 * kPage), first);
  EXPECT_EQ(heap_->stats().quarantined_bytes, 0u);
}

/*** decommit: mmap(MAP_FIXED, PROT_NONE) in a purge ***/

TEST_F(FaultInjection, RefusedPurgeQuarantinesTheRunInsteadOfReusingIt) {
  void* a = must_vmalloc(2 * kPage);
  void* b = must_vmalloc(2 * kPage);
  ASSERT_FALSE(heap_->vfree(a));
  const VmallocStats before = heap_->stats();
  {
    // The decommit keeps failing for as long as this scope lasts.
    Injection refuse(OsCall::decommit, 0, 1000, ENOMEM, /*at_most=*/true);
    heap_->purge();
    const VmallocStats after = heap_->stats();
    EXPECT_EQ(after.decommit_failures, before.decommit_failures + 1);
    EXPECT_EQ(after.quarantined_bytes, 3 * kPage);  // the area and its guard page
    EXPECT_EQ(after.unmapped_bytes, before.unmapped_bytes);
    // The lowest fit is a's old place; vmalloc must go around it.
    for (int i = 0; i < 4; ++i) {
      void* p = must_vmalloc(kPage);
      const auto address = reinterpret_cast<std::uintptr_t>(p);
      EXPECT_TRUE(address + kPage <= reinterpret_cast<std::uintptr_t>(a) ||
                  address >= reinterpret_cast<std::uintptr_t>(a) + 3 * kPage)
          << "vmalloc handed out " << p << " inside the quarantined run at " << a;
    }
  }
  // Once the kernel agrees, the run is given back and reusable.
  heap_->purge();
  EXPECT_EQ(heap_->stats().quarantined_bytes, 0u);
  EXPECT_EQ(protection(a, 3 * kPage), "---p");
  void* reused = must_vmalloc(2 * kPage);
  EXPECT_EQ(reused, a);
  expect_usable(reused, 2 * kPage);
  EXPECT_FALSE(heap_->vfree(b));
}

TEST_F(FaultInjection, FullReservationWithAQuarantinedRunSaysNoSpace) {
  // Only the quarantined run is free: vmalloc must fail rather than hand it out.
  std::vector<void*> all;
  while (auto p = heap_->vmalloc(kPage)) all.push_back(*p);
  ASSERT_EQ(all.size(), 128u);  // 256 pages, each area one page plus its guard
  void* victim = all[40];
  ASSERT_FALSE(heap_->vfree(victim));
  {
    Injection refuse(OsCall::decommit, 0, 1000, ENOMEM, /*at_most=*/true);
    heap_->purge();
    EXPECT_EQ(heap_->stats().quarantined_bytes, 2 * kPage);
    auto p = heap_->vmalloc(kPage);
    ASSERT_FALSE(p.has_value()) << "handed out " << *p << " (quarantined run at " << victim << ")";
    EXPECT_TRUE(IsError(p.error(), errc::no_space, std::errc::not_enough_memory));
    // A second try changes nothing more. (The first one may have parked the
    // run in a holder area, which is bookkeeping, not a leak; each try also
    // retries the decommit, so unmap_calls grows.)
    const Observed parked = observe();
    EXPECT_FALSE(heap_->vmalloc(kPage).has_value());
    const Observed again = observe();
    EXPECT_EQ(again.space, parked.space);
    EXPECT_EQ(again.kernel, parked.kernel);
    EXPECT_EQ(heap_->stats().areas_live, 127u);
    EXPECT_EQ(heap_->stats().quarantined_bytes, 2 * kPage);
  }
  auto p = heap_->vmalloc(kPage);
  ASSERT_TRUE(p.has_value()) << p.error().message();
  EXPECT_EQ(*p, victim);
  expect_usable(*p, kPage);
  EXPECT_EQ(heap_->stats().quarantined_bytes, 0u);
}

TEST_F(FaultInjection, OnePurgeWithOneRefusedRunGivesBackTheOthers) {
  // Three runs separated by live areas; the second decommit fails.
  std::vector<void*> p;
  for (int i = 0; i < 6; ++i) p.push_back(must_vmalloc(kPage));
  for (int i : {0, 2, 4}) ASSERT_FALSE(heap_->vfree(p[i]));
  const VmallocStats before = heap_->stats();
  {
    Injection refuse_second(OsCall::decommit, 1, 1);
    heap_->purge();
  }
  const VmallocStats after = heap_->stats();
  EXPECT_EQ(after.purges, before.purges + 1);
  EXPECT_EQ(after.unmap_calls, before.unmap_calls + 3);
  EXPECT_EQ(after.unmapped_bytes, before.unmapped_bytes + 2 * 2 * kPage);
  EXPECT_EQ(after.quarantined_bytes, 2 * kPage);
  EXPECT_EQ(protection(p[0], kPage), "---p");
  EXPECT_EQ(protection(p[4], kPage), "---p");
  heap_->purge();  // retries the quarantined run
  EXPECT_EQ(heap_->stats().quarantined_bytes, 0u);
  EXPECT_EQ(protection(p[2], kPage), "---p");
}

/*** guard: mmap(MAP_FIXED, PROT_NONE) of the new guard page when vmalloc cuts a reused area ***/

TEST_F(FaultInjection, RefusedGuardPageServesFreshPagesAndLeaksNothing) {
  auto* const freed = static_cast<unsigned char*>(must_vmalloc(32 * kPage));  // 33 pages with its guard
  void* kept = must_vmalloc(kPage);                                            // [33, 35)
  std::memset(freed, 0x5c, 32 * kPage);
  ASSERT_FALSE(heap_->vfree(freed));
  const VmallocStats before = heap_->stats();
  void* p = nullptr;
  {
    Injection refuse(OsCall::guard, 0, 1);
    p = must_vmalloc(4 * kPage - 5);
  }
  // Not the cut piece of the freed area (it has no guard page): fresh
  // pages at the lowest fit, after `kept` and its guard page.
  EXPECT_EQ(p, freed + 35 * kPage);
  expect_usable(p, 4 * kPage);
  EXPECT_EQ(protection(static_cast<char*>(p) + 4 * kPage, kPage), "---p") << "its guard page";
  VmallocStats after = heap_->stats();
  EXPECT_EQ(after.areas_live, before.areas_live + 1);
  EXPECT_EQ(after.bytes_live, before.bytes_live + 4 * kPage);
  EXPECT_EQ(after.unmap_calls, before.unmap_calls);
  // The cut piece [0, 5) is lazily freed and never handed out again before
  // the purge; the rest [5, 33) still is.
  void* rest = must_vmalloc(4 * kPage);
  EXPECT_EQ(rest, freed + 5 * kPage);
  expect_usable(rest, 4 * kPage);
  EXPECT_EQ(protection(static_cast<char*>(rest) + 4 * kPage, kPage), "---p");
  for (void* q : {must_vmalloc(4 * kPage), must_vmalloc(20 * kPage)}) {
    const auto at = static_cast<unsigned char*>(q);
    EXPECT_TRUE(at >= freed + 5 * kPage || at + 4 * kPage <= freed) << "the cut piece was handed out";
    expect_usable(q, 4 * kPage);
  }
  // Once everything is freed and purged, the reservation holds nothing:
  // no area, no quarantine, not one accessible or resident page.
  for (const uvmalloc::AreaInfo& area : uvmalloc::testing::list_areas(heap_->space())) {
    if (!area.lazy) {
      ASSERT_FALSE(heap_->vfree(reinterpret_cast<void*>(area.start)));
    }
  }
  heap_->purge();
  after = heap_->stats();
  EXPECT_EQ(after.areas_live, 0u);
  EXPECT_EQ(after.quarantined_bytes, 0u);
  EXPECT_TRUE(uvmalloc::testing::list_areas(heap_->space()).empty());
  for (const Mapping& m : kernel_view(base(), limit())) {
    EXPECT_EQ(m.perms, "---p") << describe(kernel_view(base(), limit()));
    EXPECT_EQ(m.rss_kb, 0u) << describe(kernel_view(base(), limit()));
  }
  (void)kept;
}

TEST_F(FaultInjection, RefusedCommitOfAJoinedAreaServesFreshPagesAndLeaksNothing) {
  // Two neighbours freed separately are one joined area; handing it out
  // again needs one commit over the old guard page between them.
  void* a = must_vmalloc(4 * kPage);  // [0,5)
  void* b = must_vmalloc(4 * kPage);  // [5,10)
  void* kept = must_vmalloc(kPage);   // [10,12)
  ASSERT_FALSE(heap_->vfree(a));
  ASSERT_FALSE(heap_->vfree(b));
  void* p = nullptr;
  {
    Injection refuse(OsCall::commit, 0, 1);
    p = must_vmalloc(9 * kPage);  // the joined area exactly
  }
  EXPECT_EQ(p, static_cast<char*>(a) + 12 * kPage) << "fresh pages after kept and its guard";
  expect_usable(p, 9 * kPage);
  EXPECT_EQ(protection(static_cast<char*>(p) + 9 * kPage, kPage), "---p") << "its guard page";
  // The joined area is lazily freed, never handed out again before the purge.
  void* q = must_vmalloc(4 * kPage);
  EXPECT_EQ(q, static_cast<char*>(p) + 10 * kPage);
  ASSERT_FALSE(heap_->vfree(p));
  ASSERT_FALSE(heap_->vfree(q));
  ASSERT_FALSE(heap_->vfree(kept));
  heap_->purge();
  EXPECT_EQ(heap_->stats().areas_live, 0u);
  EXPECT_EQ(heap_->stats().quarantined_bytes, 0u);
  EXPECT_TRUE(uvmalloc::testing::list_areas(heap_->space()).empty());
  for (const Mapping& m : kernel_view(base(), limit())) {
    EXPECT_EQ(m.perms, "---p") << describe(kernel_view(base(), limit()));
    EXPECT_EQ(m.rss_kb, 0u) << describe(kernel_view(base(), limit()));
  }
}

/*** reserve: mmap(PROT_NONE, MAP_NORESERVE) in create ***/

TEST_F(FaultInjection, RefusedReserveFailsCreateAndMapsNothing) {
  const auto count_mappings = [] {
    std::ifstream maps("/proc/self/maps");
    std::size_t lines = 0;
    for (std::string line; std::getline(maps, line);) ++lines;
    return lines;
  };
  VmallocOptions options;
  options.reserve = 1024 * kPage;
  const std::size_t before = count_mappings();
  {
    Injection refuse(OsCall::reserve, 0, 1);
    auto created = Vmalloc::create(options);
    ASSERT_FALSE(created.has_value());
    EXPECT_TRUE(IsError(created.error(), errc::os_refused, std::errc::not_enough_memory));
  }
  EXPECT_EQ(count_mappings(), before);
  auto heap = make(options);
  ASSERT_NE(heap, nullptr);
  auto p = heap->vmalloc(kPage);
  ASSERT_TRUE(p.has_value());
  expect_usable(*p, kPage);
}

/*** release: munmap in ~Vmalloc ***/

TEST_F(FaultInjection, RefusedReleaseLeavesOnlyInaccessibleAddressSpace) {
  // A destructor cannot report; what it leaves must hold no memory.
  VmallocOptions options;
  options.reserve = 64 * kPage;
  auto heap = make(options);
  ASSERT_NE(heap, nullptr);
  void* p = *heap->vmalloc(8 * kPage);
  std::memset(p, 1, 8 * kPage);
  const std::uintptr_t start = heap->space().options().start;
  const std::uintptr_t end = heap->space().options().end;
  {
    Injection refuse(OsCall::release, 0, 1);
    heap.reset();
  }
  const std::vector<Mapping> left = kernel_view(start, end);
  ASSERT_FALSE(left.empty()) << "the failed munmap left nothing: the seam did not inject";
  for (const Mapping& m : left) {
    EXPECT_EQ(m.perms, "---p") << describe(left);
    EXPECT_EQ(m.rss_kb, 0u) << describe(left);
  }
  ::munmap(reinterpret_cast<void*>(start), end - start);  // our own cleanup, not the library's
}

/*** Every site at once, at random ***/

TEST_F(FaultInjection, RandomFaultsNeverCorruptLoseOrLeak) {
  std::mt19937_64 rng(20261204);
  struct Live {
    unsigned char* p;
    std::size_t size;
    unsigned char tag;
  };
  std::vector<Live> live;
  const int steps = static_cast<int>(4000 * test_scale());
  std::uint64_t refused = 0, no_space = 0;
  for (int step = 0; step < steps; ++step) {
    const unsigned dice = rng() % 16;
    // Arm a fault at a random site for the next few calls of that kind.
    constexpr OsCall kSites[] = {OsCall::commit, OsCall::populate, OsCall::decommit, OsCall::guard};
    const OsCall call = kSites[rng() % std::size(kSites)];
    Injection maybe(call, static_cast<unsigned>(rng() % 3), rng() % 3 == 0 ? 1 : 0, ENOMEM,
                    /*at_most=*/true);
    // Allocate more than free while under 32 buffers: the reservation stays
    // roomy enough that most failures are the injected ones.
    if (dice < (live.size() < 32 ? 10u : 4u)) {
      const std::size_t size = (1 + rng() % 6) * kPage - rng() % 7;
      auto p = heap_->vmalloc(size, rng() % 2 ? VmallocFlags::populate : VmallocFlags::none);
      if (!p) {
        ASSERT_TRUE(p.error() == errc::os_refused || p.error() == errc::no_space)
            << p.error().message();
        ++(p.error() == errc::os_refused ? refused : no_space);
      } else {
        auto* bytes = static_cast<unsigned char*>(*p);
        ASSERT_EQ(bytes[0], 0) << "fresh memory not zero at step " << step;
        ASSERT_EQ(bytes[size - 1], 0) << "fresh memory not zero at step " << step;
        for (const Live& other : live)
          ASSERT_TRUE(bytes + size <= other.p || other.p + other.size <= bytes)
              << "overlap at step " << step;
        const auto tag = static_cast<unsigned char>(1 + rng() % 250);
        bytes[0] = bytes[size - 1] = tag;
        live.push_back({bytes, size, tag});
      }
    } else if (dice < 14 && !live.empty()) {
      const std::size_t i = rng() % live.size();
      ASSERT_EQ(live[i].p[0], live[i].tag) << "memory changed under its owner, step " << step;
      ASSERT_EQ(live[i].p[live[i].size - 1], live[i].tag);
      ASSERT_FALSE(heap_->vfree(live[i].p));
      EXPECT_TRUE(IsError(heap_->vfree(live[i].p), errc::not_an_area,
                          std::errc::invalid_argument));
      live[i] = live.back();
      live.pop_back();
    } else {
      heap_->purge();
    }
    const VmallocStats stats = heap_->stats();
    ASSERT_EQ(stats.areas_live, live.size()) << "step " << step;
    std::uint64_t bytes_live = 0;
    for (const Live& l : live) bytes_live += (l.size + kPage - 1) / kPage * kPage;
    ASSERT_EQ(stats.bytes_live, bytes_live) << "step " << step;
    ASSERT_EQ(heap_->space().check_invariants(), "") << "step " << step;
  }
  fault::clear();
  // Give everything back; with the kernel willing again, nothing may remain:
  // no area, no quarantine, and not one accessible or resident page.
  for (const Live& l : live) ASSERT_FALSE(heap_->vfree(l.p));
  heap_->purge();
  heap_->purge();
  const VmallocStats stats = heap_->stats();
  EXPECT_EQ(stats.areas_live, 0u);
  EXPECT_EQ(stats.bytes_live, 0u);
  EXPECT_EQ(stats.quarantined_bytes, 0u);
  EXPECT_EQ(heap_->space().info().used, 0u);
  EXPECT_EQ(heap_->space().vmallocinfo(), "");
  for (const Mapping& m : kernel_view(base(), limit())) {
    EXPECT_EQ(m.perms, "---p") << describe(kernel_view(base(), limit()));
    EXPECT_EQ(m.rss_kb, 0u) << describe(kernel_view(base(), limit()));
  }
  EXPECT_GT(refused, 0u);
  std::printf("[ faults  ] %d steps: %llu vmalloc calls refused by the kernel, %llu found no "
              "space, %llu decommit failures\n",
              steps, static_cast<unsigned long long>(refused),
              static_cast<unsigned long long>(no_space),
              static_cast<unsigned long long>(stats.decommit_failures));
}

}  // namespace
