// tests/reference_model.hpp - a plain, obviously correct model of VaSpace.
//
// ReferenceModel restates DESIGN 2.1 with the simplest data structure that
// can hold it: a std::map of areas by start address, searched linearly for
// the lowest fit. It is the oracle the randomized model test and the libFuzzer
// target compare VaSpace against after every step, so it favours clarity over
// speed (alloc is O(areas)) and must stay header-only and self-contained: it
// uses the public headers for the shared value types and nothing else of the
// library.
//
// Rules the contract leaves to the implementation, fixed here so that a
// comparison is exact:
//  * Error precedence, first match wins: size == 0 (zero_size), align not a
//    power of two (bad_alignment; 0 is not one), vstart >= vend or
//    [vstart, vend) outside [start, end) (bad_range), size rounded up to a page
//    overflows (size_overflow). Only then is a fit searched.
//  * A rounded size larger than vend - vstart can never fit, so alloc fails
//    with no_space at once, WITHOUT purging. In every other no-fit case it
//    purges the lazily freed areas (if there are any) and searches once more.
//  * Alignment is max(align, page_size). A gap whose aligned-up start
//    overflows uintptr_t has no fit (that is not an error of its own).
//  * A purge with no lazily freed areas does nothing: no on_purge call, not
//    counted as a purge.
//  * free_lazy marks the area lazy first, then purges every lazy area when
//    lazily freed pages > lazy_max_pages (strictly greater).
//  * on_purge receives the lazy ranges in address order, ranges whose ends
//    touch (a.end == b.start) merged into one.
//  * free_lazy_reusable is free_lazy (same errors, same automatic purge, after
//    joining) that also marks the area reusable, joined at once with a
//    reusable area ending where it starts and one starting where it ends into
//    one area, marked joined and made reusable now. A purge removes every lazy
//    area, so no purged range can be reused; areas freed with free_lazy never
//    are, nor joined with.
//  * reuse_lazy error precedence: size == 0 (zero_size), size rounded up to
//    a page overflows (size_overflow), no reusable area of at least the
//    rounded size (nothing_reusable). It never purges and is not counted as an alloc
//    or a failed alloc.
//  * reuse_lazy picks the smallest reusable area that fits; among equal sizes
//    the one made reusable last (freed, or left over by a split). It returns
//    that area as it was; its first `rounded` bytes become live, the rest (if
//    any) stays lazy and reusable as a new area, made reusable now, joined if
//    the area was. Lazily freed pages drop by rounded / page_size.
//
// Not thread-safe: one thread drives it.
#pragma once

#include <uvmalloc/errors.hpp>
#include <uvmalloc/va_space.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <expected>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace uvmalloc::testing {

class ReferenceModel {
 public:
  // Why a purge ran; the model test counts each kind to prove it happened.
  enum class PurgeReason { explicit_call, lazy_limit, alloc_retry };

  struct Purge {
    PurgeReason reason;
    std::vector<Area> merged;  // what on_purge must have received
    std::size_t areas;         // how many lazy areas it purged
  };

  // ReferenceModel::ReferenceModel()
  // Takes the space's bounds and the EFFECTIVE lazy_max_pages (the model does
  // not know the machine's default; pass VaSpace::lazy_max_pages()). The
  // arguments must be what VaSpace::create() accepts.
  ReferenceModel(std::uintptr_t start, std::uintptr_t end, std::size_t page_size,
                 std::size_t lazy_max_pages)
      : start_(start), end_(end), page_size_(page_size), lazy_max_pages_(lazy_max_pages) {}

