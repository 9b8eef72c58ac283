// tools/stress.cpp - `uvmalloc stress`: a soak that must never find anything.
//
// Writer threads run a mixed workload on one VaSpace and one Vmalloc at once:
// allocations of random size, alignment and range, frees now and lazy,
// purges, vmalloc/vfree of real pages (some populated) with a tag written
// into every buffer, and deliberately bad calls that must fail with the
// documented error. Reader threads meanwhile call every read path in every
// info mode (info, meminfo, vmallocinfo, for_each_area, find) and check what
// any reader may rely on even mid-write. Every --check-every seconds the
// writers pause and the main thread checks what must be exact when no writer
// runs: all info modes agree, the figures equal the writers' own records,
// every area is found where its owner put it, every buffer still holds its
// tag, check_invariants() passes. The resident set size is sampled at each
// check; a leak shows as growth after the warm-up.
//
// Any violation is counted and the first few printed; the run then ends with
// exit status 1. --faults makes the kernel "refuse" random mprotect, madvise
// and decommit calls (uvmalloc/fault_injection.hpp) throughout.
//
//   uvmalloc stress --seconds 60                       # CI
//   uvmalloc stress --seconds 3600 --threads 2 --faults  # the hour-long soak
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <uvmalloc/errors.hpp>
#include <uvmalloc/fault_injection.hpp>
#include <uvmalloc/va_space.hpp>
#include <uvmalloc/vmalloc.hpp>

#include "cli_common.hpp"
#include "subcommands.hpp"

namespace uvmalloc::tool {
namespace {

using Clock = std::chrono::steady_clock;

constexpr InfoMode kModes[] = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters};

struct StressOptions {
  double seconds = 10;
  unsigned writers = 2;
  unsigned readers = 2;
  double check_every = 1;
  std::uint64_t seed = 1;
  bool faults = false;
  bool json = false;
};

// The synthetic VaSpace: small enough to fill up and fragment, with a low
// lazy limit so purges start by themselves often.
constexpr std::uintptr_t kSpaceStart = std::uintptr_t{1} << 40;
constexpr std::size_t kSpacePage = 4096;
constexpr std::size_t kSpacePages = 1 << 15;
constexpr std::size_t kSpaceLazyMaxPages = 256;
constexpr std::size_t kMaxAreasPerWriter = 512;
// The Vmalloc: committed memory per writer is bounded by these two.
constexpr std::size_t kMaxBuffersPerWriter = 32;
constexpr std::size_t kMaxBufferPages = 64;
constexpr std::size_t kHeapLazyMaxPages = 4096;
constexpr std::size_t kHeapReserve = std::size_t{1} << 32;
constexpr unsigned kViolationsPrinted = 5;

/*** Violations ***/

class Violations {
 public:
  void report(const std::string& what) {
    const std::uint64_t n = count_.fetch_add(1, std::memory_order_relaxed);
    if (n >= kViolationsPrinted) return;
    const std::lock_guard lock(mutex_);
    std::fprintf(stderr, "uvmalloc stress: VIOLATION: %s\n", what.c_str());
    if (first_.empty()) first_ = what;
  }
  [[nodiscard]] std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  [[nodiscard]] std::string first() const {
    const std::lock_guard lock(mutex_);
    return first_;
  }

 private:
  std::atomic<std::uint64_t> count_{0};
  mutable std::mutex mutex_;
  std::string first_;
};

std::string hex(std::uintptr_t value) { return strprintf("0x%lx", static_cast<unsigned long>(value)); }

// Resident set size in bytes, from /proc/self/statm.
std::uint64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

/*** Writers ***/

struct OwnedArea {
  std::uintptr_t start, end;
};
struct OwnedBuffer {
  unsigned char* p;
  std::size_t size;
  unsigned char tag;
};

// What one writer did; the main thread reads it only while the writer is paused.
struct WriterRecord {
  std::vector<OwnedArea> areas;
  std::vector<OwnedBuffer> buffers;
  std::uint64_t allocs = 0, no_space = 0, frees = 0, lazy_frees = 0, purges = 0, bad_calls = 0;
  std::uint64_t reuses = 0, reuse_misses = 0;
  std::uint64_t vmallocs = 0, refused = 0, vfrees = 0;
};

// Writers stop between operations when asked, so the main thread can check
// exact figures. paused counts the writers that are stopped.
struct PauseGate {
  std::atomic<bool> requested{false};
  std::atomic<unsigned> paused{0};

