// bench/layouts.hpp - the address-space layouts the micro benchmarks run on.
//
// Two layouts, both built through the public VaSpace API so they hold exactly
// what a real user would have produced:
//
//   fragmented       N live areas of 1-4 pages, each followed by a hole of
//                    1-4 pages: allocate 2N areas, free every other one.
//
//     | live | hole | live | hole | live | hole | ... | tail (free) ...
//
//   misaligned holes N live areas of 14 pages, each followed by a 2-page hole
//                    that holds no address aligned to 16 pages (DESIGN 3's
//                    adversarial case). Every hole is large enough for a
//                    1-page area, none once aligned, so the only aligned fit
//                    is the tail and an exact search visits every hole.
//
//     page  0      14 16     30 32     46 48
//           | live |h | live |h | live |h | tail ...
//
// Building is the slow part (2N allocations), so the benchmarks keep a layout
// and restore it after each timed loop instead of rebuilding it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <memory>
#include <string>
#include <vector>

#include <uvmalloc/va_space.hpp>

namespace uvmalloc::bench {

inline constexpr std::size_t kPageSize = 4096;
// The alignment the misaligned-holes layout defeats, in bytes.
inline constexpr std::size_t kAdversarialAlign = 16 * kPageSize;

// Sizes of 1-4 pages in bytes, drawn once from a fixed seed so the timed
// loops pay no random number generation and every run sees the same sequence.
class PageSizeStream {
 public:
  explicit PageSizeStream(std::uint64_t seed);

  // PageSizeStream::next_bytes() - the next size; cycles after kCount draws.
  [[nodiscard]] std::size_t next_bytes() noexcept { return bytes_[next_++ & (kCount - 1)]; }

 private:
  static constexpr std::size_t kCount = std::size_t{1} << 16;  // power of two: masking wraps
  std::vector<std::size_t> bytes_;
  std::size_t next_ = 0;
};

struct Layout {
  std::unique_ptr<VaSpace> space;
  std::vector<std::uintptr_t> live;  // starts of the live areas (by address when built)
};

// The fragmented layout with `live_areas` live areas, in a space whose
// info_mode is `mode`. Errors name the step that failed.
[[nodiscard]] std::expected<Layout, std::string> make_fragmented(std::size_t live_areas,
                                                                 InfoMode mode,
                                                                 std::uint64_t seed);

// The misaligned-holes layout with `holes` holes. Checks that every area
// landed where lowest fit puts it, so the layout really is the adversarial one.
[[nodiscard]] std::expected<Layout, std::string> make_misaligned_holes(std::size_t holes);

// The only address where alloc(kPageSize, kAdversarialAlign) fits in the
// misaligned-holes layout: the start of its tail.
[[nodiscard]] std::uintptr_t misaligned_holes_tail(const Layout& layout) noexcept;

}  // namespace uvmalloc::bench
