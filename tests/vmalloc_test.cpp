// tests/vmalloc_test.cpp - Vmalloc (DESIGN 2.2, issue 4): real pages on a
// reserved range, guard pages, lazy freeing and batched giving back.
//
// The faults (guard page, use after purge) are death tests. Resident memory
// is read from /proc/self/statm. Fault injection (uvmalloc/fault_injection.hpp)
// drives the kernel-refused paths; one test runs the kernel out of mappings
// for real.
#include <uvmalloc/errors.hpp>
#include <uvmalloc/fault_injection.hpp>
#include <uvmalloc/vmalloc.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace uvmalloc::testing {
namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitized = true;  // its shadow is several times every byte memset
#else
constexpr bool kThreadSanitized = false;
#endif

[[nodiscard]] std::unique_ptr<Vmalloc> create_vmalloc(const VmallocOptions& options = {}) {
  auto created = Vmalloc::create(options);
  if (!created) throw std::runtime_error("Vmalloc::create failed: " + created.error().message());
  return std::move(*created);
}

// vmalloc() that fails the test on an error, so a test reads `char* p = allocate(vm, n)`.
[[nodiscard]] char* allocate(Vmalloc& vm, std::size_t size, VmallocFlags flags = VmallocFlags::none) {
  auto result = vm.vmalloc(size, flags);
  if (!result) {
    ADD_FAILURE() << "vmalloc(" << size << ") failed: " << result.error().message();
    return nullptr;
  }
  return static_cast<char*>(*result);
}

[[nodiscard]] ::testing::AssertionResult IsVmallocError(const std::expected<void*, std::error_code>& result,
                                                        errc specific, std::errc generic) {
  if (result)
    return ::testing::AssertionFailure() << "expected an error, got " << *result;
  return IsError(result.error(), specific, generic);
}

[[nodiscard]] std::string describe_stats(const VmallocStats& stats) {
  std::ostringstream out;
  out << "areas_live " << stats.areas_live << ", bytes_live " << stats.bytes_live << ", purges "
      << stats.purges << ", unmap_calls " << stats.unmap_calls << ", unmapped_bytes "
      << stats.unmapped_bytes << ", decommit_failures " << stats.decommit_failures
      << ", quarantined_bytes " << stats.quarantined_bytes << ", reuses " << stats.reuses
      << ", reuse_splits " << stats.reuse_splits << ", reuse_joined " << stats.reuse_joined;
  return out.str();
}

// What a caller can observe of a Vmalloc's memory: its stats, and its
// space's figures in every mode, meminfo, vmallocinfo, area list and
// self-check. Not the space's event counters: a rolled-back vmalloc did
// allocate and free an area, and VaSpace::stats() rightly counts both.
[[nodiscard]] std::string snapshot(const Vmalloc& vm) {
  const VaSpace& space = vm.space();
  std::string text = describe_stats(vm.stats()) + "\n";
  for (const InfoMode mode : kAllInfoModes) text += std::string(name(mode)) + " " + describe(space.info(mode)) + "\n";
  text += space.meminfo() + space.vmallocinfo() + "areas:\n" + describe(list_areas(space));
  return text + "invariants: '" + space.check_invariants() + "'\n";
}

// The process's resident memory, in bytes.
[[nodiscard]] std::size_t resident_bytes() {
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (statm == nullptr) throw std::runtime_error("cannot open /proc/self/statm");
  unsigned long size_pages = 0;
  unsigned long resident_pages = 0;
  const int read = std::fscanf(statm, "%lu %lu", &size_pages, &resident_pages);
  std::fclose(statm);
  if (read != 2) throw std::runtime_error("cannot parse /proc/self/statm");
  return resident_pages * kPage;
}

void touch_every_page(char* p, std::size_t size) {
  for (std::size_t offset = 0; offset < size; offset += kPage) p[offset] = 1;
}

// Where the first non-zero byte is, or size.
[[nodiscard]] std::size_t first_nonzero(const char* p, std::size_t size) {
  return static_cast<std::size_t>(std::find_if(p, p + size, [](char c) { return c != 0; }) - p);
}

class FaultInjectionGuard {
 public:
  FaultInjectionGuard() { fault::clear(); }
  ~FaultInjectionGuard() { fault::clear(); }
};

// Death tests fork; "threadsafe" re-executes the binary, so the child does
// not inherit liburcu's threads in an unknown state.
class VmallocDeathTest : public ::testing::Test {
 protected:
  void SetUp() override { ::testing::FLAGS_gtest_death_test_style = "threadsafe"; }
};

/*** Creation ***/

TEST(Vmalloc, CreateRejectsBadReservations) {
  VmallocOptions options;
  options.reserve = 0;
  EXPECT_TRUE(IsError(Vmalloc::create(options).error(), errc::bad_options, std::errc::invalid_argument));
  options.reserve = 64 * KiB + 1;
  EXPECT_TRUE(IsError(Vmalloc::create(options).error(), errc::bad_options, std::errc::invalid_argument));
  options.reserve = kPage;  // no room for a page and its guard
  EXPECT_TRUE(IsError(Vmalloc::create(options).error(), errc::bad_options, std::errc::invalid_argument));
  options.guard_page = false;
  EXPECT_TRUE(Vmalloc::create(options).has_value());
}

TEST(Vmalloc, CreateReportsRefusedReservation) {
  FaultInjectionGuard faults;
  fault::inject(fault::OsCall::reserve, 0, 1, ENOMEM);
  auto created = Vmalloc::create({});
  ASSERT_FALSE(created.has_value());
  EXPECT_TRUE(IsError(created.error(), errc::os_refused, std::errc::not_enough_memory));
  EXPECT_TRUE(Vmalloc::create({}).has_value()) << "one injected failure only";
}

TEST(Vmalloc, SpaceCoversTheReservation) {
  VmallocOptions options;
  options.reserve = 8 * MiB;
  options.lazy_max_pages = 100;
  auto vm = create_vmalloc(options);
  const VmallocInfo info = vm->space().info();
  EXPECT_EQ(info.total, 8 * MiB);
  EXPECT_EQ(info.used, 0u);
  EXPECT_EQ(info.largest_chunk, 8 * MiB);
  EXPECT_EQ(vm->space().lazy_max_pages(), 100u);
  EXPECT_EQ(vm->space().options().end - vm->space().options().start, 8 * MiB);
  auto defaults = create_vmalloc();
  EXPECT_EQ(defaults->space().lazy_max_pages(), default_lazy_max_pages(kPage));
}

/*** Allocation ***/

