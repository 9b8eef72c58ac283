// tests/va_space_test.cpp - one test per rule of DESIGN 2.1 and per bad input.
//
// Layouts are small and written out by hand, so every expected address and
// figure below can be checked on paper. Every error is checked twice (the
// contract's std::errc and uvmalloc's specific code) and followed by a
// snapshot comparison proving that the failed call changed nothing.
#include "test_util.hpp"

#include <uvmalloc/errors.hpp>
#include <uvmalloc/va_space.hpp>

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <initializer_list>
#include <random>
#include <stdexcept>
#include <tuple>
#include <thread>
#include <vector>

namespace uvmalloc::testing {
namespace {

using namespace std::chrono_literals;

// Aligned to 256 MiB, so alignments up to that start the space aligned.
constexpr std::uintptr_t kBase = 0x10000000;

// The address of page n of a space starting at kBase.
constexpr std::uintptr_t at(std::size_t n) { return kBase + n * kPage; }

// Lazy areas stay lazy until an explicit purge unless a test says otherwise.
constexpr std::size_t kNoAutoPurge = std::size_t{1} << 30;

class VaSpaceTest : public ::testing::Test {
 protected:
  VaSpace& make(std::size_t pages, std::size_t lazy_max_pages = kNoAutoPurge) {
    VaSpaceOptions options;
    options.start = kBase;
    options.end = at(pages);
    options.lazy_max_pages = lazy_max_pages;
    options.on_purge = purges_.callback();
    space_ = create_space(options);
    return *space_;
  }

  // Allocates `count` areas of `pages` pages each, lowest first, and checks
  // they land back to back from `first_page` on.
  void fill(std::size_t first_page, std::size_t count, std::size_t pages = 1) {
    for (std::size_t i = 0; i < count; ++i)
      ASSERT_TRUE(AllocatedAt(space_->alloc(pages * kPage, 1), at(first_page + i * pages)));
  }

  PurgeLog purges_;  // declared first: outlives space_
  std::unique_ptr<VaSpace> space_;
};

/*** create() ***/

TEST(VaSpaceCreate, AcceptsValidOptionsAndReportsThem) {
  VaSpaceOptions options;
  options.start = kBase;
  options.end = at(64);
  options.page_size = kPage;
  options.info_mode = InfoMode::counters;
  options.lazy_max_pages = 7;
  auto space = create_space(options);
  EXPECT_EQ(space->options().start, kBase);
  EXPECT_EQ(space->options().end, at(64));
  EXPECT_EQ(space->options().page_size, kPage);
  EXPECT_EQ(space->options().info_mode, InfoMode::counters);
  EXPECT_EQ(space->lazy_max_pages(), 7u);
  EXPECT_EQ(space->info(), (VmallocInfo{64 * kPage, 0, 64 * kPage}));
  EXPECT_EQ(space->check_invariants(), "");
}

TEST(VaSpaceCreate, RejectsInconsistentOptions) {
  struct Case {
    const char* what;
    std::uintptr_t start, end;
    std::size_t page_size;
  };
  const Case cases[] = {
      {"start not a multiple of page_size", kBase + 1, at(4), kPage},
      {"start one page-half off", kBase + kPage / 2, at(4), kPage},
      {"end not a multiple of page_size", kBase, at(4) - 1, kPage},
      {"end == start", kBase, kBase, kPage},
      {"end < start", at(4), kBase, kPage},
      {"empty space at zero", 0, 0, kPage},
      {"page_size 0", kBase, at(4), 0},
      {"page_size 3", 0, 3 * 64, 3},
      {"page_size 6144", 0, 6144 * 4, 6144},
      {"page_size 4097", 0, 4097 * 4, 4097},
  };
  for (const Case& c : cases) {
    VaSpaceOptions options;
    options.start = c.start;
    options.end = c.end;
    options.page_size = c.page_size;
    const auto created = VaSpace::create(options);
    ASSERT_FALSE(created.has_value()) << c.what;
    EXPECT_TRUE(IsError(created.error(), errc::bad_options, std::errc::invalid_argument)) << c.what;
  }
}

TEST(VaSpaceCreate, DefaultLazyMaxPagesIsTheKernelFormula) {
  // 32 MiB worth of pages times fls(online CPUs), as lazy_max_pages() in mm/vmalloc.c.
  const auto cpus = static_cast<unsigned long>(sysconf(_SC_NPROCESSORS_ONLN));
  for (std::size_t page_size : {std::size_t{4096}, std::size_t{65536}}) {
    const std::size_t expected = (std::size_t{32} << 20) / page_size * std::bit_width(cpus);
    EXPECT_EQ(default_lazy_max_pages(page_size), expected) << page_size;
    VaSpaceOptions options;
    options.end = 16 * page_size;
    options.page_size = page_size;
    EXPECT_EQ(create_space(options)->lazy_max_pages(), expected) << page_size;
  }
}

TEST(VaSpaceCreate, AcceptsSmallPowerOfTwoPageSizes) {
  for (std::size_t page_size : {std::size_t{1}, std::size_t{2}, std::size_t{512}}) {
    VaSpaceOptions options;
    options.start = 8 * page_size;
    options.end = 24 * page_size;
    options.page_size = page_size;
    auto space = create_space(options);
    EXPECT_TRUE(AllocatedAt(space->alloc(1, 1), 8 * page_size)) << page_size;
    EXPECT_TRUE(AllocatedAt(space->alloc(page_size + 1, 1), 9 * page_size)) << page_size;
    EXPECT_EQ(space->info().used, 3 * page_size) << page_size;
    EXPECT_EQ(space->check_invariants(), "");
  }
}

/*** alloc(): where areas go ***/

TEST_F(VaSpaceTest, AllocRoundsSizeUpToWholePages) {
  make(16);
  EXPECT_TRUE(AllocatedAt(space_->alloc(1, 1), at(0)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(1)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage + 1, 1), at(2)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(1, 1), at(4)));
  EXPECT_EQ(space_->find(at(0)), (Area{at(0), at(1)}));
  EXPECT_EQ(space_->find(at(2)), (Area{at(2), at(4)}));
  EXPECT_EQ(space_->info().used, 5 * kPage);
}

TEST_F(VaSpaceTest, AllocReturnsLowestFitAfterFrees) {
  make(32);
  // Areas of 1, 2, 1, 3, 1 pages at pages 0, 1, 3, 4, 7.
  for (auto [pages, first] : {std::pair{1, 0}, {2, 1}, {1, 3}, {3, 4}, {1, 7}})
    ASSERT_TRUE(AllocatedAt(space_->alloc(pages * kPage, 1), at(first)));
  ASSERT_FALSE(space_->free(at(1)));  // hole of 2 pages at 1
  ASSERT_FALSE(space_->free(at(4)));  // hole of 3 pages at 4
  EXPECT_TRUE(AllocatedAt(space_->alloc(3 * kPage, 1), at(4)));  // skips the 2-page hole
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(1)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(2)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(8)));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceTest, AllocAlignmentBelowPageSizeMeansPageAlignment) {
  make(16);
  std::size_t next = 0;
  for (std::size_t align : {1, 2, 8, 512, 2048, 4096})
    EXPECT_TRUE(AllocatedAt(space_->alloc(100, align), at(next++))) << align;
}

TEST(VaSpaceAlloc, LargeAlignmentGivesLowestAlignedAddress) {
  VaSpaceOptions options;
  options.start = at(1);  // not 64 KiB aligned
  options.end = at(64);
  auto space = create_space(options);
  constexpr std::size_t k64K = 16 * kPage;
  EXPECT_TRUE(AllocatedAt(space->alloc(kPage, k64K), at(16)));
  EXPECT_TRUE(AllocatedAt(space->alloc(kPage, 1), at(1)));  // lower, below the aligned area
  EXPECT_TRUE(AllocatedAt(space->alloc(2 * kPage, k64K), at(32)));
  EXPECT_TRUE(AllocatedAt(space->alloc(kPage, 2 * kPage), at(2)));
  EXPECT_TRUE(AllocatedAt(space->alloc(k64K, k64K), at(48)));
  // The next 64 KiB boundary is the space's end: no fit, and no lazy area to purge.
  const std::string before = snapshot(*space);
  EXPECT_TRUE(IsError(space->alloc(kPage, k64K), errc::no_space, std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*space), before);
}

TEST_F(VaSpaceTest, AllocAlignedFindsLowerHoleThatFitsOnlyOnceAligned) {
  // Linux's descent asks for size + align - 1 = 4 pages - 1 and would skip the
  // 2-page hole at page 2; the contract wants the exact lowest fit.
  make(64);
  fill(0, 3, 2);  // pages [0,2) [2,4) [4,6)
  ASSERT_FALSE(space_->free(at(2)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 2 * kPage), at(2)));
  // A 2-page hole at an odd page cannot hold a 2-page aligned area.
  ASSERT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(6)));
  ASSERT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(7)));
  ASSERT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(9)));
  ASSERT_FALSE(space_->free(at(7)));  // hole [7, 9)
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 2 * kPage), at(10)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(7)));
}

