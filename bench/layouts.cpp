// bench/layouts.cpp - builds the layouts described in layouts.hpp.
#include "layouts.hpp"

#include <charconv>
#include <random>
#include <system_error>

namespace uvmalloc::bench {
namespace {

// Every layout starts on a kAdversarialAlign boundary, so "aligned" means the
// same thing relative to the space as in absolute addresses. 1 TiB of numbers
// holds the largest layout (10^6 misaligned holes: 64 GiB) many times over.
constexpr std::uintptr_t kSpaceStart = kAdversarialAlign;
constexpr std::uintptr_t kSpaceBytes = std::uintptr_t{1} << 40;

constexpr std::size_t kMisalignedLiveBytes = 14 * kPageSize;
constexpr std::size_t kMisalignedHoleBytes = kAdversarialAlign - kMisalignedLiveBytes;

std::expected<std::unique_ptr<VaSpace>, std::string> make_space(InfoMode mode) {
  auto space = VaSpace::create({.start = kSpaceStart,
                                .end = kSpaceStart + kSpaceBytes,
                                .page_size = kPageSize,
                                .info_mode = mode,
                                .lazy_max_pages = 0,  // the kernel's formula
                                .on_purge = {}});
  if (!space) return std::unexpected("VaSpace::create: " + space.error().message());
  return std::move(*space);
}

std::string failure(std::string_view step, std::size_t index, std::error_code ec) {
  return std::string(step) + " #" + std::to_string(index) + ": " + ec.message();
}

std::string hex(std::uintptr_t value) {
  char digits[2 * sizeof value];  // always enough for base 16
  char* end = std::to_chars(std::begin(digits), std::end(digits), value, 16).ptr;
  return "0x" + std::string(digits, end);
}

}  // namespace

PageSizeStream::PageSizeStream(std::uint64_t seed) : bytes_(kCount) {
  std::mt19937_64 random(seed);
  std::uniform_int_distribution<std::size_t> pages(1, 4);
  for (auto& bytes : bytes_) bytes = pages(random) * kPageSize;
}

std::expected<Layout, std::string> make_fragmented(std::size_t live_areas, InfoMode mode,
                                                   std::uint64_t seed) {
  auto space = make_space(mode);
  if (!space) return std::unexpected(space.error());
  Layout layout{.space = std::move(*space), .live = {}};
  PageSizeStream sizes(seed);
  std::vector<std::uintptr_t> all;
  all.reserve(2 * live_areas);
  for (std::size_t i = 0; i < 2 * live_areas; ++i) {
    auto start = layout.space->alloc(sizes.next_bytes(), kPageSize);
    if (!start) return std::unexpected(failure("alloc", i, start.error()));
    all.push_back(*start);
  }
  layout.live.reserve(live_areas);
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i % 2 == 0) {
      layout.live.push_back(all[i]);
    } else if (auto ec = layout.space->free(all[i])) {
      return std::unexpected(failure("free", i, ec));
    }
  }
  return layout;
}

std::expected<Layout, std::string> make_misaligned_holes(std::size_t holes) {
  auto space = make_space(InfoMode::rcu_walk);
  if (!space) return std::unexpected(space.error());
  Layout layout{.space = std::move(*space), .live = {}};
  layout.live.reserve(holes);
  std::vector<std::uintptr_t> hole_starts;
  hole_starts.reserve(holes);
  for (std::size_t i = 0; i < holes; ++i) {
    const std::uintptr_t period = kSpaceStart + i * kAdversarialAlign;
    auto live = layout.space->alloc(kMisalignedLiveBytes, kPageSize);
    auto hole = layout.space->alloc(kMisalignedHoleBytes, kPageSize);
    if (!live) return std::unexpected(failure("alloc live", i, live.error()));
    if (!hole) return std::unexpected(failure("alloc hole", i, hole.error()));
    if (*live != period || *hole != period + kMisalignedLiveBytes) {
      return std::unexpected("period #" + std::to_string(i) + ": areas at " + hex(*live) + " and " +
                             hex(*hole) + ", lowest fit puts them at " + hex(period) + " and " +
                             hex(period + kMisalignedLiveBytes));
    }
    layout.live.push_back(*live);
    hole_starts.push_back(*hole);
  }
  for (std::size_t i = 0; i < holes; ++i) {
    if (auto ec = layout.space->free(hole_starts[i])) {
      return std::unexpected(failure("free hole", i, ec));
    }
  }
  return layout;
}

std::uintptr_t misaligned_holes_tail(const Layout& layout) noexcept {
  return kSpaceStart + layout.live.size() * kAdversarialAlign;
}

}  // namespace uvmalloc::bench