TEST(Vmalloc, ReturnsZeroedWritablePageAlignedMemory) {
  auto vm = create_vmalloc();
  const std::size_t size = 3 * kPage + 17;
  char* p = allocate(*vm, size);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % kPage, 0u);
  EXPECT_EQ(first_nonzero(p, 4 * kPage), 4 * kPage);
  std::memset(p, 0x5a, 4 * kPage);  // the whole rounded-up size is writable
  EXPECT_EQ(p[4 * kPage - 1], 0x5a);

  const VmallocStats stats = vm->stats();
  EXPECT_EQ(stats.areas_live, 1u);
  EXPECT_EQ(stats.bytes_live, 4 * kPage) << "bytes_live counts the rounded size, not the guard";
  EXPECT_EQ(vm->space().info().used, 5 * kPage) << "the space's area includes the guard page";
  EXPECT_EQ(vm->space().find(reinterpret_cast<std::uintptr_t>(p) + 4 * kPage),
            (Area{reinterpret_cast<std::uintptr_t>(p), reinterpret_cast<std::uintptr_t>(p) + 5 * kPage}));
}

TEST(Vmalloc, AreasFollowEachOtherWithOneGuardPageBetween) {
  auto vm = create_vmalloc();
  char* first = allocate(*vm, 2 * kPage);
  char* second = allocate(*vm, kPage);
  EXPECT_EQ(second, first + 3 * kPage);

  VmallocOptions unguarded;
  unguarded.guard_page = false;
  auto vm_unguarded = create_vmalloc(unguarded);
  char* a = allocate(*vm_unguarded, 2 * kPage);
  char* b = allocate(*vm_unguarded, kPage);
  EXPECT_EQ(b, a + 2 * kPage);
  EXPECT_EQ(vm_unguarded->space().info().used, 3 * kPage);
}

TEST(Vmalloc, PurgedRangeReadsZeroWhenAllocatedAgain) {
  VmallocOptions options;
  options.guard_page = false;  // so the new area covers the old one exactly, the old guard page included
  auto vm = create_vmalloc(options);
  const std::size_t size = 256 * KiB;
  char* first = allocate(*vm, size);
  std::memset(first, 0xab, size);
  ASSERT_FALSE(vm->vfree(first));
  vm->purge();
  char* again = allocate(*vm, size);
  ASSERT_EQ(again, first) << "lowest fit reuses the purged range";
  EXPECT_EQ(first_nonzero(again, size), size);
}

TEST(Vmalloc, PopulatedMemoryIsResidentZeroedAndWritable) {
  auto vm = create_vmalloc();
  const std::size_t size = 16 * MiB;
  const std::size_t before = resident_bytes();
  char* p = allocate(*vm, size, VmallocFlags::populate);
  ASSERT_NE(p, nullptr);
  EXPECT_GE(resident_bytes(), before + size * 9 / 10) << "populate faulted the pages in";
  EXPECT_EQ(first_nonzero(p, size), size);
  std::memset(p, 1, size);
  ASSERT_FALSE(vm->vfree(p));
  vm->purge();
  EXPECT_LE(resident_bytes(), before + size / 10);
}

TEST(Vmalloc, PopulateOptionAppliesToPlainVmalloc) {
  VmallocOptions options;
  options.populate = true;
  auto vm = create_vmalloc(options);
  const std::size_t size = 16 * MiB;
  const std::size_t before = resident_bytes();
  auto p = vm->vmalloc(size);
  ASSERT_TRUE(p.has_value());
  EXPECT_GE(resident_bytes(), before + size * 9 / 10);
  EXPECT_FALSE(vm->vfree(*p));
}

TEST(Vmalloc, BadSizesAreRejectedAndChangeNothing) {
  auto vm = create_vmalloc();
  char* keep = allocate(*vm, kPage);
  ASSERT_FALSE(vm->vfree(allocate(*vm, kPage)));
  const std::string before = snapshot(*vm);
  EXPECT_TRUE(IsVmallocError(vm->vmalloc(0), errc::zero_size, std::errc::invalid_argument));
  EXPECT_TRUE(IsVmallocError(vm->vmalloc(std::numeric_limits<std::size_t>::max()), errc::size_overflow,
                             std::errc::invalid_argument));
  EXPECT_TRUE(IsVmallocError(vm->vmalloc(std::numeric_limits<std::size_t>::max() - kPage),
                             errc::size_overflow, std::errc::invalid_argument));
  EXPECT_EQ(snapshot(*vm), before);
  EXPECT_FALSE(vm->vfree(keep));
}

/*** Faults ***/

TEST_F(VmallocDeathTest, GuardPageFaults) {
  auto vm = create_vmalloc();
  char* p = allocate(*vm, 2 * kPage);
  ASSERT_NE(p, nullptr);
  p[2 * kPage - 1] = 1;  // the last byte of the area is fine
  volatile char* guard = p + 2 * kPage;
  EXPECT_DEATH(*guard = 1, "");
  EXPECT_DEATH((void)*guard, "");
}

TEST_F(VmallocDeathTest, FreedMemoryFaultsAfterPurge) {
  auto vm = create_vmalloc();
  char* p = allocate(*vm, 4 * kPage);
  ASSERT_NE(p, nullptr);
  touch_every_page(p, 4 * kPage);
  ASSERT_FALSE(vm->vfree(p));
  vm->purge();
  volatile char* freed = p + kPage;
  EXPECT_DEATH(*freed = 1, "");
  EXPECT_DEATH((void)*freed, "");
}

/*** Freeing and purging ***/

TEST(Vmalloc, FreedMemoryStaysResidentUntilPurgeThenLeaves) {
  auto vm = create_vmalloc();  // the default lazy_max_pages is far above 32 MiB
  const std::size_t size = 32 * MiB;
  char* p = allocate(*vm, size);
  ASSERT_NE(p, nullptr);
  const std::size_t before_touch = resident_bytes();
  touch_every_page(p, size);
  const std::size_t touched = resident_bytes();
  EXPECT_GE(touched, before_touch + size * 9 / 10);

  ASSERT_FALSE(vm->vfree(p));
  EXPECT_GE(resident_bytes(), touched - size / 10) << "vfree is lazy: the pages wait for a purge";
  EXPECT_EQ(vm->stats().bytes_live, 0u);
  EXPECT_EQ(vm->space().info().used, 0u) << "lazily freed areas count as free";

  vm->purge();
  EXPECT_LE(resident_bytes(), touched - size * 9 / 10);
  const VmallocStats stats = vm->stats();
  EXPECT_EQ(stats.purges, 1u);
  EXPECT_EQ(stats.unmap_calls, 1u);
  EXPECT_EQ(stats.unmapped_bytes, size + kPage) << "the area and its guard page";
}

