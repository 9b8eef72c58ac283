// tests/model_test.cpp - long random operation sequences, checked step by
// step against ReferenceModel (tests/reference_model.hpp).
//
// Every call's result (address, error code, found area, on_purge ranges) is
// compared with the model right after the call. Everything observable (info
// in all three modes, meminfo, vmallocinfo, the area list, check_invariants)
// is compared after every step of the first kFullCheckSteps and every
// kCheckInterval steps after that, which keeps the binary fast under ASan.
//
// Spaces are small (64-4096 pages) and lazy_max_pages low, so exhaustion,
// failed allocations, retries after a purge and automatic purges all happen;
// the test counts each kind of event and fails if one never occurred.
//
// Seeds: fixed ones per configuration and mode, plus one random seed per run,
// printed; UVMALLOC_SEED=<n> replays it. UVMALLOC_TEST_SCALE=<x> multiplies
// the number of operations.
#include "reference_model.hpp"
#include "test_util.hpp"

#include <uvmalloc/errors.hpp>
#include <uvmalloc/va_space.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <initializer_list>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace uvmalloc::testing {
namespace {

constexpr std::size_t kFullCheckSteps = 2000;
constexpr std::size_t kCheckInterval = 64;
constexpr std::size_t kOpsPerConfig = 17000;  // x 6 configurations > 10^5 per info mode
constexpr std::size_t kMaxSize = std::numeric_limits<std::size_t>::max();

struct Config {
  const char* name;
  std::uintptr_t start;
  std::size_t pages;
  std::size_t page_size;
  std::size_t lazy_max_pages;
};

constexpr Config kConfigs[] = {
    {"tiny", 0x10000000, 64, 4096, 8},
    {"small", 0x7f0000000000, 512, 4096, 32},
    {"large", 0x40000000, 4096, 4096, 200},
    {"starts at zero, 512-byte pages", 0, 1024, 512, 40},
    {"64 KiB pages", 0x100000000, 256, 65536, 24},
    // Ends at the highest page-aligned address: aligning up can overflow.
    {"top of the address range", kMaxAddress - 256 * 4096 - 4095, 256, 4096, 16},
};

// Every kind of outcome the random sequence must produce at least once.
enum Event {
  alloc_ok,
  alloc_in_range_ok,
  alloc_ok_after_purge,
  alloc_zero_size,
  alloc_bad_alignment,
  alloc_bad_range,
  alloc_size_overflow,
  alloc_no_space,
  free_ok,
  free_lazy_ok,
  free_not_an_area,
  free_lazy_not_an_area,
  free_lazy_reusable_ok,
  free_lazy_reusable_not_an_area,
  reuse_exact_fit,
  reuse_split,
  reuse_joined,
  reuse_zero_size,
  reuse_size_overflow,
  reuse_no_space,
  purge_explicit,
  purge_lazy_limit,
  purge_alloc_retry,
  find_live,
  find_lazy,
  find_nothing,
  kEventCount,
};
constexpr std::array<const char*, kEventCount> kEventNames = {
    "alloc_ok",          "alloc_in_range_ok",  "alloc_ok_after_purge", "alloc_zero_size",
    "alloc_bad_alignment", "alloc_bad_range",  "alloc_size_overflow",  "alloc_no_space",
    "free_ok",           "free_lazy_ok",       "free_not_an_area",     "free_lazy_not_an_area",
    "free_lazy_reusable_ok", "free_lazy_reusable_not_an_area", "reuse_exact_fit", "reuse_split", "reuse_joined",
    "reuse_zero_size",   "reuse_size_overflow", "reuse_no_space",
    "purge_explicit",    "purge_lazy_limit",   "purge_alloc_retry",    "find_live",
    "find_lazy",         "find_nothing",
};
using EventCounts = std::array<std::uint64_t, kEventCount>;

std::string describe_result(const std::expected<std::uintptr_t, std::error_code>& result) {
  return result ? hex(*result) : "error " + result.error().message();
}
std::string describe_result(const std::expected<std::uintptr_t, errc>& result) {
  return result ? hex(*result) : "error " + make_error_code(result.error()).message();
}
std::string describe_result(const std::expected<ReusedArea, std::error_code>& result) {
  return result ? describe(*result) : "error " + result.error().message();
}
std::string describe_result(const std::expected<ReusedArea, errc>& result) {
  return result ? describe(*result) : "error " + make_error_code(result.error()).message();
}

// The std::errc each uvmalloc code must compare equal to.
std::errc generic(errc code) {
  return code == errc::no_space || code == errc::os_refused || code == errc::nothing_reusable
             ? std::errc::not_enough_memory
             : std::errc::invalid_argument;
}

// Drives one VaSpace and one ReferenceModel with the same random operations.
class ModelRun {
 public:
  ModelRun(const Config& config, InfoMode mode, std::uint64_t seed)
      : config_(config), mode_(mode), seed_(seed), random_(seed) {
    VaSpaceOptions options;
    options.start = config.start;
    options.end = config.start + config.pages * config.page_size;
    options.page_size = config.page_size;
    options.info_mode = mode;
    options.lazy_max_pages = config.lazy_max_pages;
    options.on_purge = purges_.callback();
    space_ = create_space(options);
    model_.emplace(options.start, options.end, options.page_size, space_->lazy_max_pages());
  }