TEST_F(VaSpaceTest, AlignedAllocFindsTheOneAlignedHoleAmongManyMisalignedOnes) {
  // 500 holes of 2 pages, each large enough for a 2-page area but starting at
  // an odd page, so none can hold one aligned to 2 pages; one hole of exactly
  // 2 pages at an even page in the middle. The exact lowest fit is that hole;
  // a search that only trusts size + align - 1 would go past all of them.
  constexpr std::size_t kPeriods = 500, kAlignedPeriod = 377;
  make(4 * kPeriods + 64);
  fill(0, 4 * kPeriods);
  for (std::size_t k = 0; k < kPeriods; ++k) {
    const std::size_t hole = 4 * k + (k == kAlignedPeriod ? 2 : 1);
    ASSERT_FALSE(space_->free(at(hole)));
    ASSERT_FALSE(space_->free(at(hole + 1)));
  }
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 2 * kPage), at(4 * kAlignedPeriod + 2)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 2 * kPage), at(4 * kPeriods)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(1)));  // unaligned: the first hole
  EXPECT_TRUE(purges_.calls().empty());
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceTest, AllocWithinRangeReturnsLowestFitInsideIt) {
  make(32);
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1, at(10), at(20)), at(10)));
  // An unaligned vstart is aligned up.
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1, at(10) + 1, at(20)), at(11)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 4 * kPage, at(10), at(20)), at(12)));
  // Exact fit at the top of the range; vend is exclusive.
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1, at(18), at(20)), at(18)));
  const std::string before = snapshot(*space_);
  EXPECT_TRUE(IsError(space_->alloc(kPage, 1, at(18), at(20)), errc::no_space,
                      std::errc::not_enough_memory));
  EXPECT_TRUE(IsError(space_->alloc(2 * kPage, 1, at(20), at(22) - 1), errc::no_space,
                      std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*space_), before);
  // Below vstart is free, but the range excludes it.
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(0)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1, at(0), at(32)), at(1)));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST(VaSpaceAlloc, SpaceStartingAtZeroHandsOutAddressZero) {
  VaSpaceOptions options;
  options.end = 8 * kPage;
  auto space = create_space(options);
  EXPECT_TRUE(AllocatedAt(space->alloc(kPage, 1), 0));
  EXPECT_EQ(space->find(0), (Area{0, kPage}));
  EXPECT_TRUE(VmallocinfoMatches(space->vmallocinfo(),
                                 {"0x0000000000000000-0x0000000000001000    4096"}));
  EXPECT_FALSE(space->free(0));
  EXPECT_EQ(space->find(0), std::nullopt);
  EXPECT_TRUE(AllocatedAt(space->alloc(kPage, 1), 0));
  EXPECT_FALSE(space->free_lazy(0));
  space->purge();
  EXPECT_TRUE(AllocatedAt(space->alloc(8 * kPage, 1, 0, 8 * kPage), 0));
  EXPECT_EQ(space->check_invariants(), "");
}

TEST(VaSpaceAlloc, SpaceAtTopOfAddressRangeNeverWrapsAround) {
  constexpr std::uintptr_t kEnd = kMaxAddress - kPage + 1;  // the highest page-aligned end
  constexpr std::uintptr_t kStart = kEnd - 16 * kPage;
  VaSpaceOptions options;
  options.start = kStart;
  options.end = kEnd;
  auto space = create_space(options);
  EXPECT_TRUE(AllocatedAt(space->alloc(kPage, 1), kStart));
  const std::string before = snapshot(*space);
  // Aligning kStart + kPage up to 2^63 overflows: no fit, not a wrapped address.
  EXPECT_TRUE(IsError(space->alloc(kPage, std::size_t{1} << 63), errc::no_space,
                      std::errc::not_enough_memory));
  EXPECT_TRUE(IsError(space->alloc(kPage, std::size_t{1} << 40), errc::no_space,
                      std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*space), before);
  EXPECT_TRUE(AllocatedAt(space->alloc(15 * kPage, 1), kStart + kPage));
  EXPECT_EQ(space->find(kEnd - 1), (Area{kStart + kPage, kEnd}));
  EXPECT_EQ(space->find(kMaxAddress), std::nullopt);
  EXPECT_EQ(space->info(), (VmallocInfo{16 * kPage, 16 * kPage, 0}));
  EXPECT_TRUE(IsError(space->alloc(kPage, 1), errc::no_space, std::errc::not_enough_memory));
  EXPECT_FALSE(space->free_lazy(kStart));
  EXPECT_TRUE(AllocatedAt(space->alloc(kPage, 1, kStart, kEnd), kStart));
  EXPECT_EQ(space->check_invariants(), "");
}

/*** alloc(): errors ***/

TEST_F(VaSpaceTest, AllocRejectsBadArgumentsAndChangesNothing) {
  make(32);
  fill(0, 4);
  ASSERT_FALSE(space_->free_lazy(at(1)));  // a lazy area an accidental purge would remove
  ASSERT_FALSE(space_->free(at(2)));
  struct Case {
    const char* what;
    std::size_t size, align;
    std::uintptr_t vstart, vend;
    errc expected;
  };
  constexpr std::size_t kMaxSize = std::numeric_limits<std::size_t>::max();
  const Case cases[] = {
      {"size 0", 0, 1, at(0), at(32), errc::zero_size},
      {"size 0 with a bad align too", 0, 3, at(0), at(32), errc::zero_size},
      {"align 0", kPage, 0, at(0), at(32), errc::bad_alignment},
      {"align 3", kPage, 3, at(0), at(32), errc::bad_alignment},
      {"align page + 1", kPage, kPage + 1, at(0), at(32), errc::bad_alignment},
      {"align 3 pages", kPage, 3 * kPage, at(0), at(32), errc::bad_alignment},
      {"align all ones", kPage, kMaxSize, at(0), at(32), errc::bad_alignment},
      {"vstart == vend", kPage, 1, at(8), at(8), errc::bad_range},
      {"vstart > vend", kPage, 1, at(9), at(8), errc::bad_range},
      {"vstart below the space", kPage, 1, at(0) - kPage, at(8), errc::bad_range},
      {"vend above the space", kPage, 1, at(8), at(33), errc::bad_range},
      {"range around the space", kPage, 1, 0, kMaxAddress, errc::bad_range},
      {"range wholly above the space", kPage, 1, at(40), at(48), errc::bad_range},
      {"size SIZE_MAX", kMaxSize, 1, at(0), at(32), errc::size_overflow},
      {"size rounds past SIZE_MAX", kMaxSize - kPage + 2, 1, at(0), at(32), errc::size_overflow},
  };
  for (const Case& c : cases) {
    const std::string before = snapshot(*space_);
    const auto result = c.vstart == at(0) && c.vend == at(32)
                            ? space_->alloc(c.size, c.align)
                            : space_->alloc(c.size, c.align, c.vstart, c.vend);
    EXPECT_TRUE(IsError(result, c.expected, std::errc::invalid_argument)) << c.what;
    EXPECT_EQ(snapshot(*space_), before) << c.what;
  }
  // The explicit-range overload checks the same things.
  const std::string before = snapshot(*space_);
  EXPECT_TRUE(IsError(space_->alloc(0, 1, at(0), at(32)), errc::zero_size,
                      std::errc::invalid_argument));
  EXPECT_TRUE(IsError(space_->alloc(kPage, 6, at(0), at(32)), errc::bad_alignment,
                      std::errc::invalid_argument));
  EXPECT_TRUE(IsError(space_->alloc(kMaxSize, 1, at(0), at(32)), errc::size_overflow,
                      std::errc::invalid_argument));
  EXPECT_EQ(snapshot(*space_), before);
  EXPECT_TRUE(purges_.calls().empty());
}

TEST_F(VaSpaceTest, AllocLargerThanTheRangeFailsWithoutPurging) {
  make(32);
  fill(0, 2);
  ASSERT_FALSE(space_->free_lazy(at(0)));
  const std::string before = snapshot(*space_);
  constexpr std::size_t kMaxSize = std::numeric_limits<std::size_t>::max();
  // Rounds to kMaxSize - kPage + 1 without overflowing: too large, not invalid.
  EXPECT_TRUE(IsError(space_->alloc(kMaxSize - kPage + 1, 1), errc::no_space,
                      std::errc::not_enough_memory));
  EXPECT_TRUE(IsError(space_->alloc(32 * kPage + 1, 1), errc::no_space,
                      std::errc::not_enough_memory));
  EXPECT_TRUE(IsError(space_->alloc(4 * kPage, 1, at(0), at(3)), errc::no_space,
                      std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*space_), before);
  EXPECT_TRUE(purges_.calls().empty());
}

TEST_F(VaSpaceTest, AllocFailsWhenFullAndChangesNothing) {
  make(8);
  fill(0, 8);
  const std::string before = snapshot(*space_);
  EXPECT_TRUE(IsError(space_->alloc(kPage, 1), errc::no_space, std::errc::not_enough_memory));
  EXPECT_TRUE(IsError(space_->alloc(kPage, 1, at(2), at(5)), errc::no_space,
                      std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*space_), before);
  EXPECT_TRUE(purges_.calls().empty());
}

