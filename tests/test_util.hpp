// tests/test_util.hpp - helpers shared by the VaSpace tests.
//
// snapshot() renders everything a caller can observe of a VaSpace into one
// string, so "an error changes nothing" is one EXPECT_EQ with a readable diff.
// PurgeLog records on_purge calls from any thread. test_scale() stretches the
// randomized and stress tests for soaks (UVMALLOC_TEST_SCALE, default 1).
#pragma once

#include <uvmalloc/errors.hpp>
#include <uvmalloc/va_space.hpp>

#include <gtest/gtest.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <expected>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace uvmalloc::testing {

inline constexpr std::size_t kPage = 4096;
inline constexpr std::uintptr_t kMaxAddress = std::numeric_limits<std::uintptr_t>::max();
inline constexpr InfoMode kAllInfoModes[] = {InfoMode::locked, InfoMode::rcu_walk,
                                             InfoMode::counters};

// UVMALLOC_TEST_SCALE multiplies the work of the long tests (default 1).
[[nodiscard]] inline double test_scale() {
  const char* text = std::getenv("UVMALLOC_TEST_SCALE");
  if (text == nullptr) return 1.0;
  const double scale = std::strtod(text, nullptr);
  return scale > 0 ? scale : 1.0;
}

[[nodiscard]] inline const char* name(InfoMode mode) {
  switch (mode) {
    case InfoMode::locked: return "locked";
    case InfoMode::rcu_walk: return "rcu_walk";
    case InfoMode::counters: return "counters";
  }
  return "?";
}

[[nodiscard]] inline std::string hex(std::uintptr_t address) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%" PRIxPTR, address);
  return text;
}

[[nodiscard]] inline std::string describe(const VmallocInfo& info) {
  std::ostringstream out;
  out << "{total " << info.total << ", used " << info.used << ", largest_chunk "
      << info.largest_chunk << "}";
  return out.str();
}

[[nodiscard]] inline std::string describe(const std::optional<Area>& area) {
  return area ? "[" + hex(area->start) + ", " + hex(area->end) + ")" : "none";
}

[[nodiscard]] inline std::string describe(std::span<const Area> areas) {
  std::string text;
  for (const Area& area : areas) text += describe(std::optional<Area>(area)) + " ";
  return text;
}

[[nodiscard]] inline std::string describe(std::span<const AreaInfo> areas) {
  std::string text;
  for (const AreaInfo& area : areas)
    text += "[" + hex(area.start) + ", " + hex(area.end) + (area.lazy ? ") lazy\n" : ")\n");
  return text;
}

// Every area on the list, as for_each_area() reports it.
[[nodiscard]] inline std::vector<AreaInfo> list_areas(const VaSpace& space) {
  std::vector<AreaInfo> areas;
  space.for_each_area([&](const AreaInfo& area) { areas.push_back(area); });
  return areas;
}

// create() that throws on failure, so a test reads `auto space = create_space(...)`.
[[nodiscard]] inline std::unique_ptr<VaSpace> create_space(const VaSpaceOptions& options) {
  auto created = VaSpace::create(options);
  if (!created) throw std::runtime_error("VaSpace::create failed: " + created.error().message());
  return std::move(*created);
}

// Compares alloc()'s result with an expected address, printing the error if any.
[[nodiscard]] inline ::testing::AssertionResult AllocatedAt(
    const std::expected<std::uintptr_t, std::error_code>& result, std::uintptr_t expected) {
  if (!result)
    return ::testing::AssertionFailure()
           << "expected " << hex(expected) << ", got error " << result.error().message();
  if (*result != expected)
    return ::testing::AssertionFailure() << "expected " << hex(expected) << ", got " << hex(*result);
  return ::testing::AssertionSuccess();
}

// The error must be uvmalloc's `specific` code AND compare equal to the
// std::errc the contract names for it.
[[nodiscard]] inline ::testing::AssertionResult IsError(std::error_code ec, errc specific,
                                                        std::errc generic) {
  if (ec != specific || ec != generic || ec.category() != error_category())
    return ::testing::AssertionFailure()
           << "got " << ec.category().name() << ":" << ec.value() << " (" << ec.message()
           << "), expected uvmalloc:" << static_cast<int>(specific) << " equal to "
           << std::make_error_code(generic).message();
  return ::testing::AssertionSuccess();
}
[[nodiscard]] inline ::testing::AssertionResult IsError(
    const std::expected<std::uintptr_t, std::error_code>& result, errc specific,
    std::errc generic) {
  if (result)
    return ::testing::AssertionFailure() << "expected an error, got address " << hex(*result);
  return IsError(result.error(), specific, generic);
}