TEST(Vmalloc, SixtyFourAdjacentFreesPurgeInOneCall) {
  FaultInjectionGuard faults;
  auto vm = create_vmalloc();
  std::vector<char*> areas;
  for (int i = 0; i < 64; ++i) {
    areas.push_back(allocate(*vm, 64 * KiB));
    touch_every_page(areas.back(), 64 * KiB);
  }
  // Freed in a scrambled order: merging is by address, not by time.
  std::shuffle(areas.begin(), areas.end(), std::mt19937(42));
  for (char* p : areas) ASSERT_FALSE(vm->vfree(p));
  const std::uint64_t decommits_before = fault::calls(fault::OsCall::decommit);
  vm->purge();
  const VmallocStats stats = vm->stats();
  EXPECT_EQ(stats.purges, 1u);
  EXPECT_EQ(stats.unmap_calls, 1u) << "64 adjacent areas are one run";
  EXPECT_EQ(stats.unmapped_bytes, 64 * (64 * KiB + kPage));
  EXPECT_EQ(fault::calls(fault::OsCall::decommit) - decommits_before, 1u);
}

TEST(Vmalloc, SeparatedFreesPurgeInOneCallPerRun) {
  auto vm = create_vmalloc();
  std::vector<char*> areas;
  for (int i = 0; i < 64; ++i) areas.push_back(allocate(*vm, 64 * KiB));
  // Every fourth area stays live, cutting the freed ones into 16 runs of three.
  for (int i = 0; i < 64; ++i) {
    if (i % 4 != 3) {
      ASSERT_FALSE(vm->vfree(areas[i]));
    }
  }
  vm->purge();
  EXPECT_EQ(vm->stats().unmap_calls, 16u);
  EXPECT_EQ(vm->stats().areas_live, 16u);
}

TEST(Vmalloc, ResidentFreedMemoryStaysBelowLazyMaxPages) {
  VmallocOptions options;
  options.lazy_max_pages = 1024;  // 4 MiB
  options.reuse = false;          // every round takes fresh pages (reuse: ReuseChurn below)
  auto vm = create_vmalloc(options);
  const std::size_t baseline = resident_bytes();
  std::size_t peak = baseline;
  for (int i = 0; i < 200; ++i) {
    char* p = allocate(*vm, 1 * MiB);
    ASSERT_NE(p, nullptr);
    touch_every_page(p, 1 * MiB);
    ASSERT_FALSE(vm->vfree(p));
    peak = std::max(peak, resident_bytes());
  }
  // Lazily freed pages stay resident until they pass lazy_max_pages (4 MiB),
  // then a purge takes them all; one live buffer adds 1 MiB.
  EXPECT_LE(peak - baseline, 4 * MiB + 1 * MiB + 2 * MiB) << "2 MiB slack for the test itself";
  EXPECT_GE(vm->stats().purges, 200u / 5 / 2) << "purges started by themselves";
  EXPECT_EQ(vm->stats().areas_live, 0u);
}

TEST(Vmalloc, EveryBadVfreeIsRejectedAndChangesNothing) {
  auto vm = create_vmalloc();
  char* live = allocate(*vm, 4 * kPage);
  char* freed = allocate(*vm, kPage);
  char* purged = allocate(*vm, kPage);
  ASSERT_FALSE(vm->vfree(purged));
  vm->purge();
  ASSERT_FALSE(vm->vfree(freed));  // lazily freed, not yet purged
  live[0] = 7;
  int not_from_vmalloc = 0;
  const std::uintptr_t reservation_end = vm->space().options().end;

  EXPECT_FALSE(vm->vfree(nullptr)) << "nullptr is a no-op";
  const std::string before = snapshot(*vm);
  const std::pair<const char*, void*> bad[] = {
      {"inner pointer", live + kPage},
      {"one byte in", live + 1},
      {"guard page", live + 4 * kPage},
      {"double free before the purge", freed},
      {"freed and purged", purged},
      {"never returned, inside the reservation", reinterpret_cast<void*>(reservation_end - kPage)},
      {"outside the reservation", &not_from_vmalloc},
      {"reservation's end", reinterpret_cast<void*>(reservation_end)},
  };
  for (const auto& [what, pointer] : bad) {
    EXPECT_TRUE(IsError(vm->vfree(pointer), errc::not_an_area, std::errc::invalid_argument)) << what;
    EXPECT_EQ(snapshot(*vm), before) << what;
  }
  EXPECT_EQ(live[0], 7) << "the live area is untouched";
  EXPECT_FALSE(vm->vfree(live));
  EXPECT_TRUE(IsError(vm->vfree(live), errc::not_an_area, std::errc::invalid_argument)) << "double free";
}

/*** Reuse of freed, not yet purged areas (VmallocOptions::reuse) ***/

// System calls Vmalloc made for memory, of every kind it can make after create().
[[nodiscard]] std::uint64_t memory_calls() {
  using fault::OsCall;
  std::uint64_t total = 0;
  for (OsCall call : {OsCall::commit, OsCall::populate, OsCall::decommit, OsCall::guard})
    total += fault::calls(call);
  return total;
}

TEST(VmallocReuse, ReuseIsOnByDefault) {
  EXPECT_TRUE(VmallocOptions{}.reuse);
}

TEST(VmallocReuse, SameSizeAfterVfreeGetsTheSamePagesWithoutASystemCall) {
  FaultInjectionGuard faults;
  auto vm = create_vmalloc();
  char* first = allocate(*vm, 64 * KiB);
  char* next = allocate(*vm, kPage);  // keeps the freed area from being the space's last
  std::memset(first, 0x77, 64 * KiB);
  ASSERT_FALSE(vm->vfree(first));
  const VmallocStats before = vm->stats();
  const std::uint64_t calls_before = memory_calls();
  const std::uint64_t space_reuses_before = vm->space().stats().lazy_reuses;

  char* again = allocate(*vm, 64 * KiB - 100);  // rounds up to the same 16 pages
  EXPECT_EQ(again, first);
  EXPECT_EQ(memory_calls(), calls_before) << "an exact fit makes no commit, guard or decommit call";
  const VmallocStats after = vm->stats();
  EXPECT_EQ(after.reuses, before.reuses + 1);
  EXPECT_EQ(after.reuse_splits, before.reuse_splits) << "an exact fit is no split";
  EXPECT_EQ(after.unmap_calls, before.unmap_calls);
  EXPECT_EQ(after.purges, before.purges);
  EXPECT_EQ(after.areas_live, 2u);
  EXPECT_EQ(after.bytes_live, 64 * KiB + kPage);
  EXPECT_EQ(vm->space().stats().lazy_reuses, space_reuses_before + 1);
  EXPECT_EQ(first_nonzero(again, 64 * KiB), 64 * KiB) << "reused memory is zeroed";
  EXPECT_EQ(vm->space().find(reinterpret_cast<std::uintptr_t>(again)),
            (Area{reinterpret_cast<std::uintptr_t>(again), reinterpret_cast<std::uintptr_t>(again) + 64 * KiB + kPage}))
      << "the area, its guard page included, is live again";
  EXPECT_EQ(vm->space().check_invariants(), "");
  EXPECT_FALSE(vm->vfree(again));
  EXPECT_FALSE(vm->vfree(next));
}