TEST_F(VaSpaceTest, AllocPurgesLazyAreasAndRetriesWhenNothingFits) {
  make(8);
  fill(0, 8);
  ASSERT_FALSE(space_->free_lazy(at(5)));
  ASSERT_FALSE(space_->free_lazy(at(6)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(5)));
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(5), at(7)}}}));
  EXPECT_EQ(space_->find(at(6)), (Area{at(5), at(7)}));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceTest, AllocThatFailsAfterThePurgeKeepsThePurgeDone) {
  make(8);
  fill(0, 8);
  ASSERT_FALSE(space_->free_lazy(at(2)));
  ASSERT_FALSE(space_->free_lazy(at(5)));
  EXPECT_TRUE(IsError(space_->alloc(2 * kPage, 1), errc::no_space, std::errc::not_enough_memory));
  // One purge, the two lazy ranges unmerged (a live area lies between them).
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(2), at(3)}, {at(5), at(6)}}}));
  for (const AreaInfo& area : list_areas(*space_)) EXPECT_FALSE(area.lazy) << hex(area.start);
  EXPECT_EQ(space_->info(), (VmallocInfo{8 * kPage, 6 * kPage, kPage}));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(2)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(5)));
  EXPECT_TRUE(purges_.calls().empty());
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceTest, AllocDoesNotPurgeWhileAFitExists) {
  make(8);
  fill(0, 2);
  ASSERT_FALSE(space_->free_lazy(at(0)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(2)));
  EXPECT_TRUE(purges_.calls().empty());
  const auto areas = list_areas(*space_);
  ASSERT_EQ(areas.size(), 3u);
  EXPECT_TRUE(areas[0].lazy);
}

/*** free() and free_lazy() ***/

TEST_F(VaSpaceTest, FreeMakesTheRangeReusableAtOnce) {
  make(8);
  fill(0, 3);
  EXPECT_FALSE(space_->free(at(1)));
  EXPECT_EQ(space_->find(at(1)), std::nullopt);
  EXPECT_EQ(space_->info(), (VmallocInfo{8 * kPage, 2 * kPage, 5 * kPage}));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(1)));
  EXPECT_TRUE(purges_.calls().empty());
}

TEST_F(VaSpaceTest, FreeAndFreeLazyRejectAnythingButALiveAreaStart) {
  make(16);
  fill(0, 3, 2);  // [0,2) [2,4) [4,6)
  ASSERT_FALSE(space_->free(at(2)));
  ASSERT_FALSE(space_->free_lazy(at(4)));
  const std::pair<const char*, std::uintptr_t> cases[] = {
      {"inner address", at(1) + 100},
      {"inner, page aligned", at(0) + kPage},
      {"one past the start", at(0) + 1},
      {"end of an area", at(6)},
      {"an area freed already", at(2)},
      {"a lazily freed area", at(4)},
      {"inside a lazily freed area", at(5)},
      {"free space", at(10)},
      {"below the space", at(0) - kPage},
      {"the space's end", at(16)},
      {"zero", 0},
      {"the highest address", kMaxAddress},
  };
  for (auto [what, address] : cases) {
    const std::string before = snapshot(*space_);
    EXPECT_TRUE(IsError(space_->free(address), errc::not_an_area, std::errc::invalid_argument))
        << "free: " << what;
    EXPECT_EQ(snapshot(*space_), before) << "free: " << what;
    EXPECT_TRUE(IsError(space_->free_lazy(address), errc::not_an_area,
                        std::errc::invalid_argument))
        << "free_lazy: " << what;
    EXPECT_EQ(snapshot(*space_), before) << "free_lazy: " << what;
  }
  EXPECT_TRUE(purges_.calls().empty());
  // A second free after free_lazy is rejected too.
  EXPECT_FALSE(space_->free_lazy(at(0)));
  EXPECT_TRUE(IsError(space_->free(at(0)), errc::not_an_area, std::errc::invalid_argument));
}

TEST_F(VaSpaceTest, FreeLazyKeepsTheRangeUntilPurge) {
  make(8);
  fill(0, 3);
  EXPECT_FALSE(space_->free_lazy(at(1)));
  EXPECT_EQ(space_->find(at(1)), std::nullopt);
  // Counted as free by info, hidden from vmallocinfo, listed as lazy by for_each_area.
  EXPECT_EQ(space_->info(), (VmallocInfo{8 * kPage, 2 * kPage, 5 * kPage}));
  EXPECT_TRUE(VmallocinfoMatches(space_->vmallocinfo(),
                                 {"0x0000000010000000-0x0000000010001000    4096",
                                  "0x0000000010002000-0x0000000010003000    4096"}));
  const auto areas = list_areas(*space_);
  ASSERT_EQ(areas.size(), 3u);
  EXPECT_TRUE(areas[1].lazy && areas[1].start == at(1) && areas[1].end == at(2));
  EXPECT_FALSE(areas[0].lazy || areas[2].lazy);
  // Not reusable: the lowest fit now lies above it.
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(3)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1, at(1), at(8)), at(4)));
  EXPECT_TRUE(purges_.calls().empty());
  space_->purge();
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(1), at(2)}}}));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(1)));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceTest, FreeLazyPurgesByItselfOnceLazyPagesExceedTheLimit) {
  make(32, /*lazy_max_pages=*/4);
  EXPECT_EQ(space_->lazy_max_pages(), 4u);
  fill(0, 6);  // pages 0..5
  ASSERT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(6)));
  ASSERT_FALSE(space_->free_lazy(at(0)));
  ASSERT_FALSE(space_->free_lazy(at(6)));  // 3 lazy pages
  ASSERT_FALSE(space_->free_lazy(at(2)));  // 4: at the limit, not past it
  EXPECT_TRUE(purges_.calls().empty());
  EXPECT_EQ(list_areas(*space_).size(), 7u);
  ASSERT_FALSE(space_->free_lazy(at(3)));  // 5 > 4: purges everything, this one included
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{
                                {{at(0), at(1)}, {at(2), at(4)}, {at(6), at(8)}}}));
  const auto areas = list_areas(*space_);
  ASSERT_EQ(areas.size(), 3u);
  for (const AreaInfo& area : areas) EXPECT_FALSE(area.lazy);
  // The count starts again from zero.
  ASSERT_FALSE(space_->free_lazy(at(1)));
  ASSERT_FALSE(space_->free_lazy(at(4)));
  EXPECT_TRUE(purges_.calls().empty());
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(0)));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceTest, LazyAreaLargerThanTheLimitPurgesAtOnce) {
  make(32, /*lazy_max_pages=*/4);
  ASSERT_TRUE(AllocatedAt(space_->alloc(5 * kPage, 1), at(0)));
  ASSERT_FALSE(space_->free_lazy(at(0)));
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(0), at(5)}}}));
  EXPECT_TRUE(list_areas(*space_).empty());
}

/*** purge() and on_purge ***/

TEST_F(VaSpaceTest, PurgeHandsOnPurgeAdjacentRangesMerged) {
  make(16);
  fill(0, 8);  // pages 0..7, adjacent
  // Lazy 0, 1, 3, 4 and 6; 2 and 7 stay live; 5 is freed at once, so the
  // lazy ranges either side of it touch free space, not each other.
  for (std::size_t page : {0, 1, 3, 6}) ASSERT_FALSE(space_->free_lazy(at(page)));
  ASSERT_FALSE(space_->free(at(5)));
  ASSERT_FALSE(space_->free_lazy(at(4)));  // freed out of order, still merged with 3
  space_->purge();
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{
                                {{at(0), at(2)}, {at(3), at(5)}, {at(6), at(7)}}}));
  // Live [2,3) and [7,8): gaps of 2, 4 and 8 pages.
  EXPECT_EQ(space_->info(), (VmallocInfo{16 * kPage, 2 * kPage, 8 * kPage}));
  // Everything purged is allocatable again, lowest first.
  for (std::size_t page : {0, 1, 3, 4, 5, 6}) EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(page)));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceTest, PurgeWithNothingLazyDoesNotCallOnPurge) {
  make(8);
  space_->purge();
  fill(0, 2);
  ASSERT_FALSE(space_->free(at(0)));
  space_->purge();
  EXPECT_TRUE(purges_.calls().empty());
  ASSERT_FALSE(space_->free_lazy(at(1)));
  space_->purge();
  space_->purge();
  EXPECT_EQ(purges_.take().size(), 1u);
}