  // Runs `steps` random operations; stops at the first disagreement.
  ::testing::AssertionResult run(std::size_t steps, EventCounts& events) {
    for (std::size_t step = 0; step < steps; ++step) {
      if (auto result = random_step(step, events); !result) return failure(step, result);
      if (step < kFullCheckSteps || step % kCheckInterval == 0 || step + 1 == steps)
        if (auto result = compare_everything(); !result) return failure(step, result);
    }
    return ::testing::AssertionSuccess();
  }

 private:
  ::testing::AssertionResult failure(std::size_t step, const ::testing::AssertionResult& why) {
    std::ostringstream recent;
    for (const Call& call : recent_ops_) {
      recent << "  " << call.function << "(";
      for (std::size_t i = 0; i < call.arguments.size(); ++i) recent << (i ? ", " : "") << hex(call.arguments[i]);
      recent << ")\n";
    }
    return ::testing::AssertionFailure()
           << config_.name << ", info_mode " << name(mode_) << ", seed " << seed_ << ", step " << step << ": " << why.message() << "\nlast operations:\n"
           << recent.str() << "model areas:\n" << describe(model_->areas());
  }

  // Remembers a call for the failure report; formatted only if one is needed.
  struct Call {
    const char* function;
    std::vector<std::uintptr_t> arguments;
  };
  void note(const char* function, std::initializer_list<std::uintptr_t> arguments) {
    recent_ops_.push_back({function, arguments});
    if (recent_ops_.size() > 16) recent_ops_.pop_front();
  }

  std::uintptr_t page_size() const { return config_.page_size; }
  std::uint64_t uniform(std::uint64_t low, std::uint64_t high) {  // inclusive
    return std::uniform_int_distribution<std::uint64_t>(low, high)(random_);
  }
  bool chance(unsigned percent) { return uniform(1, 100) <= percent; }

  std::size_t random_size() {
    switch (uniform(0, 19)) {
      case 0: return 0;
      case 1: return kMaxSize - uniform(0, 2 * page_size());  // overflows, or rounds to huge
      case 2: return uniform(1, config_.pages * page_size() + page_size());  // up to the whole space
      case 3: return uniform(config_.pages / 4, config_.pages) * page_size();
      case 4: case 5: case 6: return uniform(1, 4) * page_size();
      default: return uniform(1, 8 * page_size());
    }
  }