TEST(VmallocReuse, ReusedMemoryIsZeroedEvenAfterAPatternWasWritten) {
  auto vm = create_vmalloc();
  // Exact fit, every page written.
  const std::size_t size = 256 * KiB;
  char* p = allocate(*vm, size);
  std::memset(p, 0xab, size);
  ASSERT_FALSE(vm->vfree(p));
  char* q = allocate(*vm, size);
  ASSERT_EQ(q, p);
  EXPECT_EQ(first_nonzero(q, size), size);

  // Split: the front and then the rest, both written over by the last owner.
  char* big = allocate(*vm, 1 * MiB);
  std::memset(big, 0xcd, 1 * MiB);
  ASSERT_FALSE(vm->vfree(big));
  constexpr std::size_t kFront = 26 * kPage;  // 100 KiB + 17 bytes, rounded up
  char* front = allocate(*vm, 100 * KiB + 17);
  ASSERT_EQ(front, big);
  EXPECT_EQ(first_nonzero(front, kFront), kFront) << "the whole rounded size is zero";
  char* rest = allocate(*vm, 512 * KiB);
  ASSERT_EQ(rest, big + kFront + kPage) << "the rest of the split, after the new guard page";
  EXPECT_EQ(first_nonzero(rest, 512 * KiB), 512 * KiB);

  EXPECT_EQ(vm->stats().reuses, 3u);
  EXPECT_EQ(vm->stats().reuse_splits, 2u);

  // Only some pages written (the rest never faulted in): all read zero.
  auto sparse_vm = create_vmalloc();
  char* sparse = allocate(*sparse_vm, 4 * MiB);
  for (std::size_t offset = 0; offset < 4 * MiB; offset += 3 * kPage) sparse[offset + 5] = 9;
  ASSERT_FALSE(sparse_vm->vfree(sparse));
  char* sparse_again = allocate(*sparse_vm, 4 * MiB);
  ASSERT_EQ(sparse_again, sparse);
  EXPECT_EQ(first_nonzero(sparse_again, 4 * MiB), 4 * MiB);
  EXPECT_EQ(sparse_vm->stats().reuses, 1u);
}

TEST(VmallocReuse, ReusingAnAreaMakesNoMoreResidentThanItsLastOwnerDid) {
  // The last owner touched one page of 64 MiB; a reuse must not fault in
  // (or zero by touching) the 63.99 MiB nobody ever touched.
  VmallocOptions options;
  options.lazy_max_pages = 1 << 20;  // 64 MiB would pass the default on a 2-CPU machine
  auto vm = create_vmalloc(options);
  const std::size_t size = 64 * MiB;
  char* p = allocate(*vm, size);
  p[size / 2] = 1;
  ASSERT_FALSE(vm->vfree(p));
  const std::size_t before = resident_bytes();
  char* q = allocate(*vm, size);
  ASSERT_EQ(q, p);
  EXPECT_LE(resident_bytes(), before + 4 * MiB);
  EXPECT_EQ(q[size / 2], 0);
  EXPECT_EQ(vm->stats().reuses, 1u);
}

TEST(VmallocReuse, PopulateStillFaultsInEveryPageOfAReusedArea) {
  // vmalloc(size, populate) promises every page faulted in on return. A
  // reused area's pages are resident only where the last owner touched them
  // (zeroing drops long untouched runs), so populate must fault in the rest.
  VmallocOptions options;
  options.lazy_max_pages = 1 << 20;
  auto vm = create_vmalloc(options);
  const std::size_t size = 16 * MiB;
  char* p = allocate(*vm, size);
  p[0] = 1;  // one page of 4096 resident
  ASSERT_FALSE(vm->vfree(p));
  const std::size_t before = resident_bytes();
  char* q = allocate(*vm, size, VmallocFlags::populate);
  ASSERT_EQ(q, p);
  EXPECT_EQ(vm->stats().reuses, 1u);
  EXPECT_GE(resident_bytes(), before + size * 9 / 10) << "populate did not fault the reused pages in";
  EXPECT_EQ(first_nonzero(q, size), size);
  EXPECT_FALSE(vm->vfree(q));
}

TEST(VmallocReuse, SplitCutsAGuardPageAndTheRestIsReusedByTheNextFit) {
  FaultInjectionGuard faults;
  auto vm = create_vmalloc();
  char* big = allocate(*vm, 1 * MiB);
  touch_every_page(big, 1 * MiB);
  ASSERT_FALSE(vm->vfree(big));
  const std::uint64_t guards_before = fault::calls(fault::OsCall::guard);
  const std::uint64_t commits_before = fault::calls(fault::OsCall::commit);

  char* small = allocate(*vm, 64 * KiB);
  EXPECT_EQ(small, big) << "the smallest freed area that fits, at its start";
  EXPECT_EQ(fault::calls(fault::OsCall::guard), guards_before + 1) << "one call for the new guard page";
  EXPECT_EQ(fault::calls(fault::OsCall::commit), commits_before) << "the pages are committed already";
  EXPECT_EQ(vm->stats().reuses, 1u);
  EXPECT_EQ(vm->stats().reuse_splits, 1u);
  const auto base = reinterpret_cast<std::uintptr_t>(big);
  EXPECT_EQ(vm->space().find(base), (Area{base, base + 64 * KiB + kPage}));
  // The rest is lazily freed, waiting for reuse or the purge.
  const std::vector<AreaInfo> areas = list_areas(vm->space());
  ASSERT_EQ(areas.size(), 2u);
  EXPECT_TRUE(areas[1].lazy);
  EXPECT_EQ(areas[1].start, base + 64 * KiB + kPage);
  EXPECT_EQ(areas[1].end, base + 1 * MiB + kPage);

  // The next vmalloc that fits takes the rest, at its start.
  char* next = allocate(*vm, 128 * KiB);
  EXPECT_EQ(next, big + 64 * KiB + kPage);
  EXPECT_EQ(first_nonzero(next, 128 * KiB), 128 * KiB);
  EXPECT_EQ(vm->stats().reuses, 2u);
  EXPECT_EQ(vm->stats().reuse_splits, 2u);
  // Both are usable to their last byte and independent.
  std::memset(small, 1, 64 * KiB);
  std::memset(next, 2, 128 * KiB);
  EXPECT_EQ(small[64 * KiB - 1], 1);
  EXPECT_EQ(next[0], 2);
  EXPECT_EQ(vm->space().check_invariants(), "");
}