TEST(VaSpaceOnPurge, RangesStayUnusableUntilOnPurgeReturns) {
  // The space is full but for one lazy page. A purge in another thread is
  // held inside on_purge; an alloc that needs that page must not get it
  // before the callback has returned.
  std::atomic<int> clock{0};
  std::atomic<int> callback_returned_at{-1};
  std::atomic<bool> callback_entered{false};
  VaSpaceOptions options;
  options.start = kBase;
  options.end = at(4);
  options.lazy_max_pages = kNoAutoPurge;
  options.on_purge = [&](std::span<const Area>) {
    callback_entered.store(true, std::memory_order_release);
    std::this_thread::sleep_for(150ms);
    callback_returned_at.store(clock.fetch_add(1, std::memory_order_acq_rel),
                               std::memory_order_release);
  };
  auto space = create_space(options);
  for (std::size_t i = 0; i < 4; ++i) ASSERT_TRUE(AllocatedAt(space->alloc(kPage, 1), at(i)));
  ASSERT_FALSE(space->free_lazy(at(2)));
  std::thread purger([&] { space->purge(); });
  while (!callback_entered.load(std::memory_order_acquire)) std::this_thread::yield();
  const auto reused = space->alloc(kPage, 1);
  const int reused_at = clock.fetch_add(1, std::memory_order_acq_rel);
  purger.join();
  EXPECT_TRUE(AllocatedAt(reused, at(2)));
  EXPECT_GT(reused_at, callback_returned_at.load(std::memory_order_acquire));
  EXPECT_EQ(space->check_invariants(), "");
}

TEST(VaSpaceOnPurge, OnPurgeRunsWithoutTheWritersLock) {
  // Inside the callback, calls that take the writers' lock must not deadlock,
  // and the lazy ranges still count as free space.
  std::unique_ptr<VaSpace> space;
  std::optional<VmallocInfo> seen_inside;
  std::string invariants_inside = "not called";
  VaSpaceOptions options;
  options.start = kBase;
  options.end = at(8);
  options.lazy_max_pages = kNoAutoPurge;
  options.on_purge = [&](std::span<const Area>) {
    seen_inside = space->info(InfoMode::locked);
    invariants_inside = space->check_invariants();
  };
  space = create_space(options);
  for (std::size_t i = 0; i < 4; ++i) ASSERT_TRUE(AllocatedAt(space->alloc(kPage, 1), at(i)));
  ASSERT_FALSE(space->free_lazy(at(1)));
  const VmallocInfo before = space->info(InfoMode::locked);
  auto purged = std::async(std::launch::async, [&] { space->purge(); });
  if (purged.wait_for(10s) != std::future_status::ready) {
    std::fprintf(stderr, "FATAL: purge() deadlocked calling back into the space from on_purge\n");
    std::abort();
  }
  ASSERT_TRUE(seen_inside.has_value());
  EXPECT_EQ(*seen_inside, before);
  EXPECT_EQ(invariants_inside, "");
}

/*** free_lazy_reusable() and reuse_lazy() ***/

// The areas of VaSpaceTest's space, written out: "[0x..., 0x...)" per line,
// " lazy" after a lazily freed one.
std::string areas_text(std::initializer_list<std::tuple<std::size_t, std::size_t, bool>> areas) {
  std::vector<AreaInfo> list;
  for (auto [first, last, lazy] : areas) list.push_back({at(first), at(last), lazy});
  return describe(list);
}

class VaSpaceReuseTest : public VaSpaceTest {
 protected:
  // Places a live area on pages [first, last) exactly.
  void place(std::size_t first, std::size_t last) {
    ASSERT_TRUE(AllocatedAt(space_->alloc((last - first) * kPage, 1, at(first), at(last)), at(first)));
  }
  void expect_modes_agree(const VmallocInfo& expected, const char* when) {
    for (InfoMode mode : kAllInfoModes)
      EXPECT_EQ(space_->info(mode), expected) << when << ", " << name(mode) << ": "
                                              << describe(space_->info(mode));
  }
};