  // Writer side: called between operations.
  void maybe_wait() {
    if (!requested.load(std::memory_order_acquire)) return;
    // release: publishes this writer's records to the checking thread.
    paused.fetch_add(1, std::memory_order_release);
    while (requested.load(std::memory_order_acquire)) requested.wait(true, std::memory_order_acquire);
    paused.fetch_sub(1, std::memory_order_relaxed);
  }
  // Checker side.
  void pause(unsigned writers, const std::atomic<bool>& writers_done) {
    requested.store(true, std::memory_order_release);
    // acquire: pairs with the writers' release, so their records are visible.
    while (paused.load(std::memory_order_acquire) < writers &&
           !writers_done.load(std::memory_order_acquire))
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  void resume() {
    requested.store(false, std::memory_order_release);
    requested.notify_all();
  }
};

struct Shared {
  VaSpace& space;
  Vmalloc& heap;
  Violations& violations;
  PauseGate& gate;
  std::atomic<bool>& stop;
  std::size_t heap_page;
};

bool is_error(std::error_code ec, errc code) { return ec == code && ec.category() == error_category(); }

class Writer {
 public:
  Writer(Shared& shared, WriterRecord& record, std::uint64_t seed)
      : s_(shared), r_(record), rng_(seed) {}

  void run() {
    while (!s_.stop.load(std::memory_order_relaxed)) {
      s_.gate.maybe_wait();
      const unsigned dice = rng_() % 100;
      if (dice < 30) alloc_area();
      else if (dice < 50) free_area();
      else if (dice < 70) vmalloc_buffer();
      else if (dice < 95) vfree_buffer();
      else if (dice < 98) bad_call();
      else purge();
    }
  }

 private:
  void alloc_area() {
    if (r_.areas.size() >= kMaxAreasPerWriter) return free_area();
    const std::size_t size = (1 + rng_() % 16) * kSpacePage - rng_() % 3;
    if (rng_() % 4 == 0) return reuse_area(size);
    const std::size_t align = std::size_t{1} << (rng_() % 18);  // up to 32 pages
    const std::uintptr_t end = s_.space.options().end;
    std::uintptr_t vstart = kSpaceStart, vend = end;
    if (rng_() % 4 == 0) {  // a random sub-range
      vstart = kSpaceStart + rng_() % (kSpacePages / 2) * kSpacePage;
      vend = vstart + (1 + rng_() % (kSpacePages / 2)) * kSpacePage;
    }
    const auto a = s_.space.alloc(size, align, vstart, vend);
    if (!a) {
      if (is_error(a.error(), errc::no_space)) {
        ++r_.no_space;
        return;
      }
      return s_.violations.report("VaSpace::alloc(" + std::to_string(size) + ") failed: " +
                                  a.error().message());
    }
    ++r_.allocs;
    const std::size_t rounded = (size + kSpacePage - 1) / kSpacePage * kSpacePage;
    const std::size_t effective_align = std::max(align, kSpacePage);
    if (*a % effective_align != 0 || *a < vstart || *a + rounded > vend)
      s_.violations.report("VaSpace::alloc gave " + hex(*a) + " outside [" + hex(vstart) + ", " +
                           hex(vend) + ") or misaligned to " + std::to_string(effective_align));
    own(*a, rounded, "allocated");
  }

  // Records [start, start + rounded) as this writer's after checking that
  // find() sees it live at once.
  void own(std::uintptr_t start, std::size_t rounded, const char* how) {
    const auto found = s_.space.find(start + rounded - 1);
    if (!found || found->start != start || found->end != start + rounded)
      s_.violations.report(std::string("find() does not return the area just ") + how + " at " + hex(start));
    r_.areas.push_back({start, start + rounded});
  }