  std::size_t random_align() {
    switch (uniform(0, 19)) {
      case 0: return 0;
      case 1: return uniform(2, 64) | 1;                       // odd: not a power of two
      case 2: return page_size() * 3;                          // not a power of two
      case 3: return std::size_t{1} << uniform(40, 63);        // huge: aligning up overflows or misses
      case 4: case 5: return std::size_t{1} << uniform(0, 11);   // below the page size
      case 6: case 7: case 8: return page_size() << uniform(1, 6);  // a few pages
      default: return 1;
    }
  }

  // A range inside the space, now and then an invalid one.
  std::pair<std::uintptr_t, std::uintptr_t> random_range() {
    const std::uintptr_t start = config_.start, size = config_.pages * page_size();
    switch (uniform(0, 9)) {
      case 0: {
        const std::uintptr_t at = start + uniform(0, size - 1);
        return {at, at - uniform(0, 1) * (at - start)};  // vstart == vend or vstart > vend
      }
      case 1: return {start == 0 ? 0 : start - page_size(), start + size};  // starts below (or valid at 0)
      case 2: return {start, start + size + page_size() * uniform(0, 1)};   // ends above, or exactly the space
      default: {
        std::uintptr_t a = start + uniform(0, size - 1), b = start + uniform(1, size);
        if (chance(70)) {  // page-aligned bounds, mostly
          a -= (a - start) % page_size();
          b -= (b - start) % page_size();
        }
        if (a == b) b = std::min(start + size, b + page_size());
        return a < b ? std::pair{a, b} : std::pair{b, a};
      }
    }
  }

  // A size for reuse_lazy: mostly one that a reusable area holds exactly
  // or with room to spare, so reuses succeed and split; else any size.
  std::size_t random_reuse_size() {
    const std::vector<Area> reusable = model_->reusable_areas();
    if (reusable.empty() || chance(30)) return random_size();
    const Area& area = reusable[uniform(0, reusable.size() - 1)];
    const std::size_t size = area.end - area.start;
    switch (uniform(0, 3)) {
      case 0: return size;                                   // exact fit
      case 1: return size - uniform(0, page_size() - 1);     // rounds up to an exact fit
      case 2: return uniform(1, size);                       // fits, usually splits
      default: return size + uniform(1, 2 * page_size());    // just too large for this one
    }
  }

  // An address to free or find: a live or lazy area's start, an inner or
  // end address, free space, or anything at all.
  std::uintptr_t random_address() {
    const std::uintptr_t space_size = config_.pages * page_size();
    const std::optional<AreaInfo> picked =
        model_->area_at_or_after(config_.start + uniform(0, space_size - 1));
    if (picked && chance(80)) {
      const AreaInfo& area = *picked;
      switch (uniform(0, 5)) {
        case 0: return area.start + uniform(1, area.end - area.start - 1);
        case 1: return area.end - 1;
        case 2: return area.end;
        default: return area.start;
      }
    }
    switch (uniform(0, 3)) {
      case 0: return uniform(0, kMaxAddress);
      case 1: return config_.start - 1;
      default: return config_.start + uniform(0, space_size - 1);
    }
  }

  // Same address or same error code (which must also equal its std::errc).
  static ::testing::AssertionResult same(const std::expected<std::uintptr_t, std::error_code>& actual,
                                         const std::expected<std::uintptr_t, errc>& expected) {
    const bool equal = actual.has_value() == expected.has_value() &&
                       (actual ? *actual == *expected
                               : actual.error() == expected.error() &&
                                     actual.error() == generic(expected.error()));
    if (equal) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "VaSpace returned " << describe_result(actual) << ", model " << describe_result(expected);
  }
  static ::testing::AssertionResult same(const std::expected<ReusedArea, std::error_code>& actual,
                                         const std::expected<ReusedArea, errc>& expected) {
    const bool equal = actual.has_value() == expected.has_value() &&
                       (actual ? actual->was == expected->was && actual->joined == expected->joined
                               : actual.error() == expected.error() &&
                                     actual.error() == generic(expected.error()));
    if (equal) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "VaSpace returned " << describe_result(actual) << ", model " << describe_result(expected);
  }
  static ::testing::AssertionResult same(std::error_code actual, std::optional<errc> expected) {
    const bool equal = expected ? actual == *expected && actual == generic(*expected) : !actual;
    if (equal) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "VaSpace returned '" << actual.message() << "', model '"
           << (expected ? make_error_code(*expected).message() : "success") << "'";
  }