TEST_F(VaSpaceReuseTest, ExactFitMakesTheLazyAreaLiveAgain) {
  make(16);
  fill(0, 3, 2);  // [0,2) [2,4) [4,6)
  ASSERT_FALSE(space_->free_lazy_reusable(at(2)));
  EXPECT_EQ(space_->find(at(2)), std::nullopt);
  EXPECT_EQ(describe(list_areas(*space_)), areas_text({{0, 2, false}, {2, 4, true}, {4, 6, false}}));
  expect_modes_agree({16 * kPage, 4 * kPage, 10 * kPage}, "lazily freed");
  const VaSpaceStats before = space_->stats();

  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(2), at(4)}));
  EXPECT_EQ(space_->find(at(2)), (Area{at(2), at(4)}));
  EXPECT_EQ(space_->find(at(4) - 1), (Area{at(2), at(4)}));
  EXPECT_EQ(describe(list_areas(*space_)), areas_text({{0, 2, false}, {2, 4, false}, {4, 6, false}}));
  expect_modes_agree({16 * kPage, 6 * kPage, 10 * kPage}, "reused");
  EXPECT_TRUE(VmallocinfoMatches(space_->vmallocinfo(),
                                 {"0x0000000010000000-0x0000000010002000    8192",
                                  "0x0000000010002000-0x0000000010004000    8192",
                                  "0x0000000010004000-0x0000000010006000    8192"}));
  const VaSpaceStats after = space_->stats();
  EXPECT_EQ(after.lazy_reuses, before.lazy_reuses + 1);
  EXPECT_EQ(after.allocs, before.allocs) << "a reuse is not an alloc";
  EXPECT_EQ(after.failed_allocs, before.failed_allocs);
  EXPECT_EQ(space_->check_invariants(), "");
  // Nothing lazy is left: a purge has nothing to hand on_purge.
  space_->purge();
  EXPECT_TRUE(purges_.calls().empty());
  // The reused area is an ordinary live area: it can be freed again.
  EXPECT_FALSE(space_->free(at(2)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(2)));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, LargerAreaIsSplitAndTheRestStaysLazyAndReusable) {
  make(12);
  place(0, 8);
  place(8, 9);
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));
  // 3 pages less 100 bytes round up to 3 pages; the whole area is returned.
  EXPECT_TRUE(Reused(space_->reuse_lazy(3 * kPage - 100), Area{at(0), at(8)}));
  EXPECT_EQ(space_->find(at(0)), (Area{at(0), at(3)}));
  EXPECT_EQ(space_->find(at(3) - 1), (Area{at(0), at(3)}));
  EXPECT_EQ(space_->find(at(3)), std::nullopt) << "the rest is still lazily freed";
  EXPECT_EQ(describe(list_areas(*space_)), areas_text({{0, 3, false}, {3, 8, true}, {8, 9, false}}));
  // The lazy rest counts as free: gaps of 5 (the rest) and 3 (the end).
  expect_modes_agree({12 * kPage, 4 * kPage, 5 * kPage}, "after the split");
  EXPECT_EQ(space_->check_invariants(), "");

  // The rest is an area of its own: split again, then taken exactly.
  EXPECT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(3), at(8)}));
  EXPECT_EQ(describe(list_areas(*space_)),
            areas_text({{0, 3, false}, {3, 4, false}, {4, 8, true}, {8, 9, false}}));
  EXPECT_TRUE(Reused(space_->reuse_lazy(4 * kPage), Area{at(4), at(8)}));
  EXPECT_EQ(describe(list_areas(*space_)),
            areas_text({{0, 3, false}, {3, 4, false}, {4, 8, false}, {8, 9, false}}));
  expect_modes_agree({12 * kPage, 9 * kPage, 3 * kPage}, "all reused");
  EXPECT_EQ(space_->stats().lazy_reuses, 3u);
  EXPECT_TRUE(IsError(space_->reuse_lazy(kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_TRUE(purges_.calls().empty());
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, PicksTheSmallestFitThenTheMostRecentlyFreed) {
  make(32);
  // A [0,4), B [5,7), C [8,10), D [11,14), with live single pages between.
  place(0, 4); place(4, 5); place(5, 7); place(7, 8); place(8, 10); place(10, 11);
  place(11, 14); place(14, 15);
  for (std::size_t page : {8, 0, 5, 11}) ASSERT_FALSE(space_->free_lazy_reusable(at(page)));
  // Two pages: B and C fit exactly; B was freed after C.
  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(5), at(7)}));
  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(8), at(10)}));
  // Then D (3 pages) is the smallest that fits, not A (4 pages).
  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(11), at(14)}));
  // One page: D's one-page rest is smaller than A.
  EXPECT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(13), at(14)}));
  EXPECT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(0), at(4)}));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, TheRestOfASplitCountsAsFreedAtTheSplit) {
  make(16);
  place(0, 3); place(3, 4); place(4, 5); place(5, 6);
  ASSERT_FALSE(space_->free_lazy_reusable(at(4)));  // Y: one page, freed first
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));  // X: three pages
  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(0), at(3)}));  // X, rest [2,3)
  // Two one-page areas now: Y, freed before the split, and X's rest, made by it.
  EXPECT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(2), at(3)}));
  EXPECT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(4), at(5)}));
  EXPECT_TRUE(IsError(space_->reuse_lazy(kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, AreasFreedWithPlainFreeLazyAreNeverReused) {
  make(16);
  place(0, 4); place(4, 5); place(5, 6);
  ASSERT_FALSE(space_->free_lazy(at(0)));
  ASSERT_FALSE(space_->free(at(4)));  // freed at once: free space, not a lazy area
  const std::string before = snapshot(*space_);
  EXPECT_TRUE(IsError(space_->reuse_lazy(kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_TRUE(IsError(space_->reuse_lazy(4 * kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_EQ(snapshot(*space_), before);
  // With a reusable area beside it, only that one is taken, however it fits.
  ASSERT_FALSE(space_->free_lazy_reusable(at(5)));
  EXPECT_TRUE(IsError(space_->reuse_lazy(2 * kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(5), at(6)}));
  EXPECT_EQ(describe(list_areas(*space_)), areas_text({{0, 4, true}, {5, 6, false}}));
  space_->purge();
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(0), at(4)}}}));
  EXPECT_EQ(space_->stats().lazy_reuses, 1u);
}

TEST_F(VaSpaceReuseTest, ReuseErrorsChangeNothingAndNeverPurge) {
  make(32);
  place(0, 4); place(4, 6); place(6, 16);
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));  // reusable, 4 pages
  ASSERT_FALSE(space_->free_lazy(at(6)));           // lazy, 10 pages, not reusable
  constexpr std::size_t kMaxSize = std::numeric_limits<std::size_t>::max();
  const struct {
    const char* what;
    std::size_t size;
    errc code;
    std::errc generic;
  } cases[] = {
      {"size 0", 0, errc::zero_size, std::errc::invalid_argument},
      {"size SIZE_MAX", kMaxSize, errc::size_overflow, std::errc::invalid_argument},
      {"size rounds past SIZE_MAX", kMaxSize - kPage + 2, errc::size_overflow,
       std::errc::invalid_argument},
      {"rounds to the top page, fits nothing", kMaxSize - kPage + 1, errc::nothing_reusable,
       std::errc::not_enough_memory},
      {"one page more than the reusable area", 4 * kPage + 1, errc::nothing_reusable,
       std::errc::not_enough_memory},
      {"fits only the plain lazy area", 10 * kPage, errc::nothing_reusable, std::errc::not_enough_memory},
      {"larger than the space", 33 * kPage, errc::nothing_reusable, std::errc::not_enough_memory},
  };
  for (const auto& c : cases) {
    const std::string before = snapshot(*space_);
    const VaSpaceStats stats_before = space_->stats();
    EXPECT_TRUE(IsError(space_->reuse_lazy(c.size), c.code, c.generic)) << c.what;
    EXPECT_EQ(snapshot(*space_), before) << c.what;
    EXPECT_EQ(space_->stats().failed_allocs, stats_before.failed_allocs) << c.what;
    EXPECT_EQ(space_->stats().lazy_reuses, stats_before.lazy_reuses) << c.what;
  }
  EXPECT_TRUE(purges_.calls().empty()) << "reuse_lazy never purges";
  // The reusable area is still there, whole.
  EXPECT_TRUE(Reused(space_->reuse_lazy(4 * kPage), Area{at(0), at(4)}));
}

TEST_F(VaSpaceReuseTest, FreeLazyReusableRejectsAnythingButALiveAreaStart) {
  make(16);
  place(0, 2); place(2, 4); place(4, 8); place(8, 9);
  ASSERT_FALSE(space_->free(at(2)));
  ASSERT_FALSE(space_->free_lazy_reusable(at(4)));
  ASSERT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(4), at(8)}));  // [4,5) live, [5,8) lazy
  ASSERT_FALSE(space_->free_lazy(at(8)));
  const std::pair<const char*, std::uintptr_t> cases[] = {
      {"inner address", at(1)},
      {"one past the start", at(0) + 1},
      {"an area freed already", at(2)},
      {"the lazy rest of a split", at(5)},
      {"inside the lazy rest", at(6)},
      {"inside a reused area", at(4) + 1},
      {"a plain lazily freed area", at(8)},
      {"free space", at(12)},
      {"the space's end", at(16)},
      {"zero", 0},
  };
  for (auto [what, address] : cases) {
    const std::string before = snapshot(*space_);
    EXPECT_TRUE(IsError(space_->free_lazy_reusable(address), errc::not_an_area,
                        std::errc::invalid_argument))
        << what;
    EXPECT_EQ(snapshot(*space_), before) << what;
  }
  // The reused front and the rest of the split behave like any live and lazy areas.
  EXPECT_FALSE(space_->free_lazy_reusable(at(4)));
  EXPECT_TRUE(IsError(space_->free_lazy_reusable(at(4)), errc::not_an_area, std::errc::invalid_argument));
  EXPECT_TRUE(IsError(space_->free(at(5)), errc::not_an_area, std::errc::invalid_argument));
  EXPECT_EQ(space_->stats().lazy_frees, 3u) << "free_lazy_reusable counts as a lazy free";
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, ReusedPagesNoLongerCountTowardsLazyMaxPages) {
  make(32, /*lazy_max_pages=*/6);
  place(0, 6); place(6, 7); place(7, 8); place(8, 9);
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));  // 6 lazy pages: at the limit
  EXPECT_TRUE(purges_.calls().empty());
  ASSERT_TRUE(Reused(space_->reuse_lazy(4 * kPage), Area{at(0), at(6)}));  // 2 left
  ASSERT_FALSE(space_->free_lazy(at(6)));
  ASSERT_FALSE(space_->free_lazy_reusable(at(7)));
  ASSERT_FALSE(space_->free_lazy(at(8)));  // 5 lazy pages
  EXPECT_TRUE(purges_.calls().empty()) << "4 of the 6 pages were reused, so only 5 are lazy";
  // Past the limit: the purge takes the rest of the split too, merged.
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));  // 9 > 6
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(0), at(9)}}}));
  EXPECT_TRUE(list_areas(*space_).empty());
  EXPECT_TRUE(IsError(space_->reuse_lazy(kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, FreeLazyReusablePurgesByItselfPastTheLimitAndNothingIsReusableAfter) {
  make(32, /*lazy_max_pages=*/4);
  place(0, 3); place(3, 5); place(5, 6);
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));  // 3
  EXPECT_TRUE(purges_.calls().empty());
  ASSERT_FALSE(space_->free_lazy_reusable(at(3)));  // 5 > 4: purged at once, this one included
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(0), at(5)}}}));
  EXPECT_TRUE(IsError(space_->reuse_lazy(kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(0)));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, NothingIsReusableOnceAPurgeHasTakenIt) {
  // Explicit purge.
  make(16);
  place(0, 2); place(2, 3);
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));
  space_->purge();
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(0), at(2)}}}));
  EXPECT_TRUE(IsError(space_->reuse_lazy(2 * kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_TRUE(IsError(space_->reuse_lazy(kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  EXPECT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(0))) << "free space now, for alloc";
  EXPECT_EQ(space_->stats().lazy_reuses, 0u);

  // The purge an alloc starts before its retry.
  make(4);
  fill(0, 4);
  ASSERT_FALSE(space_->free_lazy_reusable(at(1)));
  ASSERT_FALSE(space_->free_lazy_reusable(at(2)));
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(1)));
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(1), at(3)}}}));
  EXPECT_TRUE(IsError(space_->reuse_lazy(kPage), errc::nothing_reusable, std::errc::not_enough_memory))
      << "page 2 was purged and is free, not reusable";
  EXPECT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(2)));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, OnPurgeNeverReceivesReusedRanges) {
  make(16);
  // A [0,1), B [2,3), C [4,9), with live pages between so nothing joins.
  place(0, 1); place(1, 2); place(2, 3); place(3, 4); place(4, 9); place(9, 10);
  for (std::size_t page : {0, 2, 4}) ASSERT_FALSE(space_->free_lazy_reusable(at(page)));
  ASSERT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(2), at(3)}));      // B, the latest page
  ASSERT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(4), at(9)}));  // [4,6) live
  space_->purge();
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(0), at(1)}, {at(6), at(9)}}}));
  EXPECT_EQ(space_->stats().purged_areas, 2u);
  EXPECT_EQ(describe(list_areas(*space_)),
            areas_text({{1, 2, false}, {2, 3, false}, {3, 4, false}, {4, 6, false}, {9, 10, false}}));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, TouchingReusableAreasJoinAsTheyAreFreed) {
  make(16);
  place(0, 2); place(2, 3); place(3, 6); place(6, 7); place(7, 8); place(8, 9);
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));  // [0,2)
  ASSERT_FALSE(space_->free_lazy_reusable(at(3)));  // [3,6): [2,3) between is live
  EXPECT_EQ(describe(list_areas(*space_)),
            areas_text({{0, 2, true}, {2, 3, false}, {3, 6, true}, {6, 7, false}, {7, 8, false}, {8, 9, false}}));
  ASSERT_FALSE(space_->free_lazy_reusable(at(2)));  // touches both: one area [0,6)
  EXPECT_EQ(describe(list_areas(*space_)),
            areas_text({{0, 6, true}, {6, 7, false}, {7, 8, false}, {8, 9, false}}));
  // A plain lazily freed neighbour is never joined.
  ASSERT_FALSE(space_->free_lazy(at(7)));
  ASSERT_FALSE(space_->free_lazy_reusable(at(8)));
  EXPECT_EQ(describe(list_areas(*space_)),
            areas_text({{0, 6, true}, {6, 7, false}, {7, 8, true}, {8, 9, true}}));
  expect_modes_agree({16 * kPage, kPage, 9 * kPage}, "joined");
  EXPECT_EQ(space_->check_invariants(), "");
  // The joined area is taken whole, and says it was joined; a piece cut
  // from it stays joined; an area freed alone is not.
  EXPECT_TRUE(Reused(space_->reuse_lazy(6 * kPage), Area{at(0), at(6)}, /*joined=*/true));
  EXPECT_TRUE(Reused(space_->reuse_lazy(kPage), Area{at(8), at(9)}, /*joined=*/false));
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));
  ASSERT_FALSE(space_->free_lazy_reusable(at(6)));  // joins [0,6) before it
  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(0), at(7)}, /*joined=*/true));
  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(2), at(7)}, /*joined=*/true));
  // A purge hands on_purge the joined area as one range and counts it once.
  space_->purge();
  EXPECT_EQ(purges_.take(), (std::vector<std::vector<Area>>{{{at(4), at(8)}}}));
  EXPECT_EQ(space_->stats().purged_areas, 2u) << "[4,7) and the plain [7,8)";
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, AJoinedAreaIsTheMostRecentlyMadeReusable) {
  make(16);
  place(0, 2); place(2, 3); place(3, 4); place(4, 5); place(5, 6);
  ASSERT_FALSE(space_->free_lazy_reusable(at(3)));  // [3,4): one page
  ASSERT_FALSE(space_->free_lazy_reusable(at(0)));  // [0,2): two pages, freed before the join
  ASSERT_FALSE(space_->free_lazy_reusable(at(4)));  // joins [3,4): [3,5), two pages, made now
  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(3), at(5)}, /*joined=*/true));
  EXPECT_TRUE(Reused(space_->reuse_lazy(2 * kPage), Area{at(0), at(2)}, /*joined=*/false));
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST(VaSpaceReuseOnPurge, ReuseFromInsideOnPurgeCannotTakeTheRangesBeingPurged) {
  // on_purge runs without the writers' lock, so a writer may run meanwhile;
  // here it runs inside the callback, deterministically. The batch is
  // detached: no reuse may hand it out. An area freed after the purge
  // began is not in the batch and is reusable.
  std::unique_ptr<VaSpace> space;
  std::vector<std::vector<Area>> seen;
  std::optional<std::expected<ReusedArea, std::error_code>> inside_batch, outside_batch;
  VaSpaceOptions options;
  options.start = kBase;
  options.end = at(16);
  options.lazy_max_pages = kNoAutoPurge;
  options.on_purge = [&](std::span<const Area> merged) {
    seen.emplace_back(merged.begin(), merged.end());
    if (seen.size() > 1) return;
    inside_batch = space->reuse_lazy(kPage);
    if (space->free_lazy_reusable(at(5))) return;
    outside_batch = space->reuse_lazy(kPage);
  };
  space = create_space(options);
  for (std::size_t i = 0; i < 6; ++i) ASSERT_TRUE(AllocatedAt(space->alloc(kPage, 1), at(i)));
  ASSERT_FALSE(space->free_lazy_reusable(at(1)));
  ASSERT_FALSE(space->free_lazy_reusable(at(2)));
  auto purged = std::async(std::launch::async, [&] { space->purge(); });
  if (purged.wait_for(10s) != std::future_status::ready) {
    std::fprintf(stderr, "FATAL: purge() deadlocked when on_purge called reuse_lazy/free_lazy_reusable\n");
    std::abort();
  }
  purged.get();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], (std::vector<Area>{{at(1), at(3)}}));
  ASSERT_TRUE(inside_batch.has_value());
  EXPECT_TRUE(IsError(*inside_batch, errc::nothing_reusable, std::errc::not_enough_memory));
  ASSERT_TRUE(outside_batch.has_value()) << "free_lazy_reusable inside on_purge failed";
  EXPECT_TRUE(Reused(*outside_batch, Area{at(5), at(6)}));
  EXPECT_EQ(space->find(at(5)), (Area{at(5), at(6)}));
  EXPECT_EQ(space->find(at(1)), std::nullopt);
  EXPECT_TRUE(AllocatedAt(space->alloc(2 * kPage, 1), at(1))) << "the batch is free after the purge";
  EXPECT_EQ(space->check_invariants(), "");
}