TEST_F(VmallocDeathTest, SplitReuseGuardPageFaults) {
  auto vm = create_vmalloc();
  char* big = allocate(*vm, 1 * MiB);
  touch_every_page(big, 1 * MiB);  // the page that becomes the guard was writable memory
  ASSERT_FALSE(vm->vfree(big));
  char* p = allocate(*vm, 64 * KiB);
  ASSERT_EQ(p, big);
  ASSERT_EQ(vm->stats().reuse_splits, 1u);
  p[64 * KiB - 1] = 1;
  volatile char* guard = p + 64 * KiB;
  EXPECT_DEATH(*guard = 1, "");
  EXPECT_DEATH((void)*guard, "");
}

TEST_F(VmallocDeathTest, ExactFitReuseKeepsItsGuardPage) {
  auto vm = create_vmalloc();
  char* p = allocate(*vm, 2 * kPage);
  ASSERT_FALSE(vm->vfree(p));
  char* q = allocate(*vm, 2 * kPage);
  ASSERT_EQ(q, p);
  ASSERT_EQ(vm->stats().reuses, 1u);
  q[2 * kPage - 1] = 1;
  volatile char* guard = q + 2 * kPage;
  EXPECT_DEATH(*guard = 1, "");
}

TEST_F(VmallocDeathTest, RestOfASplitFaultsAfterPurge) {
  auto vm = create_vmalloc();
  char* big = allocate(*vm, 1 * MiB);
  touch_every_page(big, 1 * MiB);
  ASSERT_FALSE(vm->vfree(big));
  char* p = allocate(*vm, 64 * KiB);
  ASSERT_EQ(p, big);
  vm->purge();
  p[0] = 1;  // the reused front is still live
  volatile char* rest = big + 64 * KiB + kPage;
  EXPECT_DEATH(*rest = 1, "");
  volatile char* last = big + 1 * MiB - 1;
  EXPECT_DEATH((void)*last, "");
}

TEST_F(VmallocDeathTest, GuardPageFaultsWhenCuttingItWasRefused) {
  FaultInjectionGuard faults;
  auto vm = create_vmalloc();
  char* big = allocate(*vm, 1 * MiB);
  touch_every_page(big, 1 * MiB);
  ASSERT_FALSE(vm->vfree(big));
  fault::inject(fault::OsCall::guard, 0, 1, ENOMEM);
  char* p = allocate(*vm, 64 * KiB);
  ASSERT_NE(p, nullptr);
  ASSERT_NE(p, big) << "without its guard page the cut piece must not be handed out";
  ASSERT_EQ(first_nonzero(p, 64 * KiB), 64 * KiB);
  p[64 * KiB - 1] = 1;
  volatile char* guard = p + 64 * KiB;
  EXPECT_DEATH(*guard = 1, "");
}

TEST(VmallocReuse, RefusedGuardPageFallsBackToFreshPages) {
  FaultInjectionGuard faults;
  auto vm = create_vmalloc();
  char* big = allocate(*vm, 1 * MiB);
  std::memset(big, 0xee, 1 * MiB);
  ASSERT_FALSE(vm->vfree(big));
  fault::inject(fault::OsCall::guard, 0, 1, ENOMEM);
  char* p = allocate(*vm, 64 * KiB);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(fault::calls(fault::OsCall::guard), 1u) << "the cut was tried";
  EXPECT_EQ(p, big + 1 * MiB + kPage) << "fresh pages: the lowest fit above the freed area";
  EXPECT_EQ(first_nonzero(p, 64 * KiB), 64 * KiB);
  std::memset(p, 1, 64 * KiB);
  EXPECT_EQ(vm->stats().areas_live, 1u);
  EXPECT_EQ(vm->stats().bytes_live, 64 * KiB);
  // The cut piece is lazily freed and never reused; the rest still is.
  char* q = allocate(*vm, 64 * KiB);
  EXPECT_EQ(q, big + 64 * KiB + kPage) << "the rest of the freed area, not the cut piece";
  EXPECT_EQ(first_nonzero(q, 64 * KiB), 64 * KiB);
  const auto cut = reinterpret_cast<std::uintptr_t>(big);
  std::vector<AreaInfo> areas = list_areas(vm->space());
  ASSERT_FALSE(areas.empty());
  EXPECT_EQ(areas[0].start, cut);
  EXPECT_EQ(areas[0].end, cut + 64 * KiB + kPage);
  EXPECT_TRUE(areas[0].lazy);
  // Nothing leaks: once everything is freed and purged, nothing is live or lazy.
  ASSERT_FALSE(vm->vfree(p));
  ASSERT_FALSE(vm->vfree(q));
  vm->purge();
  EXPECT_EQ(vm->stats().areas_live, 0u);
  EXPECT_EQ(vm->stats().bytes_live, 0u);
  EXPECT_EQ(vm->stats().quarantined_bytes, 0u);
  EXPECT_TRUE(list_areas(vm->space()).empty());
  EXPECT_EQ(vm->space().check_invariants(), "");
}

TEST(VmallocReuse, NeighboursFreedSeparatelyAreReusedAsOneWithTheirOldGuardPagesWritable) {
  FaultInjectionGuard faults;
  VmallocOptions options;
  options.lazy_max_pages = 1 << 20;
  auto vm = create_vmalloc(options);
  char* a = allocate(*vm, 64 * KiB);
  char* b = allocate(*vm, 64 * KiB);
  char* keep = allocate(*vm, kPage);
  ASSERT_EQ(b, a + 64 * KiB + kPage);
  std::memset(a, 0x11, 64 * KiB);
  std::memset(b, 0x22, 64 * KiB);
  ASSERT_FALSE(vm->vfree(a));
  ASSERT_FALSE(vm->vfree(b));
  const auto base = reinterpret_cast<std::uintptr_t>(a);
  const std::vector<AreaInfo> areas = list_areas(vm->space());
  ASSERT_EQ(areas.size(), 2u) << "a and b are one joined area";
  EXPECT_EQ(areas[0].start, base);
  EXPECT_EQ(areas[0].end, base + 2 * (64 * KiB + kPage));
  EXPECT_TRUE(areas[0].lazy);

  // 33 pages and a guard: the joined area exactly, a's old guard page inside.
  const std::uint64_t guards_before = fault::calls(fault::OsCall::guard);
  char* p = allocate(*vm, 132 * KiB);
  ASSERT_EQ(p, a);
  EXPECT_EQ(fault::calls(fault::OsCall::guard), guards_before) << "no cut, no new guard page";
  const VmallocStats stats = vm->stats();
  EXPECT_EQ(stats.reuses, 1u);
  EXPECT_EQ(stats.reuse_joined, 1u);
  EXPECT_EQ(stats.reuse_splits, 0u);
  EXPECT_EQ(first_nonzero(p, 132 * KiB), 132 * KiB) << "a, its old guard page and b all read zero";
  std::memset(p, 0x33, 132 * KiB);  // a's old guard page is writable now
  EXPECT_EQ(p[64 * KiB], 0x33);
  EXPECT_FALSE(vm->vfree(p));
  EXPECT_FALSE(vm->vfree(keep));
  EXPECT_EQ(vm->space().check_invariants(), "");
}