  // Takes back an area freed with free_lazy_reusable, by any writer.
  void reuse_area(std::size_t size) {
    const auto got = s_.space.reuse_lazy(size);
    if (!got) {
      if (is_error(got.error(), errc::nothing_reusable)) {
        ++r_.reuse_misses;
        return;
      }
      return s_.violations.report("VaSpace::reuse_lazy(" + std::to_string(size) + ") failed: " +
                                  got.error().message());
    }
    ++r_.reuses;
    const Area& was = got->was;
    const std::size_t rounded = (size + kSpacePage - 1) / kSpacePage * kSpacePage;
    if (was.end - was.start < rounded || was.start % kSpacePage != 0)
      s_.violations.report("reuse_lazy(" + std::to_string(size) + ") took [" + hex(was.start) + ", " +
                           hex(was.end) + "), too small or misaligned");
    own(was.start, rounded, "reused");
  }

  void free_area() {
    if (r_.areas.empty()) return alloc_area();
    const std::size_t i = rng_() % r_.areas.size();
    const OwnedArea area = r_.areas[i];
    r_.areas[i] = r_.areas.back();
    r_.areas.pop_back();
    const unsigned how = rng_() % 3;  // free, free_lazy, free_lazy_reusable
    const bool lazy = how != 0;
    const std::error_code ec = how == 0   ? s_.space.free(area.start)
                               : how == 1 ? s_.space.free_lazy(area.start)
                                          : s_.space.free_lazy_reusable(area.start);
    if (ec)
      return s_.violations.report(std::string(how == 0 ? "free(" : how == 1 ? "free_lazy(" : "free_lazy_reusable(") +
                                  hex(area.start) + ") of an owned area failed: " + ec.message());
    ++(lazy ? r_.lazy_frees : r_.frees);
  }

  void vmalloc_buffer() {
    if (r_.buffers.size() >= kMaxBuffersPerWriter) return vfree_buffer();
    const std::size_t size = (1 + rng_() % kMaxBufferPages) * s_.heap_page - rng_() % 5;
    const auto flags = rng_() % 4 == 0 ? VmallocFlags::populate : VmallocFlags::none;
    const auto p = s_.heap.vmalloc(size, flags);
    if (!p) {
      // The kernel may refuse (always possible, certain with --faults).
      if (is_error(p.error(), errc::os_refused)) {
        ++r_.refused;
        return;
      }
      return s_.violations.report("vmalloc(" + std::to_string(size) + ") failed: " +
                                  p.error().message());
    }
    ++r_.vmallocs;
    auto* bytes = static_cast<unsigned char*>(*p);
    // Buffers start on a page and tags sit at start, middle and end, so a
    // reused buffer that kept an old tag shows it at some page's first byte,
    // at this middle or at this end.
    bool zero = bytes[size / 2] == 0 && bytes[size - 1] == 0;
    for (std::size_t offset = 0; zero && offset < size; offset += s_.heap_page) zero = bytes[offset] == 0;
    if (!zero)
      s_.violations.report("vmalloc returned memory that is not zero at " + hex(reinterpret_cast<std::uintptr_t>(bytes)));
    const auto tag = static_cast<unsigned char>(1 + rng_() % 255);
    bytes[0] = bytes[size / 2] = bytes[size - 1] = tag;
    r_.buffers.push_back({bytes, size, tag});
  }

  void vfree_buffer() {
    if (r_.buffers.empty()) return vmalloc_buffer();
    const std::size_t i = rng_() % r_.buffers.size();
    const OwnedBuffer buffer = r_.buffers[i];
    r_.buffers[i] = r_.buffers.back();
    r_.buffers.pop_back();
    check_tag(s_, buffer);
    if (const std::error_code ec = s_.heap.vfree(buffer.p))
      return s_.violations.report("vfree of an owned buffer failed: " + ec.message());
    ++r_.vfrees;
  }