TEST(VaSpaceReuseOnPurge, AThrowingOnPurgeLeavesTheBatchLazyAndNotReusable) {
  int calls = 0;
  std::vector<std::vector<Area>> seen;
  VaSpaceOptions options;
  options.start = kBase;
  options.end = at(16);
  options.lazy_max_pages = kNoAutoPurge;
  options.on_purge = [&](std::span<const Area> merged) {
    seen.emplace_back(merged.begin(), merged.end());
    if (++calls == 1) throw std::runtime_error("on_purge failed");
  };
  auto space = create_space(options);
  for (std::size_t i = 0; i < 4; ++i) ASSERT_TRUE(AllocatedAt(space->alloc(kPage, 1), at(i)));
  ASSERT_FALSE(space->free_lazy_reusable(at(1)));
  ASSERT_FALSE(space->free_lazy(at(3)));
  EXPECT_THROW(space->purge(), std::runtime_error);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], (std::vector<Area>{{at(1), at(2)}, {at(3), at(4)}}));
  // Still lazily freed: listed as lazy, not found, counted as free...
  std::vector<AreaInfo> areas = list_areas(*space);
  ASSERT_EQ(areas.size(), 4u);
  EXPECT_TRUE(areas[1].lazy && areas[3].lazy);
  EXPECT_EQ(space->find(at(1)), std::nullopt);
  for (InfoMode mode : kAllInfoModes)
    EXPECT_EQ(space->info(mode), (VmallocInfo{16 * kPage, 2 * kPage, 13 * kPage})) << name(mode);
  EXPECT_EQ(space->check_invariants(), "");
  // ...but no longer reusable, while an area freed afterwards is.
  EXPECT_TRUE(IsError(space->reuse_lazy(kPage), errc::nothing_reusable, std::errc::not_enough_memory));
  ASSERT_FALSE(space->free_lazy_reusable(at(2)));
  EXPECT_TRUE(Reused(space->reuse_lazy(kPage), Area{at(2), at(3)}));
  // The next purge gives the batch back.
  space->purge();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1], (std::vector<Area>{{at(1), at(2)}, {at(3), at(4)}}));
  EXPECT_TRUE(AllocatedAt(space->alloc(kPage, 1), at(1)));
  EXPECT_EQ(space->check_invariants(), "");
}

TEST_F(VaSpaceReuseTest, AllInfoModesAgreeAfterEveryReuse) {
  make(64, /*lazy_max_pages=*/12);
  std::mt19937_64 random(4);
  std::vector<std::uintptr_t> live;
  std::size_t reuses = 0, splits = 0, joins = 0;
  for (int step = 0; step < 400; ++step) {
    const unsigned kind = random() % 10;
    if (kind < 4) {
      if (auto area = space_->alloc((1 + random() % 4) * kPage, 1)) live.push_back(*area);
    } else if (kind < 7 && !live.empty()) {
      const std::size_t i = random() % live.size();
      ASSERT_FALSE(space_->free_lazy_reusable(live[i]));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      const std::size_t size = (1 + random() % 4) * kPage;
      if (auto reused = space_->reuse_lazy(size)) {
        ++reuses;
        splits += reused->was.end - reused->was.start > size;
        joins += reused->joined;
        live.push_back(reused->was.start);
        EXPECT_EQ(space_->find(reused->was.start), (Area{reused->was.start, reused->was.start + size}));
      } else {
        EXPECT_TRUE(IsError(reused.error(), errc::nothing_reusable, std::errc::not_enough_memory));
      }
    }
    const VmallocInfo locked = space_->info(InfoMode::locked);
    ASSERT_EQ(space_->info(InfoMode::rcu_walk), locked) << "step " << step;
    ASSERT_EQ(space_->info(InfoMode::counters), locked) << "step " << step;
    // And all equal the figures recomputed from the list.
    VmallocInfo recomputed{64 * kPage, 0, 0};
    std::uintptr_t previous_end = at(0);
    for (const AreaInfo& area : list_areas(*space_)) {
      if (area.lazy) continue;
      recomputed.used += area.end - area.start;
      recomputed.largest_chunk = std::max<std::size_t>(recomputed.largest_chunk, area.start - previous_end);
      previous_end = area.end;
    }
    recomputed.largest_chunk = std::max<std::size_t>(recomputed.largest_chunk, at(64) - previous_end);
    ASSERT_EQ(locked, recomputed) << "step " << step;
    ASSERT_EQ(space_->check_invariants(), "") << "step " << step;
  }
  EXPECT_GT(reuses, 20u);
  EXPECT_GT(splits, 5u);
  EXPECT_GT(joins, 5u);
  EXPECT_EQ(space_->stats().lazy_reuses, reuses);
}

/*** find() ***/