  // The purges VaSpace reported through on_purge must be the model's, in order.
  ::testing::AssertionResult same_purges(EventCounts& events) {
    const std::vector<std::vector<Area>> actual = purges_.take();
    std::vector<ReferenceModel::Purge>& expected = model_->purges();
    bool equal = actual.size() == expected.size();
    for (std::size_t i = 0; equal && i < actual.size(); ++i) equal = actual[i] == expected[i].merged;
    if (!equal) {
      auto failure = ::testing::AssertionFailure() << "on_purge calls differ; VaSpace:";
      for (const auto& call : actual) failure << "\n  " << describe(std::span<const Area>(call));
      failure << "\nmodel:";
      for (const auto& purge : expected)
        failure << "\n  " << describe(std::span<const Area>(purge.merged));
      return failure;
    }
    for (const ReferenceModel::Purge& purge : expected) {
      ++expected_stats_.purges;
      expected_stats_.purged_areas += purge.areas;
      switch (purge.reason) {
        case ReferenceModel::PurgeReason::explicit_call: ++events[purge_explicit]; break;
        case ReferenceModel::PurgeReason::lazy_limit: ++events[purge_lazy_limit]; break;
        case ReferenceModel::PurgeReason::alloc_retry: ++events[purge_alloc_retry]; break;
      }
    }
    expected.clear();
    return ::testing::AssertionSuccess();
  }