TEST(VmallocReuse, PartOfAJoinedAreaSpanningAnOldGuardPageIsWritableAndTheRestStaysJoined) {
  VmallocOptions options;
  options.lazy_max_pages = 1 << 20;
  auto vm = create_vmalloc(options);
  char* a = allocate(*vm, 64 * KiB);  // pages [0,16), guard 16
  char* b = allocate(*vm, 64 * KiB);  // pages [17,33), guard 33
  char* keep = allocate(*vm, kPage);
  ASSERT_FALSE(vm->vfree(a));
  ASSERT_FALSE(vm->vfree(b));
  char* p = allocate(*vm, 100 * KiB);  // 25 pages over a's old guard, new guard at 25
  ASSERT_EQ(p, a);
  EXPECT_EQ(first_nonzero(p, 100 * KiB), 100 * KiB);
  std::memset(p, 0x44, 100 * KiB);
  char* rest = allocate(*vm, 28 * KiB);  // 7 pages and a guard: the rest [26,34) exactly
  EXPECT_EQ(rest, a + 26 * kPage);
  EXPECT_EQ(first_nonzero(rest, 28 * KiB), 28 * KiB);
  std::memset(rest, 0x55, 28 * KiB);
  EXPECT_EQ(p[100 * KiB - 1], 0x44) << "the two parts are independent";
  const VmallocStats stats = vm->stats();
  EXPECT_EQ(stats.reuses, 2u);
  EXPECT_EQ(stats.reuse_joined, 2u) << "the rest of a joined area stays joined";
  EXPECT_EQ(stats.reuse_splits, 1u);
  EXPECT_FALSE(vm->vfree(p));
  EXPECT_FALSE(vm->vfree(rest));
  EXPECT_FALSE(vm->vfree(keep));
}

TEST_F(VmallocDeathTest, GuardPageAfterAJoinedReuseFaults) {
  auto vm = create_vmalloc();
  char* a = allocate(*vm, 64 * KiB);
  char* b = allocate(*vm, 64 * KiB);
  ASSERT_FALSE(vm->vfree(a));
  ASSERT_FALSE(vm->vfree(b));
  char* p = allocate(*vm, 100 * KiB);  // 25 pages: cut inside b, after a's old guard
  ASSERT_EQ(p, a);
  ASSERT_EQ(vm->stats().reuse_joined, 1u);
  p[64 * KiB] = 1;  // a's old guard page, writable now
  volatile char* guard = p + 100 * KiB;
  EXPECT_DEATH(*guard = 1, "");
}

TEST(VmallocReuse, ReuseOffNeverTakesFreedPagesBack) {
  VmallocOptions options;
  options.reuse = false;
  options.lazy_max_pages = 1 << 20;
  auto vm = create_vmalloc(options);
  char* p = allocate(*vm, 64 * KiB);
  ASSERT_FALSE(vm->vfree(p));
  char* q = allocate(*vm, 64 * KiB);
  EXPECT_EQ(q, p + 64 * KiB + kPage) << "the freed area waits for the purge";
  ASSERT_FALSE(vm->vfree(q));
  char* big = allocate(*vm, 1 * MiB);
  ASSERT_FALSE(vm->vfree(big));
  for (int i = 0; i < 8; ++i) {
    char* r = allocate(*vm, 32 * KiB);
    EXPECT_GE(r, big + 1 * MiB + kPage) << "round " << i;
  }
  EXPECT_EQ(vm->stats().reuses, 0u);
  EXPECT_EQ(vm->stats().reuse_splits, 0u);
  EXPECT_EQ(vm->space().stats().lazy_reuses, 0u);
  vm->purge();
  EXPECT_EQ(allocate(*vm, 64 * KiB), p) << "after the purge, the lowest fit";
}

TEST(VmallocReuse, PurgeStillGivesFreedMemoryBackWithReuseOn) {
  VmallocOptions options;
  options.lazy_max_pages = 1 << 20;
  auto vm = create_vmalloc(options);
  const std::size_t size = 32 * MiB;
  char* p = allocate(*vm, size);
  touch_every_page(p, size);
  ASSERT_FALSE(vm->vfree(p));
  char* front = allocate(*vm, 1 * MiB);  // reuse the front; the rest stays freed and resident
  ASSERT_EQ(front, p);
  touch_every_page(front, 1 * MiB);
  const std::size_t touched = resident_bytes();
  vm->purge();
  EXPECT_LE(resident_bytes(), touched - (size - 2 * MiB) * 9 / 10);
  EXPECT_EQ(vm->stats().unmapped_bytes, size - 1 * MiB) << "the rest of the split, its guard page included";
  EXPECT_EQ(front[0], 1) << "the reused front is live and keeps its pages";
  EXPECT_FALSE(vm->vfree(front));
}

TEST(VmallocReuse, ResidentMemoryStaysBoundedUnderReuseChurn) {
  VmallocOptions options;
  options.lazy_max_pages = 1024;  // 4 MiB
  auto vm = create_vmalloc(options);
  std::mt19937_64 random(99);
  std::vector<std::pair<char*, std::size_t>> live;
  const std::size_t baseline = resident_bytes();
  std::size_t peak = baseline;
  const int rounds = static_cast<int>(600 * test_scale());
  for (int round = 0; round < rounds; ++round) {
    const std::size_t size = (16 + random() % 241) * kPage;  // 64 KiB to 1 MiB
    char* p = allocate(*vm, size);
    ASSERT_NE(p, nullptr);
    ASSERT_EQ(p[0], 0);
    ASSERT_EQ(p[size - 1], 0);
    touch_every_page(p, size);
    live.emplace_back(p, size);
    if (live.size() > 3) {
      const std::size_t victim = random() % live.size();
      ASSERT_FALSE(vm->vfree(live[victim].first));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
    }
    peak = std::max(peak, resident_bytes());
  }
  // Freed pages: at most lazy_max_pages plus the last freed area (1 MiB)
  // before a purge takes them; live ones: at most four areas of 1 MiB.
  // (Not under TSan: zeroing with memset writes shadow memory four times
  // the size of every reused byte, and that stays resident.)
  if (!kThreadSanitized) {
    EXPECT_LE(peak - baseline, 4 * MiB + 1 * MiB + 4 * MiB + 2 * MiB) << "2 MiB slack for the test itself";
  }
  const VmallocStats stats = vm->stats();
  EXPECT_GT(stats.reuses, static_cast<std::uint64_t>(rounds) / 4) << "the churn must run on reuse";
  EXPECT_GT(stats.reuse_splits, 0u);
  EXPECT_GT(stats.purges, 0u) << "what is not reused is still purged";
  for (const auto& [p, size] : live) ASSERT_FALSE(vm->vfree(p));
  vm->purge();
  EXPECT_EQ(vm->stats().areas_live, 0u);
  EXPECT_EQ(vm->space().info().used, 0u);
  // ASan's shadow of every page touched (an eighth of it) stays resident.
  if (!kThreadSanitized) {
    EXPECT_LE(resident_bytes(), baseline + (kSanitized ? 8 * MiB : 2 * MiB));
  }
}

