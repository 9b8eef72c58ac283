// errors.cpp - uvmalloc's error category (see include/uvmalloc/errors.hpp).
#include "uvmalloc/errors.hpp"

#include <string>

namespace uvmalloc {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "uvmalloc"; }

  // Each message says what was wrong and what to do; docs/ERRORS.md says the same.
  std::string message(int code) const override {
    switch (static_cast<errc>(code)) {
      case errc::zero_size:
        return "size is 0: ask for at least one byte";
      case errc::bad_alignment:
        return "alignment is not a power of two: pass 1, 2, 4, ... (page alignment is implied)";
      case errc::bad_range:
        return "bad range: need vstart < vend and [vstart, vend) inside the space's [start, end)";
      case errc::size_overflow:
        return "size overflows when rounded up to a whole page: ask for less";
      case errc::not_an_area:
        return "address is not the start of a live area (inner, unknown, or already freed): "
               "pass the exact address alloc returned, once";
      case errc::bad_options:
        return "bad options: page_size must be a power of two, start and end multiples of it, "
               "end > start; Vmalloc's reserve a multiple of the page size with room for one "
               "page and its guard";
      case errc::no_space:
        return "no free range fits, even after purging lazily freed areas: free areas, "
               "ask for less, or use a larger space";
      case errc::os_refused:
        return "the kernel refused memory (mmap/mprotect/madvise failed): free memory or raise "
               "limits (ulimit -v, vm.max_map_count, overcommit)";
      case errc::nothing_reusable:
        return "no reusable lazily freed area is large enough: take fresh space with alloc";
    }
    return "unknown uvmalloc error";
  }

  // Every code is equivalent to the std::errc the contract names.
  std::error_condition default_error_condition(int code) const noexcept override {
    switch (static_cast<errc>(code)) {
      case errc::zero_size:
      case errc::bad_alignment:
      case errc::bad_range:
      case errc::size_overflow:
      case errc::not_an_area:
      case errc::bad_options:
        return std::make_error_condition(std::errc::invalid_argument);
      case errc::no_space:
      case errc::os_refused:
      case errc::nothing_reusable:
        return std::make_error_condition(std::errc::not_enough_memory);
    }
    return std::error_condition(code, *this);
  }
};

}  // namespace

const std::error_category& error_category() noexcept {
  static const Category category;
  return category;
}

std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

}  // namespace uvmalloc
