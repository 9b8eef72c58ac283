// A 64 MiB space of plain numbers: allocate, free lazily, read the figures.
#include <uvmalloc/va_space.hpp>

#include <cstdint>
#include <cstdio>
#include <string>
#include <system_error>

namespace {

constexpr std::uintptr_t kMiB = std::uintptr_t{1} << 20;

int fail(const char* what) {
  std::fprintf(stderr, "consumer: %s\n", what);
  return 1;
}

}  // namespace

int main() {
  constexpr std::uintptr_t start = 256 * kMiB;
  auto created = uvmalloc::VaSpace::create({.start = start, .end = start + 64 * kMiB});
  if (!created) return fail(created.error().message().c_str());
  uvmalloc::VaSpace& space = **created;

  // The lowest address that fits and is aligned.
  auto small = space.alloc(1 * kMiB, 4096);         // [start, start + 1 MiB)
  auto large = space.alloc(2 * kMiB, 2 * kMiB);     // [start + 2 MiB, start + 4 MiB)
  if (!small || !large || *small != start || *large != start + 2 * kMiB)
    return fail("alloc did not return the lowest aligned fit");

  // A lazily freed area counts as free, but stays unusable until a purge.
  if (space.free_lazy(*small)) return fail("free_lazy failed");
  if (space.info() != uvmalloc::VmallocInfo{64 * kMiB, 2 * kMiB, 60 * kMiB})
    return fail("info() disagrees with the layout");
  const std::string meminfo = space.meminfo();
  std::fputs(meminfo.c_str(), stdout);
  if (meminfo != "VmallocTotal:      65536 kB\n"
                 "VmallocUsed:        2048 kB\n"
                 "VmallocChunk:      61440 kB\n")
    return fail("meminfo() is not /proc/meminfo's format");

  // Bad input is refused with a code comparable to std::errc.
  if (space.free(*small) != std::errc::invalid_argument)
    return fail("a second free of the same area was accepted");
  auto empty = space.alloc(0, 4096);
  if (empty || empty.error() != std::errc::invalid_argument)
    return fail("alloc(0) was accepted");

  // After the purge the lazily freed range is handed out again.
  space.purge();
  auto again = space.alloc(1 * kMiB, 4096);
  if (!again || *again != start) return fail("purge did not make the range reusable");
  std::puts("consumer: ok");
  return 0;
}
