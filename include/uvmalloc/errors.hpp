// uvmalloc/errors.hpp - the error codes uvmalloc returns.
//
// Every error is a std::error_code of uvmalloc's category. Each code compares
// equal to the std::errc the contract names (invalid_argument or
// not_enough_memory), so `ec == std::errc::invalid_argument` works, while
// ec.message() says exactly what was wrong and what to do.
// docs/ERRORS.md lists them all.
#pragma once

#include <system_error>

namespace uvmalloc {

enum class errc {
  // invalid_argument
  zero_size = 1,           // alloc(0, ...)
  bad_alignment,           // align is not a power of two
  bad_range,               // vstart >= vend, or [vstart, vend) outside the space
  size_overflow,           // size rounded up to a page overflows
  not_an_area,             // free/free_lazy of an address that starts no live area
  bad_options,             // create() options inconsistent
  // not_enough_memory
  no_space,                // no fit, even after purging lazily freed areas
  os_refused,              // the kernel refused memory (mmap/mprotect/madvise failed)
  nothing_reusable,        // reuse_lazy: no reusable lazily freed area is large enough
};

[[nodiscard]] const std::error_category& error_category() noexcept;
[[nodiscard]] std::error_code make_error_code(errc e) noexcept;

}  // namespace uvmalloc

template <>
struct std::is_error_code_enum<uvmalloc::errc> : std::true_type {};
