// os_pages.cpp - uvmalloc's system calls for memory, and the fault-injection
// seam in front of them (uvmalloc/fault_injection.hpp).
#include "os_pages.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "uvmalloc/fault_injection.hpp"

/*** Fault injection ***/

namespace uvmalloc::fault {
namespace {

// One per OsCall. A call fails when its index (the count of calls of its
// kind before it) lies in [fail_from, fail_until). inject() computes the
// window from the count at the time it is armed.
struct Injection {
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> fail_from{0};
  std::atomic<std::uint64_t> fail_until{0};
  std::atomic<int> err{0};
};

constexpr std::size_t kOsCallKinds = 6;
std::array<Injection, kOsCallKinds> g_injections;
// Bit k set while kind k is armed; the only thing an unarmed call reads.
std::atomic<unsigned> g_armed_kinds{0};

Injection& injection_for(OsCall call) { return g_injections[static_cast<std::size_t>(call)]; }

unsigned bit_for(OsCall call) { return 1u << static_cast<unsigned>(call); }

}  // namespace

void inject(OsCall call, unsigned skip, unsigned count, int err) {
  Injection& injection = injection_for(call);
  g_armed_kinds.fetch_and(~bit_for(call), std::memory_order_relaxed);
  if (count == 0) return;
  const std::uint64_t first = injection.calls.load(std::memory_order_relaxed) + skip;
  injection.fail_from.store(first, std::memory_order_relaxed);
  injection.fail_until.store(first + count, std::memory_order_relaxed);
  injection.err.store(err, std::memory_order_relaxed);
  // Release: a call that sees the bit also sees the window and errno above.
  g_armed_kinds.fetch_or(bit_for(call), std::memory_order_release);
}

void clear() {
  g_armed_kinds.store(0, std::memory_order_relaxed);
  for (Injection& injection : g_injections) injection.calls.store(0, std::memory_order_relaxed);
}

std::uint64_t calls(OsCall call) {
  return injection_for(call).calls.load(std::memory_order_relaxed);
}

// Counts the call and returns the errno it must fail with, or 0 to go ahead.
static int injected_errno(OsCall call) {
  Injection& injection = injection_for(call);
  const std::uint64_t index = injection.calls.fetch_add(1, std::memory_order_relaxed);
  if ((g_armed_kinds.load(std::memory_order_relaxed) & bit_for(call)) == 0) return 0;
  // Acquire: pairs with inject()'s release, so the window read below is the armed one.
  std::atomic_thread_fence(std::memory_order_acquire);
  const bool fails = index >= injection.fail_from.load(std::memory_order_relaxed) &&
                     index < injection.fail_until.load(std::memory_order_relaxed);
  return fails ? injection.err.load(std::memory_order_relaxed) : 0;
}

}  // namespace uvmalloc::fault

/*** System calls ***/

namespace uvmalloc::os {
namespace {

using fault::OsCall;

std::error_code errno_code(int err) { return {err, std::system_category()}; }

// A fresh reserved mapping: no access, no commit charge, no pages.
constexpr int kReservedProt = PROT_NONE;
constexpr int kReservedFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

// Cleared the first time the kernel answers MADV_POPULATE_WRITE with EINVAL
// (older than 5.14), so later populates go straight to the fallback.
std::atomic<bool> g_madv_populate_write_works{true};

}  // namespace

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

std::expected<void*, std::error_code> reserve(std::size_t bytes) {
  if (const int err = fault::injected_errno(OsCall::reserve)) return std::unexpected(errno_code(err));
  void* start = ::mmap(nullptr, bytes, kReservedProt, kReservedFlags, -1, 0);
  if (start == MAP_FAILED) return std::unexpected(errno_code(errno));
  return start;
}

std::error_code commit(void* start, std::size_t bytes) {
  if (const int err = fault::injected_errno(OsCall::commit)) return errno_code(err);
  if (::mprotect(start, bytes, PROT_READ | PROT_WRITE) != 0) return errno_code(errno);
  return {};
}

std::error_code populate(void* start, std::size_t bytes) {
  if (const int err = fault::injected_errno(OsCall::populate)) return errno_code(err);
  if (g_madv_populate_write_works.load(std::memory_order_relaxed)) {
    if (::madvise(start, bytes, MADV_POPULATE_WRITE) == 0) return {};
    if (errno != EINVAL) return errno_code(errno);
    g_madv_populate_write_works.store(false, std::memory_order_relaxed);
  }
  // The range was committed a moment ago and nobody has touched it yet, so
  // replacing it with a populated mapping loses nothing. MAP_POPULATE does not
  // report pages it could not fault in; they fault on first touch instead.
  void* mapped = ::mmap(start, bytes, PROT_READ | PROT_WRITE, kReservedFlags | MAP_FIXED | MAP_POPULATE,
                        -1, 0);
  if (mapped == MAP_FAILED) return errno_code(errno);
  return {};
}

std::error_code decommit(void* start, std::size_t bytes) {
  if (const int err = fault::injected_errno(OsCall::decommit)) return errno_code(err);
  if (::mmap(start, bytes, kReservedProt, kReservedFlags | MAP_FIXED, -1, 0) == MAP_FAILED) {
    return errno_code(errno);
  }
  return {};
}

std::error_code guard(void* start, std::size_t bytes) {
  if (const int err = fault::injected_errno(OsCall::guard)) return errno_code(err);
  if (::mmap(start, bytes, kReservedProt, kReservedFlags | MAP_FIXED, -1, 0) == MAP_FAILED) {
    return errno_code(errno);
  }
  return {};
}

std::error_code uncommit(void* start, std::size_t bytes) {
  if (const int err = fault::injected_errno(OsCall::decommit)) return errno_code(err);
  if (::mprotect(start, bytes, PROT_NONE) != 0) return errno_code(errno);
  if (::madvise(start, bytes, MADV_DONTNEED) != 0) return errno_code(errno);
  return {};
}

void discard(void* start, std::size_t bytes) noexcept {
  // Nothing to do on failure: the caller already treats the range as unusable.
  (void)::madvise(start, bytes, MADV_DONTNEED);
}

void zero(void* start, std::size_t bytes) noexcept {
  const std::size_t page = page_size();
  constexpr std::size_t kChunkPages = 4096;  // one mincore() call's worth
  std::array<unsigned char, kChunkPages> resident{};
  auto* const base = static_cast<unsigned char*>(start);
  for (std::size_t done = 0; done < bytes;) {
    const std::size_t chunk = std::min(bytes - done, kChunkPages * page);
    unsigned char* const at = base + done;
    const std::size_t pages = chunk / page;
    if (::mincore(at, chunk, resident.data()) != 0) {
      std::memset(at, 0, chunk);
      done += chunk;
      continue;
    }
    for (std::size_t i = 0; i < pages;) {
      const bool present = resident[i] & 1;
      std::size_t j = i + 1;
      while (j < pages && (resident[j] & 1) == present) ++j;
      unsigned char* const run = at + i * page;
      const std::size_t run_bytes = (j - i) * page;
      if (present || j - i < kDropRunPages || ::madvise(run, run_bytes, MADV_DONTNEED) != 0) {
        std::memset(run, 0, run_bytes);
      }
      i = j;
    }
    done += chunk;
  }
}

std::error_code release(void* start, std::size_t bytes) {
  if (const int err = fault::injected_errno(OsCall::release)) return errno_code(err);
  if (::munmap(start, bytes) != 0) return errno_code(errno);
  return {};
}

}  // namespace uvmalloc::os