  ::testing::AssertionResult random_step(std::size_t step, EventCounts& events) {
    // Phases of growth and of shrinking, so the space is seen nearly empty,
    // fragmented and full. Percent: alloc (a quarter with a range), free
    // (a third each: free, free_lazy, free_lazy_reusable), purge, reuse_lazy,
    // find.
    const bool growing = (step / 1500) % 2 == 0;
    const unsigned alloc_share = growing ? 50 : 25, free_share = growing ? 26 : 52;
    const unsigned kind = static_cast<unsigned>(uniform(0, 99));
    ::testing::AssertionResult result = ::testing::AssertionSuccess();
    if (kind < alloc_share) {
      const std::size_t size = random_size(), align = random_align();
      const bool ranged = kind % 4 == 0;
      const auto [vstart, vend] = ranged ? random_range() : std::pair{config_.start, config_.start};
      if (ranged)
        note("alloc", {size, align, vstart, vend});
      else
        note("alloc", {size, align});
      const auto actual = ranged ? space_->alloc(size, align, vstart, vend) : space_->alloc(size, align);
      const auto expected = ranged ? model_->alloc(size, align, vstart, vend) : model_->alloc(size, align);
      result = same(actual, expected);
      if (expected) ++expected_stats_.allocs;
      if (!expected && expected.error() == errc::no_space) ++expected_stats_.failed_allocs;
      if (expected) {
        ++events[ranged ? alloc_in_range_ok : alloc_ok];
        if (!model_->purges().empty()) ++events[alloc_ok_after_purge];
      } else {
        constexpr std::pair<errc, Event> kErrors[] = {
            {errc::zero_size, alloc_zero_size}, {errc::bad_alignment, alloc_bad_alignment},
            {errc::bad_range, alloc_bad_range}, {errc::size_overflow, alloc_size_overflow},
            {errc::no_space, alloc_no_space}};
        for (auto [code, event] : kErrors)
          if (expected.error() == code) ++events[event];
      }
    } else if (kind < alloc_share + free_share) {
      const std::uintptr_t address = random_address();
      std::error_code actual;
      std::optional<errc> expected;
      switch (kind % 3) {
        case 0:
          note("free", {address});
          actual = space_->free(address);
          expected = model_->free(address);
          if (!expected) ++expected_stats_.frees;
          ++events[expected ? free_not_an_area : free_ok];
          break;
        case 1:
          note("free_lazy", {address});
          actual = space_->free_lazy(address);
          expected = model_->free_lazy(address);
          if (!expected) ++expected_stats_.lazy_frees;
          ++events[expected ? free_lazy_not_an_area : free_lazy_ok];
          break;
        default:
          note("free_lazy_reusable", {address});
          actual = space_->free_lazy_reusable(address);
          expected = model_->free_lazy_reusable(address);
          if (!expected) ++expected_stats_.lazy_frees;
          ++events[expected ? free_lazy_reusable_not_an_area : free_lazy_reusable_ok];
          break;
      }
      result = same(actual, expected);
    } else if (kind < alloc_share + free_share + 2) {
      note("purge", {});
      space_->purge();
      model_->purge();
    } else if (kind < alloc_share + free_share + 12) {
      const std::size_t size = random_reuse_size();
      note("reuse_lazy", {size});
      const auto actual = space_->reuse_lazy(size);
      const auto expected = model_->reuse_lazy(size);
      result = same(actual, expected);
      if (expected) {
        ++expected_stats_.lazy_reuses;
        const bool exact =
            expected->was.end - expected->was.start == (size + page_size() - 1) / page_size() * page_size();
        ++events[exact ? reuse_exact_fit : reuse_split];
        if (expected->joined) ++events[reuse_joined];
      } else {
        constexpr std::pair<errc, Event> kErrors[] = {{errc::zero_size, reuse_zero_size},
                                                      {errc::size_overflow, reuse_size_overflow},
                                                      {errc::nothing_reusable, reuse_no_space}};
        for (auto [code, event] : kErrors)
          if (expected.error() == code) ++events[event];
      }
      // The part handed out is live at once, from its first byte to its last.
      if (result && expected) {
        const std::uintptr_t live_end = model_->find(expected->was.start)->end;
        for (std::uintptr_t address : {expected->was.start, live_end - 1})
          if (space_->find(address) != model_->find(address))
            result = ::testing::AssertionFailure() << "after reuse_lazy, find(" << hex(address)
                                                   << ") is " << describe(space_->find(address));
      }
    } else {
      const std::uintptr_t address = random_address();
      note("find", {address});
      const std::optional<Area> actual = space_->find(address);
      const std::optional<Area> expected = model_->find(address);
      if (actual != expected)
        result = ::testing::AssertionFailure() << "find: VaSpace " << describe(actual)
                                               << ", model " << describe(expected);
      const std::optional<AreaInfo> around = model_->area_at_or_after(address);
      const bool in_lazy = around && around->lazy && around->start <= address;
      ++events[expected ? find_live : (in_lazy ? find_lazy : find_nothing)];
    }
    if (!result) return result;
    return same_purges(events);
  }