  // Calls that must fail with exactly the documented error. Inner addresses
  // (start + 1) can never start an area, whatever other threads do.
  void bad_call() {
    ++r_.bad_calls;
    const std::uintptr_t end = s_.space.options().end;
    switch (rng_() % 8) {
      case 0: return expect_error(error_of(s_.space.alloc(0, 1)), errc::zero_size, "alloc(0, 1)");
      case 1:
        return expect_error(error_of(s_.space.alloc(kSpacePage, 3 << (rng_() % 20))),
                            errc::bad_alignment, "alloc(page, not a power of two)");
      case 2:
        return expect_error(error_of(s_.space.alloc(kSpacePage, 1, end, end + kSpacePage)),
                            errc::bad_range, "alloc(page, 1, end, end + page)");
      case 3:
        return expect_error(error_of(s_.space.alloc(SIZE_MAX - rng_() % 100, 1)),
                            errc::size_overflow, "alloc(SIZE_MAX, 1)");
      case 4: {
        const std::uintptr_t inner =
            r_.areas.empty() ? kSpaceStart + 1 : r_.areas[rng_() % r_.areas.size()].start + 1;
        return expect_error(rng_() % 2 ? s_.space.free(inner) : s_.space.free_lazy(inner),
                            errc::not_an_area, "free of an inner address");
      }
      case 5: return expect_error(error_of(s_.heap.vmalloc(0)), errc::zero_size, "vmalloc(0)");
      case 6:
        return expect_error(error_of(s_.heap.vmalloc(SIZE_MAX)), errc::size_overflow,
                            "vmalloc(SIZE_MAX)");
      default: {
        unsigned char* inner = r_.buffers.empty() ? nullptr : r_.buffers.front().p + 1;
        if (inner == nullptr) return;
        return expect_error(s_.heap.vfree(inner), errc::not_an_area, "vfree of an inner pointer");
      }
    }
  }

  template <class T>
  std::error_code error_of(const std::expected<T, std::error_code>& result) {
    if (result) {
      s_.violations.report("a call that must fail succeeded");
      return {};
    }
    return result.error();
  }

  void expect_error(std::error_code ec, errc code, const char* call) {
    if (!is_error(ec, code))
      s_.violations.report(std::string(call) + " returned '" + ec.message() + "', expected '" +
                           make_error_code(code).message() + "'");
  }

  void purge() {
    ++r_.purges;
    if (rng_() % 2) s_.space.purge();
    else s_.heap.purge();
  }

 public:
  static void check_tag(Shared& s, const OwnedBuffer& buffer) {
    if (buffer.p[0] != buffer.tag || buffer.p[buffer.size / 2] != buffer.tag ||
        buffer.p[buffer.size - 1] != buffer.tag)
      s.violations.report("buffer at " + hex(reinterpret_cast<std::uintptr_t>(buffer.p)) +
                          " lost its contents while its owner held it");
  }