[[nodiscard]] inline std::string describe(const ReusedArea& reused) {
  return describe(std::optional<Area>(reused.was)) + (reused.joined ? " joined" : "");
}

[[nodiscard]] inline ::testing::AssertionResult IsError(
    const std::expected<ReusedArea, std::error_code>& result, errc specific, std::errc generic) {
  if (result) return ::testing::AssertionFailure() << "expected an error, got " << describe(*result);
  return IsError(result.error(), specific, generic);
}

// Compares reuse_lazy()'s result with the lazily freed area it must have
// taken, and whether that area was joined from areas freed separately.
[[nodiscard]] inline ::testing::AssertionResult Reused(
    const std::expected<ReusedArea, std::error_code>& result, Area was, bool joined = false) {
  const std::string want = describe(ReusedArea{was, joined});
  if (!result)
    return ::testing::AssertionFailure() << "expected " << want << ", got error " << result.error().message();
  if (result->was != was || result->joined != joined)
    return ::testing::AssertionFailure() << "expected " << want << ", got " << describe(*result);
  return ::testing::AssertionSuccess();
}

// vmallocinfo() must consist of exactly these lines, in order, each ended by
// '\n'; the contract lets a line carry extra fields after a space.
[[nodiscard]] inline ::testing::AssertionResult VmallocinfoMatches(
    const std::string& actual, const std::vector<std::string>& expected_lines) {
  std::size_t position = 0;
  for (std::size_t i = 0; i < expected_lines.size(); ++i) {
    const std::size_t newline = actual.find('\n', position);
    if (newline == std::string::npos)
      return ::testing::AssertionFailure() << "line " << i << " missing or unterminated, want '"
                                           << expected_lines[i] << "' in:\n" << actual;
    const std::string line = actual.substr(position, newline - position);
    const std::string& want = expected_lines[i];
    if (line.compare(0, want.size(), want) != 0 || (line.size() > want.size() && line[want.size()] != ' '))
      return ::testing::AssertionFailure()
             << "line " << i << " is '" << line << "', want '" << want << "' in:\n" << actual;
    position = newline + 1;
  }
  if (position != actual.size())
    return ::testing::AssertionFailure() << "extra text after " << expected_lines.size()
                                         << " lines: '" << actual.substr(position) << "'";
  return ::testing::AssertionSuccess();
}

// Everything observable about the space, rendered as text: the figures in
// every mode, meminfo, vmallocinfo, the area list, find() at the interesting
// addresses around every area and at the space's edges, and the self-check.
[[nodiscard]] inline std::string snapshot(const VaSpace& space) {
  std::ostringstream out;
  for (InfoMode mode : kAllInfoModes) out << name(mode) << " " << describe(space.info(mode)) << "\n";
  out << space.meminfo() << space.vmallocinfo();
  const std::vector<AreaInfo> areas = list_areas(space);
  out << "areas:\n" << describe(areas);
  const VaSpaceOptions& options = space.options();
  std::vector<std::uintptr_t> probes = {0, options.start, options.start - 1, options.end,
                                        options.end - 1, kMaxAddress};
  for (const AreaInfo& area : areas)
    probes.insert(probes.end(), {area.start - 1, area.start, area.start + 1, area.end - 1, area.end});
  out << "find:";
  for (std::uintptr_t address : probes) out << " " << hex(address) << "->" << describe(space.find(address));
  out << "\ninvariants: '" << space.check_invariants() << "'\n";
  // A failed alloc is counted in stats().failed_allocs; no other count may move.
  const VaSpaceStats stats = space.stats();
  out << "stats: allocs " << stats.allocs << ", frees " << stats.frees << ", lazy_frees "
      << stats.lazy_frees << ", purges " << stats.purges << ", purged_areas " << stats.purged_areas
      << ", lazy_reuses " << stats.lazy_reuses << "\n";
  return out.str();
}

// Records every on_purge call; safe to call from any thread.
class PurgeLog {
 public:
  // The callback to put in VaSpaceOptions::on_purge; the log must outlive the space.
  [[nodiscard]] std::function<void(std::span<const Area>)> callback() {
    return [this](std::span<const Area> merged) {
      const std::lock_guard lock(mutex_);
      calls_.emplace_back(merged.begin(), merged.end());
    };
  }
  [[nodiscard]] std::vector<std::vector<Area>> calls() const {
    const std::lock_guard lock(mutex_);
    return calls_;
  }
  [[nodiscard]] std::vector<std::vector<Area>> take() {
    const std::lock_guard lock(mutex_);
    return std::exchange(calls_, {});
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::vector<Area>> calls_;
};

}  // namespace uvmalloc::testing