  ::testing::AssertionResult compare_everything() const {
    const VmallocInfo expected = model_->info();
    for (InfoMode mode : kAllInfoModes)
      if (const VmallocInfo actual = space_->info(mode); actual != expected)
        return ::testing::AssertionFailure() << "info(" << name(mode) << ") " << describe(actual)
                                             << ", model " << describe(expected);
    if (space_->info() != expected) return ::testing::AssertionFailure() << "info() differs from the model";
    if (const std::string actual = space_->meminfo(); actual != model_->meminfo())
      return ::testing::AssertionFailure() << "meminfo:\n" << actual << "model:\n" << model_->meminfo();
    if (auto result = VmallocinfoMatches(space_->vmallocinfo(), model_->vmallocinfo_lines()); !result)
      return result << " (vmallocinfo)";
    const std::vector<AreaInfo> actual_areas = list_areas(*space_);
    const std::vector<AreaInfo> expected_areas = model_->areas();
    const bool same_areas = std::equal(
        actual_areas.begin(), actual_areas.end(), expected_areas.begin(), expected_areas.end(),
        [](const AreaInfo& a, const AreaInfo& b) { return a.start == b.start && a.end == b.end && a.lazy == b.lazy; });
    if (!same_areas)
      return ::testing::AssertionFailure() << "for_each_area:\n" << describe(actual_areas) << "model:\n"
                                           << describe(expected_areas);
    if (const std::string problem = space_->check_invariants(); !problem.empty())
      return ::testing::AssertionFailure() << "check_invariants: " << problem;
    const VaSpaceStats stats = space_->stats();
    const VaSpaceStats& want = expected_stats_;
    if (stats.allocs != want.allocs || stats.frees != want.frees || stats.lazy_frees != want.lazy_frees ||
        stats.purges != want.purges || stats.purged_areas != want.purged_areas ||
        stats.failed_allocs != want.failed_allocs || stats.lazy_reuses != want.lazy_reuses)
      return ::testing::AssertionFailure()
             << "stats() {allocs, frees, lazy_frees, purges, purged_areas, failed_allocs, lazy_reuses} = {"
             << stats.allocs << ", " << stats.frees << ", " << stats.lazy_frees << ", " << stats.purges << ", "
             << stats.purged_areas << ", " << stats.failed_allocs << ", " << stats.lazy_reuses << "}, expected {"
             << want.allocs << ", " << want.frees << ", " << want.lazy_frees << ", " << want.purges << ", "
             << want.purged_areas << ", " << want.failed_allocs << ", " << want.lazy_reuses << "}";
    return ::testing::AssertionSuccess();
  }