 private:
  Shared& s_;
  WriterRecord& r_;
  std::mt19937_64 rng_;
};

/*** Readers ***/

// What any reader may rely on even while writers run: an RCU walk is not a
// snapshot, but it only ever sees areas in address order, inside the space,
// so its figures cannot add up to more than the space.
void check_figures(Violations& violations, const VaSpace& space, const VmallocInfo& info,
                   InfoMode mode) {
  const VaSpaceOptions& o = space.options();
  if (info.total != o.end - o.start || info.used > info.total ||
      info.largest_chunk > info.total - info.used)
    violations.report(strprintf("info(%s) = {total %zu, used %zu, largest_chunk %zu} does not "
                                "fit a space of %zu bytes",
                                std::string(mode_name(mode)).c_str(), info.total, info.used,
                                info.largest_chunk, static_cast<std::size_t>(o.end - o.start)));
}

void check_walk(Violations& violations, const VaSpace& space) {
  const VaSpaceOptions& o = space.options();
  std::uintptr_t previous_end = o.start;
  bool ordered = true;
  space.for_each_area([&](const AreaInfo& area) {
    if (area.start < previous_end || area.end <= area.start || area.end > o.end) ordered = false;
    previous_end = area.end;
  });
  if (!ordered) violations.report("for_each_area() saw areas out of order, overlapping or outside the space");
}

void check_vmallocinfo(Violations& violations, const VaSpace& space) {
  const std::string text = space.vmallocinfo();
  std::uintptr_t previous_end = space.options().start;
  std::size_t at = 0;
  while (at < text.size()) {
    unsigned long start = 0, end = 0, size = 0;
    if (std::sscanf(text.c_str() + at, "0x%lx-0x%lx %lu", &start, &end, &size) != 3 ||
        start < previous_end || end <= start || size != end - start) {
      violations.report("vmallocinfo() line is malformed or out of order: " +
                        text.substr(at, text.find('\n', at) - at));
      return;
    }
    previous_end = end;
    const std::size_t eol = text.find('\n', at);
    if (eol == std::string::npos) {
      violations.report("vmallocinfo() does not end its last line");
      return;
    }
    at = eol + 1;
  }
}

void read_until_stopped(const VaSpace& space, const VaSpace& heap_space, Violations& violations,
                        const std::atomic<bool>& stop, std::atomic<std::uint64_t>& reads,
                        std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uint64_t n = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    for (const VaSpace* target : {&space, &heap_space}) {
      for (InfoMode mode : kModes) check_figures(violations, *target, target->info(mode), mode);
      const std::string meminfo = target->meminfo();
      if (!meminfo.starts_with("VmallocTotal:") || std::ranges::count(meminfo, '\n') != 3)
        violations.report("meminfo() is not three lines: " + meminfo);
      check_walk(violations, *target);
      if (rng() % 8 == 0) check_vmallocinfo(violations, *target);
      const VaSpaceOptions& o = target->options();
      const std::uintptr_t probe = o.start + rng() % (o.end - o.start);
      if (const auto area = target->find(probe); area && !(area->start <= probe && probe < area->end))
        violations.report("find(" + hex(probe) + ") returned an area not holding it");
      n += 7;
    }
  }
  reads.fetch_add(n, std::memory_order_relaxed);
}

/*** Checks with the writers paused ***/

void check_quiet_space(Violations& violations, const VaSpace& space, const char* name,
                       std::uint64_t expected_used) {
  const VmallocInfo locked = space.info(InfoMode::locked);
  for (InfoMode mode : kModes)
    if (space.info(mode) != locked)
      violations.report(strprintf("%s: info(%s) differs from info(locked) with no writer running",
                                  name, std::string(mode_name(mode)).c_str()));
  if (locked.used != expected_used)
    violations.report(strprintf("%s: used is %zu bytes, the writers own %llu", name, locked.used,
                                static_cast<unsigned long long>(expected_used)));
  if (const std::string problem = space.check_invariants(); !problem.empty())
    violations.report(std::string(name) + ": check_invariants(): " + problem);
}

void check_quiet(Shared& s, const std::vector<WriterRecord>& records) {
  std::uint64_t area_bytes = 0, buffers = 0, buffer_bytes = 0;
  for (const WriterRecord& record : records) {
    for (const OwnedArea& area : record.areas) {
      area_bytes += area.end - area.start;
      const auto found = s.space.find(area.start);
      if (!found || found->start != area.start || found->end != area.end)
        s.violations.report("an owned area at " + hex(area.start) + " is not found where its owner put it");
    }
    for (const OwnedBuffer& buffer : record.buffers) {
      Writer::check_tag(s, buffer);
      buffer_bytes += (buffer.size + s.heap_page - 1) / s.heap_page * s.heap_page;
    }
    buffers += record.buffers.size();
  }
  check_quiet_space(s.violations, s.space, "VaSpace", area_bytes);
  const VmallocStats stats = s.heap.stats();
  if (stats.areas_live != buffers || stats.bytes_live != buffer_bytes)
    s.violations.report(strprintf("Vmalloc: stats say %llu buffers / %llu bytes live, the writers own %llu / %llu",
                                  static_cast<unsigned long long>(stats.areas_live),
                                  static_cast<unsigned long long>(stats.bytes_live),
                                  static_cast<unsigned long long>(buffers),
                                  static_cast<unsigned long long>(buffer_bytes)));
  // Each buffer's area carries one guard page. Runs parked by the quarantine
  // (--faults) hold areas of their own until their decommit succeeds.
  const std::uint64_t heap_used = buffer_bytes + buffers * s.heap_page;
  if (stats.quarantined_bytes == 0)
    check_quiet_space(s.violations, s.heap.space(), "Vmalloc's space", heap_used);
}

/*** The run ***/

struct RssSample {
  double at_seconds;
  std::uint64_t bytes;
};

// Growth of the resident set between the middle and the last third of the
// run (the first third is warm-up): the workload is bounded, so a steady
// state must hold.
struct RssTrend {
  std::uint64_t start = 0, peak = 0, end = 0, middle_max = 0, last_max = 0;
  [[nodiscard]] std::int64_t growth() const {
    return static_cast<std::int64_t>(last_max) - static_cast<std::int64_t>(middle_max);
  }
};

RssTrend trend_of(const std::vector<RssSample>& samples, double seconds) {
  RssTrend t;
  if (samples.empty()) return t;
  t.start = samples.front().bytes;
  t.end = samples.back().bytes;
  for (const RssSample& sample : samples) {
    t.peak = std::max(t.peak, sample.bytes);
    if (sample.at_seconds >= seconds / 3 && sample.at_seconds < 2 * seconds / 3)
      t.middle_max = std::max(t.middle_max, sample.bytes);
    else if (sample.at_seconds >= 2 * seconds / 3)
      t.last_max = std::max(t.last_max, sample.bytes);
  }
  return t;
}

void inject_faults_until_stopped(const std::atomic<bool>& stop, std::atomic<std::uint64_t>& armed,
                                 std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  constexpr fault::OsCall kinds[] = {fault::OsCall::commit, fault::OsCall::populate,
                                     fault::OsCall::decommit, fault::OsCall::guard};
  while (!stop.load(std::memory_order_relaxed)) {
    fault::inject(kinds[rng() % std::size(kinds)], static_cast<unsigned>(rng() % 8), 1, rng() % 2 ? ENOMEM : EAGAIN);
    armed.fetch_add(1, std::memory_order_relaxed);
    std::this_thread::sleep_for(std::chrono::milliseconds(2 + rng() % 8));
  }
  fault::clear();
}

std::string mib(std::uint64_t bytes) { return strprintf("%.1f MiB", static_cast<double>(bytes) / (1 << 20)); }

void run(const StressOptions& options) {
  VaSpaceOptions space_options;
  space_options.start = kSpaceStart;
  space_options.end = kSpaceStart + kSpacePages * kSpacePage;
  space_options.page_size = kSpacePage;
  space_options.lazy_max_pages = kSpaceLazyMaxPages;
  auto space = VaSpace::create(space_options);
  if (!space) throw std::runtime_error("VaSpace::create: " + space.error().message());
  VmallocOptions heap_options;
  heap_options.reserve = kHeapReserve;
  heap_options.lazy_max_pages = kHeapLazyMaxPages;
  auto heap = Vmalloc::create(heap_options);
  if (!heap) throw std::runtime_error("Vmalloc::create: " + heap.error().message());

  Violations violations;
  PauseGate gate;
  std::atomic<bool> stop_writers{false}, writers_done{false}, stop_readers{false};
  Shared shared{**space, **heap, violations, gate, stop_writers,
                static_cast<std::size_t>(sysconf(_SC_PAGESIZE))};
  std::vector<WriterRecord> records(options.writers);
  std::atomic<std::uint64_t> reads{0}, faults_armed{0};

  const std::uint64_t rss_before = resident_bytes();
  std::vector<RssSample> rss{{0, rss_before}};
  const auto started = Clock::now();
  std::vector<std::thread> writers, readers;
  for (unsigned w = 0; w < options.writers; ++w)
    writers.emplace_back([&, w] { Writer(shared, records[w], options.seed * 1000 + w).run(); });
  for (unsigned r = 0; r < options.readers; ++r)
    readers.emplace_back(read_until_stopped, std::cref(**space), std::cref((*heap)->space()),
                         std::ref(violations), std::cref(stop_readers), std::ref(reads),
                         options.seed * 2000 + r);
  std::thread faults;
  if (options.faults)
    faults = std::thread(inject_faults_until_stopped, std::cref(stop_readers),
                         std::ref(faults_armed), options.seed * 3000);

  const auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - started).count(); };
  const auto total_checks = static_cast<std::size_t>(options.seconds / options.check_every);
  Progress progress("uvmalloc stress", options.seconds);
  std::uint64_t checks = 0;
  while (elapsed() < options.seconds) {
    const double next = std::min(options.seconds, (checks + 1) * options.check_every);
    std::this_thread::sleep_for(std::chrono::duration<double>(std::max(0.0, next - elapsed())));
    gate.pause(options.writers, writers_done);
    check_quiet(shared, records);
    gate.resume();
    ++checks;
    rss.push_back({elapsed(), resident_bytes()});
    progress.update(checks, total_checks,
                    strprintf("%llu violations, RSS %s", static_cast<unsigned long long>(violations.count()),
                              mib(rss.back().bytes).c_str()));
  }
  stop_writers.store(true, std::memory_order_relaxed);
  for (auto& t : writers) t.join();
  writers_done.store(true, std::memory_order_release);
  stop_readers.store(true, std::memory_order_relaxed);
  for (auto& t : readers) t.join();
  if (faults.joinable()) faults.join();
  fault::clear();
  const double seconds = elapsed();

  // Quiet at last: give everything back and prove nothing remains.
  check_quiet(shared, records);
  for (WriterRecord& record : records) {
    for (const OwnedArea& area : record.areas)
      if ((*space)->free(area.start)) violations.report("final free of an owned area failed");
    for (const OwnedBuffer& buffer : record.buffers)
      if ((*heap)->vfree(buffer.p)) violations.report("final vfree of an owned buffer failed");
    record.areas.clear();
    record.buffers.clear();
  }
  (*space)->purge();
  (*heap)->purge();  // also retries anything the faults left quarantined
  (*heap)->purge();
  check_quiet(shared, records);
  const VmallocStats heap_stats = (*heap)->stats();
  if (heap_stats.quarantined_bytes != 0)
    violations.report("Vmalloc still quarantines " + std::to_string(heap_stats.quarantined_bytes) +
                      " bytes with the kernel willing again");
  const std::uint64_t rss_after_purge = resident_bytes();

  WriterRecord total;
  for (const WriterRecord& r : records) {
    total.allocs += r.allocs;
    total.no_space += r.no_space;
    total.frees += r.frees;
    total.lazy_frees += r.lazy_frees;
    total.reuses += r.reuses;
    total.reuse_misses += r.reuse_misses;
    total.purges += r.purges;
    total.bad_calls += r.bad_calls;
    total.vmallocs += r.vmallocs;
    total.refused += r.refused;
    total.vfrees += r.vfrees;
  }
  const RssTrend trend = trend_of(rss, options.seconds);
  // A bounded workload reaches its steady state in the first third; what
  // grows after that, beyond noise, is a leak.
  const std::int64_t allowed_growth =
      std::max<std::int64_t>(32 << 20, static_cast<std::int64_t>(trend.middle_max / 4));
  if (options.seconds >= 15 && trend.middle_max != 0 && trend.growth() > allowed_growth)
    violations.report("resident memory grew by " + mib(static_cast<std::uint64_t>(trend.growth())) +
                      " between the middle and the last third of the run");
  const VaSpaceStats space_stats = (*space)->stats();

  if (options.json) {
    nlohmann::json out = {
        {"seconds", seconds},
        {"writers", options.writers},
        {"readers", options.readers},
        {"seed", options.seed},
        {"faults", options.faults},
        {"va_space", {{"allocs", total.allocs}, {"no_space", total.no_space}, {"frees", total.frees},
                      {"lazy_frees", total.lazy_frees}, {"reuses", total.reuses},
                      {"reuse_misses", total.reuse_misses}, {"purges", space_stats.purges},
                      {"bad_calls", total.bad_calls}}},
        {"vmalloc", {{"vmallocs", total.vmallocs}, {"reused", heap_stats.reuses},
                     {"refused", total.refused}, {"vfrees", total.vfrees},
                     {"purges", heap_stats.purges}, {"unmap_calls", heap_stats.unmap_calls},
                     {"decommit_failures", heap_stats.decommit_failures}}},
        {"reader_calls", reads.load(std::memory_order_relaxed)},
        {"checks", checks},
        {"faults_armed", faults_armed.load(std::memory_order_relaxed)},
        {"rss", {{"before", rss_before}, {"start", trend.start}, {"peak", trend.peak},
                 {"end", trend.end}, {"middle_third_max", trend.middle_max},
                 {"last_third_max", trend.last_max}, {"after_purge", rss_after_purge},
                 {"samples", rss.size()}}},
        {"violations", violations.count()},
    };
    std::cout << out.dump(2) << '\n';
  } else {
    const auto n = [](std::uint64_t v) { return format_cell(static_cast<std::int64_t>(v), Format::integer); };
    std::cout << strprintf("uvmalloc stress: %.1f s, %u writer and %u reader threads, seed %llu%s\n",
                           seconds, options.writers, options.readers,
                           static_cast<unsigned long long>(options.seed),
                           options.faults ? ", kernel faults injected" : "")
              << "  VaSpace   " << n(total.allocs) << " allocs (" << n(total.no_space) << " no_space), "
              << n(total.frees) << " frees, " << n(total.lazy_frees) << " lazy frees, "
              << n(total.reuses) << " reuses (" << n(total.reuse_misses) << " found none), "
              << n(space_stats.purges) << " purges, " << n(total.bad_calls) << " bad calls refused\n"
 << "  Vmalloc   " << n(total.vmallocs) << " vmallocs (" << n(heap_stats.reuses) << " reused, "
              << n(total.refused) << " refused by the kernel), " << n(total.vfrees) << " vfrees, " << n(heap_stats.purges)
              << " purges in " << n(heap_stats.unmap_calls) << " calls, "
              << n(heap_stats.decommit_failures) << " decommit failures\n"
              << "  readers   " << n(reads.load(std::memory_order_relaxed))
              << " calls: info in every mode, meminfo, for_each_area, vmallocinfo, find\n"
              << "  checks    " << n(checks) << " with the writers paused, one more after the run\n";
    if (options.faults)
      std::cout << "  faults    " << n(faults_armed.load(std::memory_order_relaxed))
                << " failures armed (mprotect, madvise, decommit, guard)\n";
    std::cout << "  RSS       start " << mib(trend.start) << ", peak " << mib(trend.peak) << ", end "
              << mib(trend.end) << "; max of the middle third " << mib(trend.middle_max)
              << ", of the last third " << mib(trend.last_max) << "; after freeing all "
              << mib(rss_after_purge) << "\n"
              << "  result    " << (violations.count() == 0 ? "OK, no violations" : "FAILED") << '\n';
  }
  if (violations.count() != 0)
    throw std::runtime_error(std::to_string(violations.count()) + " violation(s); first: " + violations.first());
}

}  // namespace