TEST(VmallocReuse, VfreeOfAnythingButAReusedAreasStartIsRejected) {
  auto vm = create_vmalloc();
  char* big = allocate(*vm, 1 * MiB);
  ASSERT_FALSE(vm->vfree(big));
  char* p = allocate(*vm, 64 * KiB);
  ASSERT_EQ(p, big);
  p[0] = 3;
  const std::string before = snapshot(*vm);
  const std::pair<const char*, void*> bad[] = {
      {"inner pointer", p + kPage},
      {"one byte in", p + 1},
      {"last byte", p + 64 * KiB - 1},
      {"the new guard page", p + 64 * KiB},
      {"the rest of the split (freed, not returned)", p + 64 * KiB + kPage},
      {"inside the rest", p + 512 * KiB},
      {"the old guard page", big + 1 * MiB},
  };
  for (const auto& [what, pointer] : bad) {
    EXPECT_TRUE(IsError(vm->vfree(pointer), errc::not_an_area, std::errc::invalid_argument)) << what;
    EXPECT_EQ(snapshot(*vm), before) << what;
  }
  EXPECT_EQ(p[0], 3);
  EXPECT_FALSE(vm->vfree(p));
  EXPECT_TRUE(IsError(vm->vfree(p), errc::not_an_area, std::errc::invalid_argument)) << "double free";
}

TEST(VmallocReuse, UnguardedReuseSplitsWithoutASystemCall) {
  FaultInjectionGuard faults;
  VmallocOptions options;
  options.guard_page = false;
  auto vm = create_vmalloc(options);
  char* big = allocate(*vm, 1 * MiB);
  std::memset(big, 0x42, 1 * MiB);
  ASSERT_FALSE(vm->vfree(big));
  const std::uint64_t calls_before = memory_calls();
  char* p = allocate(*vm, 64 * KiB);
  char* q = allocate(*vm, 64 * KiB);
  EXPECT_EQ(p, big);
  EXPECT_EQ(q, big + 64 * KiB) << "no guard page between them";
  EXPECT_EQ(memory_calls(), calls_before);
  EXPECT_EQ(first_nonzero(p, 64 * KiB), 64 * KiB);
  EXPECT_EQ(first_nonzero(q, 64 * KiB), 64 * KiB);
  EXPECT_EQ(vm->stats().reuses, 2u);
}

/*** Exhaustion and refusal ***/

TEST(Vmalloc, SmallReservationRunsOutCleanlyAndRecovers) {
  VmallocOptions options;
  options.reserve = 1 * MiB;
  options.reuse = false;  // so the freed area comes back through the purge vmalloc starts
  auto vm = create_vmalloc(options);
  // 64 KiB + a guard page: 15 areas take 1020 KiB of the 1024.
  std::vector<char*> areas;
  for (int i = 0; i < 15; ++i) areas.push_back(allocate(*vm, 64 * KiB));
  ASSERT_EQ(vm->stats().areas_live, 15u);
  const std::string full = snapshot(*vm);
  EXPECT_TRUE(IsVmallocError(vm->vmalloc(64 * KiB), errc::no_space, std::errc::not_enough_memory));
  EXPECT_TRUE(IsVmallocError(vm->vmalloc(2 * MiB), errc::no_space, std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*vm), full) << "a failed vmalloc leaves no area behind";

  // A lazily freed area is reused after the purge vmalloc starts by itself.
  ASSERT_FALSE(vm->vfree(areas[7]));
  char* again = allocate(*vm, 64 * KiB);
  EXPECT_EQ(again, areas[7]);
  EXPECT_EQ(first_nonzero(again, 64 * KiB), 64 * KiB);
  EXPECT_EQ(vm->stats().purges, 1u);
}

TEST(Vmalloc, RefusedCommitRollsBackAndLeaksNothing) {
  FaultInjectionGuard faults;
  auto vm = create_vmalloc();
  char* keep = allocate(*vm, kPage);
  const std::string before = snapshot(*vm);
  fault::inject(fault::OsCall::commit, 0, 1, ENOMEM);
  EXPECT_TRUE(IsVmallocError(vm->vmalloc(64 * KiB), errc::os_refused, std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*vm), before);
  char* next = allocate(*vm, 64 * KiB);
  EXPECT_EQ(next, keep + 2 * kPage) << "the rolled-back range is free again at once";
  EXPECT_EQ(first_nonzero(next, 64 * KiB), 64 * KiB);
}

TEST(Vmalloc, RefusedPopulateRollsBackAndLeaksNothing) {
  FaultInjectionGuard faults;
  auto vm = create_vmalloc();
  const std::string before = snapshot(*vm);
  const std::size_t resident_before = resident_bytes();
  fault::inject(fault::OsCall::populate, 0, 1, ENOMEM);
  EXPECT_TRUE(IsVmallocError(vm->vmalloc(8 * MiB, VmallocFlags::populate), errc::os_refused,
                             std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*vm), before);
  EXPECT_LE(resident_bytes(), resident_before + 1 * MiB);
  EXPECT_NE(allocate(*vm, 8 * MiB, VmallocFlags::populate), nullptr);
}