  const Config& config_;
  InfoMode mode_;
  std::uint64_t seed_;
  std::mt19937_64 random_;
  PurgeLog purges_;  // declared before space_: outlives it
  std::unique_ptr<VaSpace> space_;
  std::optional<ReferenceModel> model_;
  std::deque<Call> recent_ops_;
  VaSpaceStats expected_stats_{};  // what stats() must say: successes, no_space failures, purges, reuses
};

std::size_t scaled(std::size_t steps) {
  return std::max<std::size_t>(1, static_cast<std::size_t>(static_cast<double>(steps) * test_scale()));
}

void expect_every_event(const EventCounts& events, const std::string& context) {
  std::printf("%s:", context.c_str());
  for (std::size_t event = 0; event < kEventCount; ++event)
    std::printf(" %s %" PRIu64, kEventNames[event], events[event]);
  std::printf("\n");
  for (std::size_t event = 0; event < kEventCount; ++event)
    EXPECT_GT(events[event], 0u) << context << ": no " << kEventNames[event]
                                 << " happened; the random mix no longer covers it";
}

class ModelTest : public ::testing::TestWithParam<InfoMode> {};

TEST_P(ModelTest, RandomOperationsMatchTheReferenceModel) {
  EventCounts events{};
  std::uint64_t seed = 0x5eed0000 + static_cast<std::uint64_t>(GetParam()) * 100;
  for (const Config& config : kConfigs) {
    ModelRun run(config, GetParam(), ++seed);
    ASSERT_TRUE(run.run(scaled(kOpsPerConfig), events));
  }
  expect_every_event(events, name(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(AllInfoModes, ModelTest, ::testing::ValuesIn(kAllInfoModes),
                         [](const auto& info) { return std::string(name(info.param)); });

TEST(ModelTestRandomSeed, RandomOperationsMatchTheReferenceModel) {
  std::uint64_t seed = std::random_device{}() ^ (std::uint64_t{std::random_device{}()} << 32);
  if (const char* text = std::getenv("UVMALLOC_SEED")) seed = std::strtoull(text, nullptr, 0);
  std::printf("random seed %" PRIu64 " (replay with UVMALLOC_SEED=%" PRIu64 ")\n", seed, seed);
  std::mt19937_64 pick(seed);
  const Config& config = kConfigs[pick() % std::size(kConfigs)];
  for (InfoMode mode : kAllInfoModes) {
    EventCounts events{};
    ModelRun run(config, mode, seed);
    ASSERT_TRUE(run.run(scaled(kOpsPerConfig / 2), events)) << "config " << config.name;
  }
}

TEST(ReferenceModelSelfCheck, ModelFollowsTheContractOnAHandWorkedExample) {
  // The oracle must itself be right: a short sequence with known answers.
  using Allocated = std::expected<std::uintptr_t, errc>;
  ReferenceModel model(0x10000, 0x10000 + 8 * 4096, 4096, /*lazy_max_pages=*/2);
  EXPECT_EQ(model.alloc(1, 1), Allocated(0x10000));
  EXPECT_EQ(model.alloc(4096, 8192), Allocated(0x12000));
  EXPECT_EQ(model.alloc(1, 1), Allocated(0x11000));
  EXPECT_EQ(model.alloc(0, 1), std::unexpected(errc::zero_size));
  EXPECT_EQ(model.alloc(1, 3), std::unexpected(errc::bad_alignment));
  EXPECT_EQ(model.alloc(1, 1, 0x10000, 0x10000), std::unexpected(errc::bad_range));
  EXPECT_EQ(model.alloc(kMaxSize, 1), std::unexpected(errc::size_overflow));
  EXPECT_EQ(model.info(), (VmallocInfo{8 * 4096, 3 * 4096, 5 * 4096}));
  EXPECT_EQ(model.free_lazy(0x11000), std::nullopt);
  EXPECT_EQ(model.free_lazy(0x11000), errc::not_an_area);
  EXPECT_EQ(model.find(0x11000), std::nullopt);
  EXPECT_EQ(model.info(), (VmallocInfo{8 * 4096, 2 * 4096, 5 * 4096}));
  EXPECT_EQ(model.free_lazy(0x10000), std::nullopt);  // 2 lazy pages: not past the limit
  EXPECT_TRUE(model.purges().empty());
  EXPECT_EQ(model.alloc(5 * 4096, 1), Allocated(0x13000));
  EXPECT_EQ(model.alloc(4096, 1), Allocated(0x10000));  // purged, retried
  ASSERT_EQ(model.purges().size(), 1u);
  EXPECT_EQ(model.purges()[0].merged, (std::vector<Area>{{0x10000, 0x12000}}));
  EXPECT_EQ(model.find(0x12fff), (Area{0x12000, 0x13000}));
  EXPECT_EQ(model.meminfo(), "VmallocTotal:         32 kB\nVmallocUsed:          28 kB\nVmallocChunk:          4 kB\n");
  EXPECT_EQ(model.vmallocinfo_lines().front(), "0x0000000000010000-0x0000000000011000    4096");
}

TEST(ReferenceModelSelfCheck, ModelReusesTheSmallestMostRecentReusableArea) {
  using Allocated = std::expected<std::uintptr_t, errc>;
  constexpr std::uintptr_t kBase = 0x10000;
  const auto page = [](std::size_t n) { return kBase + n * 4096; };
  const auto reused = [](std::size_t first, std::size_t last, bool joined) {
    return ReusedArea{{0x10000 + first * 4096, 0x10000 + last * 4096}, joined};
  };
  const auto same = [](const std::expected<ReusedArea, errc>& actual, const std::expected<ReusedArea, errc>& want) {
    return actual.has_value() == want.has_value() &&
           (actual ? actual->was == want->was && actual->joined == want->joined : actual.error() == want.error());
  };
  const auto error = [](errc code) { return std::expected<ReusedArea, errc>(std::unexpected(code)); };
  ReferenceModel model(kBase, page(32), 4096, /*lazy_max_pages=*/100);
  // [0,4) [4,5) [5,7) [7,8) [8,10) [10,11) [11,12), back to back.
  for (auto [first, last] : {std::pair{0, 4}, {4, 5}, {5, 7}, {7, 8}, {8, 10}, {10, 11}, {11, 12}})
    ASSERT_EQ(model.alloc((last - first) * 4096, 1), Allocated(page(first)));
  EXPECT_TRUE(same(model.reuse_lazy(4096), error(errc::nothing_reusable)));
  EXPECT_EQ(model.free_lazy(page(10)), std::nullopt);  // never reusable, never joined with
  EXPECT_TRUE(same(model.reuse_lazy(4096), error(errc::nothing_reusable)));
  EXPECT_EQ(model.free_lazy_reusable(page(0)), std::nullopt);
  EXPECT_EQ(model.free_lazy_reusable(page(5)), std::nullopt);
  EXPECT_EQ(model.free_lazy_reusable(page(8)), std::nullopt);
  EXPECT_EQ(model.free_lazy_reusable(page(11)), std::nullopt);  // touches only the plain lazy [10,11)
  EXPECT_EQ(model.free_lazy_reusable(page(8)), errc::not_an_area);
  EXPECT_EQ(model.lazy_pages(), 10u);
  EXPECT_TRUE(same(model.reuse_lazy(0), error(errc::zero_size)));
  EXPECT_TRUE(same(model.reuse_lazy(kMaxSize), error(errc::size_overflow)));
  EXPECT_TRUE(same(model.reuse_lazy(5 * 4096), error(errc::nothing_reusable)));
  // Two 2-page areas: the one freed last wins; 4 pages would also fit.
  EXPECT_TRUE(same(model.reuse_lazy(2 * 4096 - 1), reused(8, 10, false)));
  EXPECT_EQ(model.find(page(9)), (Area{page(8), page(10)}));
  EXPECT_TRUE(same(model.reuse_lazy(4096), reused(11, 12, false)));  // the smallest
  EXPECT_TRUE(same(model.reuse_lazy(4096), reused(5, 7, false)));    // split: [5,6) live, [6,7) rest
  EXPECT_EQ(model.find(page(5)), (Area{page(5), page(6)}));
  EXPECT_EQ(model.reusable_areas(), (std::vector<Area>{{page(0), page(4)}, {page(6), page(7)}}));
  // Joining: [4,5) joins [0,4) before it; [5,6) after it is live.
  EXPECT_EQ(model.free_lazy_reusable(page(4)), std::nullopt);
  EXPECT_EQ(model.reusable_areas(), (std::vector<Area>{{page(0), page(5)}, {page(6), page(7)}}));
  EXPECT_EQ(model.free_lazy_reusable(page(5)), std::nullopt);  // joins both sides
  EXPECT_EQ(model.reusable_areas(), (std::vector<Area>{{page(0), page(7)}}));
  EXPECT_EQ(model.areas().size(), 5u);  // [0,7) lazy, [7,8), [8,10), [10,11) lazy, [11,12)
  EXPECT_EQ(model.lazy_pages(), 8u);
  EXPECT_TRUE(same(model.reuse_lazy(3 * 4096), reused(0, 7, true)));
  EXPECT_TRUE(same(model.reuse_lazy(4096), reused(3, 7, true)));  // the rest stays joined
  EXPECT_EQ(model.free_lazy_reusable(page(3)), std::nullopt);     // joins the rest [4,7) again
  EXPECT_TRUE(same(model.reuse_lazy(4 * 4096), reused(3, 7, true)));
  EXPECT_EQ(model.free_lazy_reusable(page(7)), std::nullopt);  // alone: not joined
  EXPECT_TRUE(same(model.reuse_lazy(4096), reused(7, 8, false)));
  EXPECT_EQ(model.info(), (VmallocInfo{32 * 4096, 11 * 4096, 20 * 4096}));  // lazy [10,11) is free
  // A purge takes every lazy area; nothing is reusable after it.
  EXPECT_EQ(model.free_lazy_reusable(page(8)), std::nullopt);
  model.purge();
  ASSERT_EQ(model.purges().size(), 1u);
  EXPECT_EQ(model.purges()[0].merged, (std::vector<Area>{{page(8), page(11)}}));
  EXPECT_EQ(model.purges()[0].areas, 2u);
  EXPECT_TRUE(same(model.reuse_lazy(4096), error(errc::nothing_reusable)));
}

}  // namespace
}  // namespace uvmalloc::testing