void register_stress(CLI::App& root) {
  auto options = std::make_shared<StressOptions>();
  CLI::App* sub = root.add_subcommand(
      "stress", "Soak: mixed VaSpace/Vmalloc writers and readers in every mode, invariants "
                "checked periodically, RSS sampled; exits 1 on any violation");
  add_seconds_option(*sub, "--seconds", options->seconds, "How long to run", 7 * 24 * 3600);
  sub->add_option_function<std::string>(
         "--threads",
         [options](const std::string& text) {
           options->writers = static_cast<unsigned>(parse_count("--threads", text, 1, 256));
         },
         "Writer threads")
      ->default_str("2")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--readers",
         [options](const std::string& text) {
           options->readers = static_cast<unsigned>(parse_count("--readers", text, 0, 256));
         },
         "Reader threads, each cycling through every read path and info mode")
      ->default_str("2")
      ->type_name("N");
  add_seconds_option(*sub, "--check-every", options->check_every,
                     "Pause the writers and check exact figures this often", 3600);
  sub->add_option_function<std::string>(
         "--seed",
         [options](const std::string& text) {
           options->seed = parse_count("--seed", text, 0, UINT64_MAX);
         },
         "Seed of the workload's random choices")
      ->default_str("1")
      ->type_name("N");
  sub->add_flag("--faults", options->faults,
                "Make random mprotect/madvise/decommit/guard calls fail (fault injection) throughout");
  sub->add_flag("--json", options->json, "Print the summary as one JSON object");
  sub->callback([options] { run(*options); });
}

}  // namespace uvmalloc::tool