TEST(Vmalloc, RefusedDecommitQuarantinesTheRunUntilARetrySucceeds) {
  FaultInjectionGuard faults;
  VmallocOptions options;
  options.guard_page = false;
  auto vm = create_vmalloc(options);
  const std::size_t size = 4 * MiB;
  char* p = allocate(*vm, size);
  std::memset(p, 0xcd, size);
  ASSERT_FALSE(vm->vfree(p));
  const std::size_t resident_before = resident_bytes();
  fault::inject(fault::OsCall::decommit, 0, 2, ENOMEM);  // the purge's call and the first retry
  vm->purge();
  VmallocStats stats = vm->stats();
  EXPECT_EQ(stats.decommit_failures, 1u);
  EXPECT_EQ(stats.quarantined_bytes, size);
  EXPECT_EQ(stats.unmapped_bytes, 0u);
  EXPECT_LE(resident_bytes(), resident_before - size * 9 / 10) << "the pages are dropped anyway";

  // The retry before this vmalloc fails too, so the quarantined range is held
  // and the area comes from above it.
  char* q = allocate(*vm, size);
  EXPECT_GE(q, p + size);
  EXPECT_EQ(vm->stats().quarantined_bytes, size);
  EXPECT_TRUE(IsError(vm->vfree(p), errc::not_an_area, std::errc::invalid_argument))
      << "the holder of a quarantined run was never returned by vmalloc";

  vm->purge();  // the retry succeeds and the holder is let go
  stats = vm->stats();
  EXPECT_EQ(stats.quarantined_bytes, 0u);
  EXPECT_EQ(stats.unmapped_bytes, size);
  EXPECT_EQ(stats.areas_live, 1u);
  EXPECT_EQ(vm->space().info().used, size) << "only q is live";
  char* again = allocate(*vm, size);
  EXPECT_EQ(again, p);
  EXPECT_EQ(first_nonzero(again, size), size);
  EXPECT_EQ(vm->space().check_invariants(), "");
}

// The kernel refusing for real: each guarded area is two kernel mappings, so
// vm.max_map_count runs out long before a large reservation does.
TEST(Vmalloc, RunningOutOfKernelMappingsIsNotEnoughMemoryAndRecovers) {
  if (kSanitized) GTEST_SKIP() << "sanitizer runtimes need mappings of their own";
  auto vm = create_vmalloc();
  std::vector<char*> areas;
  std::expected<void*, std::error_code> result;
  while ((result = vm->vmalloc(kPage)).has_value()) {
    areas.push_back(static_cast<char*>(*result));
    ASSERT_LT(areas.size(), 1'000'000u) << "vm.max_map_count never ran out";
  }
  EXPECT_TRUE(IsError(result.error(), errc::os_refused, std::errc::not_enough_memory));
  VmallocStats stats = vm->stats();
  EXPECT_EQ(stats.areas_live, areas.size());
  EXPECT_EQ(stats.decommit_failures, 0u) << "the roll-back needed no new mapping";
  EXPECT_EQ(vm->space().info().used, areas.size() * 2 * kPage) << "the failed area was freed";

  // Freeing one area in the middle gives its two mappings back (the purge's
  // range is exactly them), and the next vmalloc takes its place.
  char* middle = areas[areas.size() / 2];
  ASSERT_FALSE(vm->vfree(middle));
  vm->purge();
  char* again = allocate(*vm, kPage);
  EXPECT_EQ(again, middle);
  again[0] = 1;
  ASSERT_FALSE(vm->vfree(areas[areas.size() / 3]));
  vm->purge();
  for (char* p : areas) {
    if (p != areas[areas.size() / 3]) {
      ASSERT_FALSE(vm->vfree(p));
    }
  }
  vm->purge();
  stats = vm->stats();
  EXPECT_EQ(stats.areas_live, 0u);
  EXPECT_EQ(stats.decommit_failures, 0u);
  EXPECT_EQ(stats.quarantined_bytes, 0u);
}

/*** Concurrency ***/

// Each thread fills its areas with a pattern of its own, checks it before
// freeing, while the others allocate, free and purge: an overlap between two
// live areas, or a purge taking a live one, breaks a pattern or faults.
TEST(VmallocConcurrency, ThreadsKeepTheirOwnPatterns) {
  VmallocOptions options;
  options.lazy_max_pages = 256;  // purges start often, under the other threads' feet
  options.info_mode = InfoMode::counters;
  auto vm = create_vmalloc(options);
  const int threads = 4;
  const int rounds = static_cast<int>(300 * test_scale());
  std::atomic<int> broken{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 random(1234 + t);
      struct Owned {
        std::uint64_t* words;
        std::size_t count;
        std::uint64_t seed;
      };
      std::vector<Owned> owned;
      auto check_and_free = [&](const Owned& area) {
        for (std::size_t i = 0; i < area.count; ++i) {
          if (area.words[i] != area.seed + i) {
            broken.fetch_add(1, std::memory_order_relaxed);
            break;
          }
        }
        if (vm->vfree(area.words)) broken.fetch_add(1, std::memory_order_relaxed);
      };
      for (int round = 0; round < rounds; ++round) {
        const std::size_t size = kPage * (1 + random() % 32) - random() % kPage;
        auto result = vm->vmalloc(size);
        if (!result) {
          broken.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        Owned area{static_cast<std::uint64_t*>(*result), size / sizeof(std::uint64_t),
                   (static_cast<std::uint64_t>(t) << 56) | (static_cast<std::uint64_t>(round) << 32)};
        for (std::size_t i = 0; i < area.count; ++i) area.words[i] = area.seed + i;
        owned.push_back(area);
        if (owned.size() > 6 || random() % 3 == 0) {
          const std::size_t victim = random() % owned.size();
          check_and_free(owned[victim]);
          owned.erase(owned.begin() + static_cast<std::ptrdiff_t>(victim));
        }
        if (random() % 50 == 0) vm->purge();
      }
      for (const Owned& area : owned) check_and_free(area);
    });
  }
  for (std::thread& worker : workers) worker.join();
  EXPECT_EQ(broken.load(), 0);
  const VmallocStats stats = vm->stats();
  EXPECT_EQ(stats.areas_live, 0u);
  EXPECT_EQ(stats.bytes_live, 0u);
  EXPECT_GT(stats.purges, 0u);
  EXPECT_GT(stats.reuses, 0u) << "reuse (on by default) must be in the mix";
  vm->purge();
  EXPECT_EQ(vm->space().info().used, 0u);
  EXPECT_EQ(vm->space().check_invariants(), "");
}

TEST(VmallocConcurrency, RacingFreesOfOneAreaSucceedOnce) {
  auto vm = create_vmalloc();
  const int rounds = static_cast<int>(200 * test_scale());
  for (int round = 0; round < rounds; ++round) {
    char* p = allocate(*vm, kPage);
    std::atomic<int> successes{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> racers;
    for (int t = 0; t < 2; ++t) {
      racers.emplace_back([&] {
        while (!go.load(std::memory_order_acquire)) {
        }
        if (!vm->vfree(p)) successes.fetch_add(1, std::memory_order_relaxed);
      });
    }
    go.store(true, std::memory_order_release);
    for (std::thread& racer : racers) racer.join();
    ASSERT_EQ(successes.load(), 1) << "round " << round;
  }
  EXPECT_EQ(vm->stats().areas_live, 0u);
  EXPECT_EQ(vm->stats().bytes_live, 0u);
}

}  // namespace
}  // namespace uvmalloc::testing