TEST_F(VaSpaceTest, FindReportsTheLiveAreaHoldingAnAddress) {
  make(16);
  ASSERT_TRUE(AllocatedAt(space_->alloc(3 * kPage, 1), at(0)));
  ASSERT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(3)));
  ASSERT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(4)));
  ASSERT_TRUE(AllocatedAt(space_->alloc(kPage, 1, at(8), at(16)), at(8)));
  ASSERT_FALSE(space_->free_lazy(at(4)));
  const Area first{at(0), at(3)};
  EXPECT_EQ(space_->find(at(0)), first);
  EXPECT_EQ(space_->find(at(0) + 1), first);
  EXPECT_EQ(space_->find(at(1) + 123), first);
  EXPECT_EQ(space_->find(at(3) - 1), first);
  EXPECT_EQ(space_->find(at(3)), (Area{at(3), at(4)}));  // adjacent area's start
  EXPECT_EQ(space_->find(at(4) - 1), (Area{at(3), at(4)}));
  EXPECT_EQ(space_->find(at(4)), std::nullopt);  // lazily freed
  EXPECT_EQ(space_->find(at(6) - 1), std::nullopt);
  EXPECT_EQ(space_->find(at(7)), std::nullopt);  // free space
  EXPECT_EQ(space_->find(at(9) - 1), (Area{at(8), at(9)}));
  EXPECT_EQ(space_->find(at(9)), std::nullopt);
  EXPECT_EQ(space_->find(at(0) - 1), std::nullopt);  // below the space
  EXPECT_EQ(space_->find(at(16)), std::nullopt);
  EXPECT_EQ(space_->find(0), std::nullopt);
  EXPECT_EQ(space_->find(kMaxAddress), std::nullopt);
}

/*** info(), meminfo(), vmallocinfo() ***/

TEST_F(VaSpaceTest, InfoOfAnEmptySpaceIsAllFreeInEveryMode) {
  make(64);
  for (InfoMode mode : kAllInfoModes)
    EXPECT_EQ(space_->info(mode), (VmallocInfo{64 * kPage, 0, 64 * kPage})) << name(mode);
}

TEST_F(VaSpaceTest, InfoMatchesHandComputedFiguresInEveryMode) {
  struct Layout {
    const char* what;
    std::vector<std::pair<std::size_t, std::size_t>> live, lazy;  // [first, last) pages
    VmallocInfo expected;                                         // in pages
  };
  const Layout layouts[] = {
      // Gaps between live areas: 1, 1, 7 (holds the lazy area), 4, 1.
      {"largest gap in the middle, across a lazy area",
       {{1, 3}, {4, 5}, {12, 14}, {18, 19}}, {{6, 9}}, {20, 6, 7}},
      {"largest gap at the start", {{8, 10}, {11, 20}}, {{2, 4}}, {20, 11, 8}},
      {"largest gap at the end", {{0, 1}, {2, 3}}, {{3, 4}, {19, 20}}, {20, 2, 17}},
      {"full", {{0, 20}}, {}, {20, 20, 0}},
      {"only lazy areas", {}, {{0, 10}, {10, 20}}, {20, 0, 20}},
  };
  for (const Layout& layout : layouts) {
    make(20);
    for (auto [first, last] : layout.live)
      ASSERT_TRUE(AllocatedAt(space_->alloc((last - first) * kPage, 1, at(first), at(last)), at(first)));
    for (auto [first, last] : layout.lazy) {
      ASSERT_TRUE(AllocatedAt(space_->alloc((last - first) * kPage, 1, at(first), at(last)), at(first)));
      ASSERT_FALSE(space_->free_lazy(at(first)));
    }
    const VmallocInfo expected{layout.expected.total * kPage, layout.expected.used * kPage,
                               layout.expected.largest_chunk * kPage};
    for (InfoMode mode : kAllInfoModes)
      EXPECT_EQ(space_->info(mode), expected) << layout.what << ", " << name(mode) << ": got "
                                              << describe(space_->info(mode));
    EXPECT_EQ(space_->info(), expected) << layout.what;
  }
}

TEST(VaSpaceInfo, InfoWithoutModeUsesTheConfiguredMode) {
  for (InfoMode mode : kAllInfoModes) {
    VaSpaceOptions options;
    options.start = kBase;
    options.end = at(16);
    options.info_mode = mode;
    auto space = create_space(options);
    ASSERT_TRUE(AllocatedAt(space->alloc(kPage, 1, at(5), at(16)), at(5)));
    EXPECT_EQ(space->info(), (VmallocInfo{16 * kPage, kPage, 10 * kPage})) << name(mode);
    EXPECT_EQ(space->info(), space->info(mode)) << name(mode);
  }
}

TEST_F(VaSpaceTest, InfoIsIdenticalInAllModesAfterEveryKindOfChange) {
  make(64, /*lazy_max_pages=*/6);
  auto expect_modes_agree = [&](const char* step) {
    const VmallocInfo locked = space_->info(InfoMode::locked);
    EXPECT_EQ(space_->info(InfoMode::rcu_walk), locked) << step;
    EXPECT_EQ(space_->info(InfoMode::counters), locked) << step;
  };
  std::vector<std::uintptr_t> areas;
  for (std::size_t i = 0; i < 12; ++i) {
    const auto area = space_->alloc((i % 3 + 1) * kPage, i % 2 ? kPage : 4 * kPage);
    ASSERT_TRUE(area.has_value()) << area.error().message();
    areas.push_back(*area);
    expect_modes_agree("alloc");
  }
  for (std::size_t i = 0; i < areas.size(); i += 3) {
    ASSERT_FALSE(space_->free(areas[i]));
    expect_modes_agree("free");
  }
  for (std::size_t i = 1; i < areas.size(); i += 3) {
    ASSERT_FALSE(space_->free_lazy(areas[i]));  // auto purges along the way
    expect_modes_agree("free_lazy");
  }
  EXPECT_FALSE(purges_.calls().empty());
  ASSERT_TRUE(space_->alloc(40 * kPage, 1).has_value());
  expect_modes_agree("big alloc");
  space_->purge();
  expect_modes_agree("purge");
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST(VaSpaceMeminfo, HasTheKernelFormatExactly) {
  VaSpaceOptions options;
  options.start = kBase;
  options.end = kBase + (std::uintptr_t{1} << 30);
  auto space = create_space(options);
  ASSERT_TRUE(AllocatedAt(space->alloc(3 * kPage, 1), kBase));
  EXPECT_EQ(space->meminfo(),
            "VmallocTotal:    1048576 kB\n"
            "VmallocUsed:          12 kB\n"
            "VmallocChunk:    1048564 kB\n");
  ASSERT_FALSE(space->free_lazy(kBase));
  EXPECT_EQ(space->meminfo(),
            "VmallocTotal:    1048576 kB\n"
            "VmallocUsed:           0 kB\n"
            "VmallocChunk:    1048576 kB\n");
}

TEST(VaSpaceMeminfo, WideFiguresAreNotTruncatedAndKilobytesRoundDown) {
  VaSpaceOptions wide;
  wide.start = kBase;
  wide.end = kBase + (std::uintptr_t{1} << 42);  // 4294967296 kB: ten digits
  EXPECT_EQ(create_space(wide)->meminfo(),
            "VmallocTotal:   4294967296 kB\n"
            "VmallocUsed:           0 kB\n"
            "VmallocChunk:   4294967296 kB\n");
  VaSpaceOptions small_pages;
  small_pages.start = 512;
  small_pages.end = 512 + 7 * 512;  // 3584 bytes
  small_pages.page_size = 512;
  auto space = create_space(small_pages);
  ASSERT_TRUE(AllocatedAt(space->alloc(1, 1), 512));
  ASSERT_TRUE(AllocatedAt(space->alloc(1, 1), 1024));
  ASSERT_TRUE(AllocatedAt(space->alloc(1, 1), 1536));
  ASSERT_FALSE(space->free(1024));
  EXPECT_EQ(space->meminfo(),  // used 1024 B, chunk 2048 B, total 3584 B
            "VmallocTotal:          3 kB\n"
            "VmallocUsed:           1 kB\n"
            "VmallocChunk:          2 kB\n");
}

TEST_F(VaSpaceTest, VmallocinfoListsLiveAreasByAddressInTheKernelFormat) {
  make(16384);
  EXPECT_EQ(space_->vmallocinfo(), "");
  ASSERT_TRUE(AllocatedAt(space_->alloc(10240 * kPage, 1, at(3), at(16384)), at(3)));  // 40 MiB
  ASSERT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(0)));
  ASSERT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(2)));
  ASSERT_TRUE(AllocatedAt(space_->alloc(kPage, 1), at(10243)));
  EXPECT_TRUE(VmallocinfoMatches(space_->vmallocinfo(),
                                 {"0x0000000010000000-0x0000000010002000    8192",
                                  "0x0000000010002000-0x0000000010003000    4096",
                                  "0x0000000010003000-0x0000000012803000 41943040",
                                  "0x0000000012803000-0x0000000012804000    4096"}));
  ASSERT_FALSE(space_->free_lazy(at(2)));
  ASSERT_FALSE(space_->free(at(10243)));
  EXPECT_TRUE(VmallocinfoMatches(space_->vmallocinfo(),
                                 {"0x0000000010000000-0x0000000010002000    8192",
                                  "0x0000000010003000-0x0000000012803000 41943040"}));
}