  // ReferenceModel::alloc()
  [[nodiscard]] std::expected<std::uintptr_t, errc> alloc(std::size_t size, std::size_t align) {
    return alloc(size, align, start_, end_);
  }
  [[nodiscard]] std::expected<std::uintptr_t, errc> alloc(std::size_t size, std::size_t align,
                                                          std::uintptr_t vstart,
                                                          std::uintptr_t vend) {
    if (size == 0) return std::unexpected(errc::zero_size);
    if (!is_power_of_two(align)) return std::unexpected(errc::bad_alignment);
    if (vstart >= vend || vstart < start_ || vend > end_) return std::unexpected(errc::bad_range);
    if (size > kMaxAddress - (page_size_ - 1)) return std::unexpected(errc::size_overflow);
    const std::uintptr_t rounded = round_up(size, page_size_);
    const std::uintptr_t alignment = std::max<std::uintptr_t>(align, page_size_);

    if (rounded > vend - vstart) return std::unexpected(errc::no_space);
    std::optional<std::uintptr_t> fit = lowest_fit(rounded, alignment, vstart, vend);
    if (!fit && lazy_pages_ > 0) {
      purge_lazy(PurgeReason::alloc_retry);
      fit = lowest_fit(rounded, alignment, vstart, vend);
    }
    if (!fit) return std::unexpected(errc::no_space);
    areas_.emplace(*fit, Entry{*fit + rounded, false, false, 0, false});
    return *fit;
  }

  // ReferenceModel::free() / free_lazy()
  [[nodiscard]] std::optional<errc> free(std::uintptr_t start) {
    const auto it = areas_.find(start);
    if (it == areas_.end() || it->second.lazy) return errc::not_an_area;
    areas_.erase(it);
    return std::nullopt;
  }
  [[nodiscard]] std::optional<errc> free_lazy(std::uintptr_t start) {
    return mark_lazy(start, /*reusable=*/false);
  }

  // ReferenceModel::free_lazy_reusable() / reuse_lazy()
  [[nodiscard]] std::optional<errc> free_lazy_reusable(std::uintptr_t start) {
    return mark_lazy(start, /*reusable=*/true);
  }
  [[nodiscard]] std::expected<ReusedArea, errc> reuse_lazy(std::size_t size) {
    if (size == 0) return std::unexpected(errc::zero_size);
    if (size > kMaxAddress - (page_size_ - 1)) return std::unexpected(errc::size_overflow);
    const std::uintptr_t rounded = round_up(size, page_size_);
    auto best = areas_.end();
    for (auto it = areas_.begin(); it != areas_.end(); ++it) {
      const Entry& entry = it->second;
      const std::uintptr_t entry_size = entry.end - it->first;
      if (!entry.reusable || entry_size < rounded) continue;
      if (best == areas_.end()) {
        best = it;
        continue;
      }
      const std::uintptr_t best_size = best->second.end - best->first;
      if (entry_size < best_size ||
          (entry_size == best_size && entry.reusable_since > best->second.reusable_since))
        best = it;
    }
    if (best == areas_.end()) return std::unexpected(errc::nothing_reusable);
    const ReusedArea taken{{best->first, best->second.end}, best->second.joined};
    best->second = Entry{taken.was.start + rounded, false, false, 0, false};
    if (taken.was.start + rounded < taken.was.end)
      areas_.emplace(taken.was.start + rounded, Entry{taken.was.end, true, true, ++clock_, taken.joined});
    lazy_pages_ -= rounded / page_size_;
    return taken;
  }

  // ReferenceModel::purge()
  void purge() { purge_lazy(PurgeReason::explicit_call); }

  // ReferenceModel::find() - the live area holding addr.
  [[nodiscard]] std::optional<Area> find(std::uintptr_t addr) const {
    auto it = areas_.upper_bound(addr);
    if (it == areas_.begin()) return std::nullopt;
    --it;
    if (it->second.lazy || addr >= it->second.end) return std::nullopt;
    return Area{it->first, it->second.end};
  }

  // ReferenceModel::info() - DESIGN 1's figures: lazy areas count as free, the
  // chunk includes the gaps at both ends of the space.
  [[nodiscard]] VmallocInfo info() const {
    VmallocInfo result{end_ - start_, 0, 0};
    std::uintptr_t previous_end = start_;
    for (const auto& [start, entry] : areas_) {
      if (entry.lazy) continue;
      result.used += entry.end - start;
      result.largest_chunk = std::max<std::size_t>(result.largest_chunk, start - previous_end);
      previous_end = entry.end;
    }
    result.largest_chunk = std::max<std::size_t>(result.largest_chunk, end_ - previous_end);
    return result;
  }