TEST(VaSpaceVmallocinfo, MatcherRejectsWrongText) {
  // The matcher itself must be able to fail, or the tests above prove nothing.
  const std::vector<std::string> want = {"0x0000000010000000-0x0000000010001000    4096"};
  EXPECT_TRUE(VmallocinfoMatches("0x0000000010000000-0x0000000010001000    4096\n", want));
  EXPECT_TRUE(VmallocinfoMatches("0x0000000010000000-0x0000000010001000    4096 extra\n", want));
  EXPECT_FALSE(VmallocinfoMatches("0x0000000010000000-0x0000000010001000    40960\n", want));
  EXPECT_FALSE(VmallocinfoMatches("0x0000000010000000-0x0000000010001000    4096", want));
  EXPECT_FALSE(VmallocinfoMatches("0x10000000-0x10001000 4096\n", want));
  EXPECT_FALSE(VmallocinfoMatches("", want));
  EXPECT_FALSE(VmallocinfoMatches(want[0] + "\n" + want[0] + "\n", want));
}

TEST_F(VaSpaceTest, ForEachAreaListsLiveAndLazyAreasByAddress) {
  make(16);
  fill(0, 4);
  ASSERT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1, at(10), at(16)), at(10)));
  ASSERT_FALSE(space_->free_lazy(at(1)));
  ASSERT_FALSE(space_->free(at(2)));
  EXPECT_EQ(describe(list_areas(*space_)),
            "[0x10000000, 0x10001000)\n"
            "[0x10001000, 0x10002000) lazy\n"
            "[0x10003000, 0x10004000)\n"
            "[0x1000a000, 0x1000c000)\n");
}

TEST_F(VaSpaceTest, StatsCountEveryWriterEvent) {
  make(8);
  fill(0, 8);
  ASSERT_FALSE(space_->free(at(0)));
  ASSERT_FALSE(space_->free_lazy(at(1)));
  ASSERT_FALSE(space_->free_lazy(at(2)));
  ASSERT_TRUE(AllocatedAt(space_->alloc(2 * kPage, 1), at(0)));  // purges 2 areas, retries
  ASSERT_FALSE(space_->alloc(8 * kPage, 1).has_value());        // fails, nothing to purge
  // Rejected calls count nothing.
  ASSERT_FALSE(space_->alloc(0, 1).has_value());
  ASSERT_FALSE(space_->alloc(kPage, 3).has_value());
  ASSERT_TRUE(space_->free(at(1)));
  ASSERT_TRUE(space_->free_lazy(at(0) + 1));
  const VaSpaceStats stats = space_->stats();
  EXPECT_EQ(stats.allocs, 9u);
  EXPECT_EQ(stats.frees, 1u);
  EXPECT_EQ(stats.lazy_frees, 2u);
  EXPECT_EQ(stats.purges, 1u);
  EXPECT_EQ(stats.purged_areas, 2u);
  EXPECT_EQ(stats.failed_allocs, 1u);
}

/*** threads and teardown ***/

std::size_t thread_count() {
  std::size_t count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task"))
    ++count;
  return count;
}

TEST_F(VaSpaceTest, ThreadsCallInWithoutRegisteringAndLeaveNothingBehind) {
  make(4096);
  fill(0, 16, 2);
  // Let any per-process helper (e.g. the call_rcu worker) start before counting.
  std::thread([&] {
    (void)space_->info(InfoMode::rcu_walk);
    for (int i = 0; i < 1000; ++i) {
      const auto area = space_->alloc(kPage, 1);
      ASSERT_TRUE(area.has_value());
      ASSERT_FALSE(i % 2 ? space_->free(*area) : space_->free_lazy(*area));
    }
    space_->purge();
  }).join();
  const VmallocInfo expected = space_->info(InfoMode::locked);
  const std::size_t threads_before = thread_count();
  std::atomic<int> wrong_figures{0};
  std::atomic<int> failed_writes{0};
  constexpr int kBatches = 50, kThreadsPerBatch = 20;  // 1000 short-lived threads
  for (int batch = 0; batch < kBatches; ++batch) {
    // Every fifth batch writes, so retired nodes outlive the threads that
    // retired them; the others read, and with no writer running must see
    // exactly the figures from before.
    const bool writing = batch % 5 == 4;
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreadsPerBatch; ++i)
      threads.emplace_back([&] {
        if (writing) {
          const auto area = space_->alloc(kPage, 1, at(64), at(4096));
          if (!area || space_->free(*area)) failed_writes.fetch_add(1, std::memory_order_relaxed);
        } else if (space_->info(InfoMode::rcu_walk) != expected) {
          wrong_figures.fetch_add(1, std::memory_order_relaxed);
        }
        (void)space_->vmallocinfo();
      });
    for (std::thread& thread : threads) thread.join();
  }
  EXPECT_EQ(wrong_figures.load(), 0);
  EXPECT_EQ(failed_writes.load(), 0);
  // A joined thread can linger in /proc for a moment after its futex wake.
  for (int wait = 0; wait < 200 && thread_count() > threads_before; ++wait)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(thread_count(), threads_before);
  // Grace periods still complete with 1000 dead readers behind us.
  for (int i = 0; i < 2000; ++i) {
    const auto area = space_->alloc(kPage, 1);
    ASSERT_TRUE(area.has_value());
    ASSERT_FALSE(i % 2 ? space_->free(*area) : space_->free_lazy(*area));
  }
  space_->purge();
  EXPECT_EQ(space_->info(InfoMode::rcu_walk), expected);
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST_F(VaSpaceTest, WritersProgressWhileAReaderIsStalledMidWalk) {
  // A reader parked inside for_each_area holds its RCU read-side section for
  // as long as it likes. Writers must neither wait for it nor reuse a node it
  // may still step on: when it resumes, its walk goes on over the areas as
  // they were, in order.
  make(4096);
  fill(0, 64);
  std::atomic<bool> reader_parked{false}, release_reader{false};
  std::vector<AreaInfo> seen;
  std::thread reader([&] {
    space_->for_each_area([&](const AreaInfo& area) {
      seen.push_back(area);
      if (seen.size() != 10) return;
      reader_parked.store(true, std::memory_order_release);
      while (!release_reader.load(std::memory_order_acquire)) std::this_thread::sleep_for(1ms);
    });
  });
  while (!reader_parked.load(std::memory_order_acquire)) std::this_thread::yield();
  auto writes = std::async(std::launch::async, [&] {
    for (std::size_t i = 0; i < 64; ++i) EXPECT_FALSE(space_->free(at(i)));  // the reader's too
    for (int round = 0; round < 100; ++round) {
      std::vector<std::uintptr_t> areas;
      for (int i = 0; i < 64; ++i) areas.push_back(space_->alloc(kPage, 1).value_or(0));
      for (std::size_t i = 0; i < areas.size(); ++i)
        EXPECT_FALSE(i % 2 ? space_->free(areas[i]) : space_->free_lazy(areas[i]));
      space_->purge();
    }
  });
  if (writes.wait_for(30s) != std::future_status::ready) {
    std::fprintf(stderr, "FATAL: writers blocked behind a reader parked in for_each_area\n");
    std::abort();
  }
  release_reader.store(true, std::memory_order_release);
  reader.join();
  ASSERT_EQ(seen.size(), 64u);
  for (std::size_t i = 0; i < seen.size(); ++i)
    EXPECT_TRUE(seen[i].start == at(i) && seen[i].end == at(i + 1) && !seen[i].lazy)
        << i << ": [" << hex(seen[i].start) << ", " << hex(seen[i].end) << ")";
  EXPECT_TRUE(list_areas(*space_).empty());
  EXPECT_EQ(space_->check_invariants(), "");
}

TEST(VaSpaceTeardown, DestroyRightAfterManyFreesWaitsForDeferredReleases) {
  // Every free() retires a list node through call_rcu; destroying the space at
  // once must wait for them (AddressSanitizer reports any that run after).
  for (int round = 0; round < 4; ++round) {
    VaSpaceOptions options;
    options.start = kBase;
    options.end = at(1 << 14);
    options.lazy_max_pages = 64;
    auto space = create_space(options);
    std::atomic<bool> stop{false};
    std::thread reader([&] {
      while (!stop.load(std::memory_order_acquire)) (void)space->info(InfoMode::rcu_walk);
    });
    std::vector<std::uintptr_t> areas;
    for (int i = 0; i < 8192; ++i) areas.push_back(*space->alloc(kPage, 1));
    for (std::size_t i = 0; i < areas.size(); ++i)
      ASSERT_FALSE(i % 3 == 0 ? space->free_lazy(areas[i]) : space->free(areas[i]));
    stop.store(true, std::memory_order_release);
    reader.join();
    space.reset();
  }
}

}  // namespace
}  // namespace uvmalloc::testing