  // ReferenceModel::meminfo() - the three /proc/meminfo lines.
  [[nodiscard]] std::string meminfo() const {
    const VmallocInfo figures = info();
    char text[160];
    std::snprintf(text, sizeof text,
                  "VmallocTotal:   %8lu kB\nVmallocUsed:    %8lu kB\nVmallocChunk:   %8lu kB\n",
                  static_cast<unsigned long>(figures.total / 1024),
                  static_cast<unsigned long>(figures.used / 1024),
                  static_cast<unsigned long>(figures.largest_chunk / 1024));
    return text;
  }

  // ReferenceModel::vmallocinfo_lines() - the contract's part of each line
  // of vmallocinfo(), without the newline; VaSpace may append " extra fields".
  [[nodiscard]] std::vector<std::string> vmallocinfo_lines() const {
    std::vector<std::string> lines;
    for (const auto& [start, entry] : areas_) {
      if (entry.lazy) continue;
      char line[96];
      std::snprintf(line, sizeof line, "0x%016lx-0x%016lx %7lu", static_cast<unsigned long>(start),
                    static_cast<unsigned long>(entry.end),
                    static_cast<unsigned long>(entry.end - start));
      lines.emplace_back(line);
    }
    return lines;
  }

  // ReferenceModel::area_at_or_after() - the area (live or lazy) holding
  // addr, else the first one above it; lets a test pick areas in O(log n).
  [[nodiscard]] std::optional<AreaInfo> area_at_or_after(std::uintptr_t addr) const {
    auto it = areas_.upper_bound(addr);
    if (it != areas_.begin() && addr < std::prev(it)->second.end) --it;
    if (it == areas_.end()) return std::nullopt;
    return AreaInfo{it->first, it->second.end, it->second.lazy};
  }

  // ReferenceModel::reusable_areas() - the lazy areas reuse_lazy() may take, by address.
  [[nodiscard]] std::vector<Area> reusable_areas() const {
    std::vector<Area> result;
    for (const auto& [start, entry] : areas_)
      if (entry.reusable) result.push_back({start, entry.end});
    return result;
  }

  // ReferenceModel::areas() - every area on the list, live and lazy, by address.
  [[nodiscard]] std::vector<AreaInfo> areas() const {
    std::vector<AreaInfo> result;
    result.reserve(areas_.size());
    for (const auto& [start, entry] : areas_) result.push_back({start, entry.end, entry.lazy});
    return result;
  }
  [[nodiscard]] std::vector<Area> live_areas() const {
    std::vector<Area> result;
    for (const auto& [start, entry] : areas_)
      if (!entry.lazy) result.push_back({start, entry.end});
    return result;
  }
  [[nodiscard]] std::vector<Area> lazy_areas() const {
    std::vector<Area> result;
    for (const auto& [start, entry] : areas_)
      if (entry.lazy) result.push_back({start, entry.end});
    return result;
  }

  // ReferenceModel::purges() - every purge so far, oldest first; the caller
  // may clear() it once compared.
  [[nodiscard]] std::vector<Purge>& purges() noexcept { return purges_; }
  [[nodiscard]] std::size_t lazy_pages() const noexcept { return lazy_pages_; }
  [[nodiscard]] std::uintptr_t start() const noexcept { return start_; }
  [[nodiscard]] std::uintptr_t end() const noexcept { return end_; }
  [[nodiscard]] std::size_t page_size() const noexcept { return page_size_; }

 private:
  struct Entry {
    std::uintptr_t end;
    bool lazy;
    bool reusable;                // lazy, freed with free_lazy_reusable
    std::uint64_t reusable_since;  // clock_ when it became reusable; larger is more recent
    bool joined;                   // reusable, joined from areas freed separately (or cut from one)
  };

  static constexpr std::uintptr_t kMaxAddress = std::numeric_limits<std::uintptr_t>::max();

  static bool is_power_of_two(std::size_t x) { return x != 0 && (x & (x - 1)) == 0; }
  // Callers guarantee x + (multiple - 1) does not overflow.
  static std::uintptr_t round_up(std::uintptr_t x, std::uintptr_t multiple) {
    return (x + multiple - 1) & ~(multiple - 1);
  }

  // The lowest aligned a in [lo, hi) with [a, a + size) inside it, if any.
  static std::optional<std::uintptr_t> fit_in_gap(std::uintptr_t lo, std::uintptr_t hi,
                                                  std::uintptr_t size, std::uintptr_t alignment) {
    if (lo >= hi || lo > kMaxAddress - (alignment - 1)) return std::nullopt;
    const std::uintptr_t a = round_up(lo, alignment);
    if (a >= hi || hi - a < size) return std::nullopt;
    return a;
  }

  // Linear scan over the gaps between all areas (lazy ones are not free yet),
  // clipped to [vstart, vend); the first gap that fits holds the lowest fit.
  std::optional<std::uintptr_t> lowest_fit(std::uintptr_t size, std::uintptr_t alignment,
                                           std::uintptr_t vstart, std::uintptr_t vend) const {
    std::uintptr_t gap_start = start_;
    for (const auto& [start, entry] : areas_) {
      if (auto a = fit_in_gap(std::max(gap_start, vstart), std::min(start, vend), size, alignment))
        return a;
      gap_start = entry.end;
    }
    return fit_in_gap(std::max(gap_start, vstart), vend, size, alignment);
  }

  std::optional<errc> mark_lazy(std::uintptr_t start, bool reusable) {
    auto it = areas_.find(start);
    if (it == areas_.end() || it->second.lazy) return errc::not_an_area;
    lazy_pages_ += (it->second.end - it->first) / page_size_;
    it->second = Entry{it->second.end, true, reusable, reusable ? ++clock_ : 0, false};
    if (reusable) {
      // Join with the reusable neighbours that touch it: one entry from the
      // first start to the last end, made reusable now.
      const auto next = std::next(it);
      if (next != areas_.end() && next->first == it->second.end && next->second.reusable) {
        it->second.end = next->second.end;
        it->second.joined = true;
        areas_.erase(next);
      }
      if (it != areas_.begin()) {
        const auto previous = std::prev(it);
        if (previous->second.end == it->first && previous->second.reusable) {
          previous->second.end = it->second.end;
          previous->second.joined = true;
          previous->second.reusable_since = it->second.reusable_since;
          areas_.erase(it);
        }
      }
    }
    if (lazy_pages_ > lazy_max_pages_) purge_lazy(PurgeReason::lazy_limit);
    return std::nullopt;
  }

  void purge_lazy(PurgeReason reason) {
    if (lazy_pages_ == 0) return;
    Purge purge{reason, {}, 0};
    for (auto it = areas_.begin(); it != areas_.end();) {
      if (!it->second.lazy) {
        ++it;
        continue;
      }
      if (!purge.merged.empty() && purge.merged.back().end == it->first)
        purge.merged.back().end = it->second.end;
      else
        purge.merged.push_back({it->first, it->second.end});
      it = areas_.erase(it);
      ++purge.areas;
    }
    lazy_pages_ = 0;
    purges_.push_back(std::move(purge));
  }

  std::uintptr_t start_;
  std::uintptr_t end_;
  std::size_t page_size_;
  std::size_t lazy_max_pages_;
  std::map<std::uintptr_t, Entry> areas_;  // start -> area; live and lazy, never overlapping
  std::size_t lazy_pages_ = 0;             // summed pages of the lazy entries
  std::uint64_t clock_ = 0;                // counts areas made reusable, for recency
  std::vector<Purge> purges_;
};

}  // namespace uvmalloc::testing
