// tools/bench_accuracy.cpp - `uvmalloc bench accuracy`: the seed's review
// question made measurable. While writers run, how far is an info() reading
// from the true figures at some instant during the read?
//
// How the truth is known without touching the path under test: the writers
// serialise on a mutex of this benchmark (not the space's lock), and after
// each operation on the space they update a reference of their own (live
// areas by address and the multiset of gaps between them) and append the
// exact (used, largest_chunk) to a log, numbered by state:
//
//   writer, under bench_mutex:  op on space -> reference -> log[k] -> publish k
//   reader:  s0 = published; r = space.info(mode); s1 = published
//
// The space was in state s0 or s0 + 1 when the read began (op s0 + 1 may be
// done but not yet published; op s0 + 2 waits for the mutex) and in s1 or
// s1 + 1 when it ended, so every state the read overlapped is in
// [s0, s1 + 1]. The error of a read is its distance to the nearest state in
// that window, for each figure separately (worked out after the run, once
// the log is complete, so readers only read). The window may hold one state the
// read did not overlap, so errors are exact to within one update, never
// overstated. locked and counters read one instant and must show zero.
//
// The layout is packed: N live areas of 1-4 pages with 1-4 page holes and no
// free tail, so largest_chunk is an interior hole that writers keep changing.
#include <atomic>
#include <chrono>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "cli_common.hpp"
#include "contention.hpp"
#include "layouts.hpp"
#include "subcommands.hpp"

namespace uvmalloc::tool {
namespace {

constexpr std::uintptr_t kSpaceStart = std::uintptr_t{1} << 32;

struct TrueFigures {
  std::size_t used;
  std::size_t largest_chunk;
};

// The figures as DESIGN 1 defines them, kept by the writers from what they
// did: live areas by address and every gap between neighbours (the range's
// ends count as neighbours), so both figures are exact after each operation.
class ReferenceFigures {
 public:
  ReferenceFigures(std::uintptr_t start, std::uintptr_t end) : start_(start), end_(end) {
    gaps_.insert(end - start);
  }

  void add(std::uintptr_t start, std::uintptr_t end) {
    const auto next = live_.lower_bound(start);
    const std::uintptr_t gap_start = next == live_.begin() ? start_ : std::prev(next)->second;
    const std::uintptr_t gap_end = next == live_.end() ? end_ : next->first;
    erase_gap(gap_end - gap_start);
    gaps_.insert(start - gap_start);
    gaps_.insert(gap_end - end);
    live_.emplace_hint(next, start, end);
    used_ += end - start;
  }

  void remove(std::uintptr_t start) {
    const auto area = live_.find(start);
    const std::uintptr_t end = area->second;
    const std::uintptr_t gap_start = area == live_.begin() ? start_ : std::prev(area)->second;
    const auto next = std::next(area);
    const std::uintptr_t gap_end = next == live_.end() ? end_ : next->first;
    erase_gap(start - gap_start);
    erase_gap(gap_end - end);
    gaps_.insert(gap_end - gap_start);
    live_.erase(area);
    used_ -= end - start;
  }

  [[nodiscard]] TrueFigures figures() const { return {used_, *gaps_.rbegin()}; }

 private:
  void erase_gap(std::size_t size) { gaps_.erase(gaps_.find(size)); }

  std::uintptr_t start_;
  std::uintptr_t end_;
  std::map<std::uintptr_t, std::uintptr_t> live_;  // start -> end
  std::multiset<std::size_t> gaps_;                // includes empty gaps
  std::size_t used_ = 0;
};

// Every state the space went through, by number; append-only, so a reader
// may read any published state without a lock while writers append.
class TruthLog {
 public:
  explicit TruthLog(TrueFigures initial) { append_locked(initial, 0); }

  // TruthLog::append() - state published() + 1. Writers must be serialised
  // (bench_mutex). Returns false when the log is full; the run then stops.
  [[nodiscard]] bool append(TrueFigures figures) {
    const std::uint64_t next = published_.load(std::memory_order_relaxed) + 1;
    if (next >= kChunkStates * kMaxChunks) return false;
    append_locked(figures, next);
    return true;
  }

  // acquire: pairs with the release in append_locked(), so every state up
  // to the returned number is readable.
  [[nodiscard]] std::uint64_t published() const noexcept {
    return published_.load(std::memory_order_acquire);
  }
  [[nodiscard]] const TrueFigures& at(std::uint64_t state) const noexcept {
    return chunks_[state / kChunkStates][state % kChunkStates];
  }

 private:
  static constexpr std::uint64_t kChunkStates = std::uint64_t{1} << 16;
  static constexpr std::uint64_t kMaxChunks = 4096;  // 2^28 states, allocated as needed

  void append_locked(TrueFigures figures, std::uint64_t state) {
    auto& chunk = chunks_[state / kChunkStates];
    if (!chunk) chunk = std::make_unique<TrueFigures[]>(kChunkStates);
    chunk[state % kChunkStates] = figures;
    // release: the state (and its chunk) is written before it is announced.
    published_.store(state, std::memory_order_release);
  }

  std::array<std::unique_ptr<TrueFigures[]>, kMaxChunks> chunks_;
  std::atomic<std::uint64_t> published_{0};
};

struct AccuracyOptions {
  std::vector<InfoMode> modes = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters};
  unsigned writers = 1;
  unsigned readers = 1;
  std::uint64_t areas = 10'000;
  double seconds = 2;
  WriterFree free = WriterFree::now;
  OutputOptions output;
};

// What a reader saw and the published states around its read; errors are
// worked out after the run, so the reader's loop does nothing but read.
struct RawRead {
  std::size_t used;
  std::size_t largest_chunk;
  std::uint64_t first;           // published before the read
  std::uint64_t last_published;  // published after it
};
// 32 MiB of reads per reader is plenty for a few seconds of walks.
constexpr std::size_t kMaxReadsPerReader = std::size_t{1} << 20;

// One read's distance to the nearest true state in its window.
struct ReadError {
  double used_bytes;
  double used_percent;
  double chunk_bytes;
  double chunk_percent;
  bool matches_one_state;  // both figures equal one state's
  std::uint64_t window;    // states in [s0, s1 + 1]
};

struct Packed {
  std::unique_ptr<VaSpace> space;
  std::vector<std::uintptr_t> live;
  std::uintptr_t end;
};

// N live areas with a hole after each and no tail: allocate 2N areas of 1-4
// pages into a space exactly their size, free every other one.
Packed make_packed(std::uint64_t areas, InfoMode mode) {
  bench::PageSizeStream sizes(42);
  std::vector<std::size_t> bytes(2 * areas);
  std::size_t total = 0;
  for (auto& size : bytes) total += size = sizes.next_bytes();
  auto space = VaSpace::create({.start = kSpaceStart,
                                .end = kSpaceStart + total,
                                .page_size = bench::kPageSize,
                                .info_mode = mode,
                                .lazy_max_pages = 0,
                                .on_purge = {}});
  if (!space) throw std::runtime_error("VaSpace::create: " + space.error().message());
  Packed packed{std::move(*space), {}, kSpaceStart + total};
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const auto start = packed.space->alloc(bytes[i], bench::kPageSize);
    if (!start) throw std::runtime_error("building the layout: " + start.error().message());
    if (i % 2 == 0) {
      packed.live.push_back(*start);
    } else if (const auto error = packed.space->free(*start)) {
      throw std::runtime_error("building the layout: " + error.message());
    }
  }
  return packed;
}

void check_at_rest(const VaSpace& space, const ReferenceFigures& reference,
                   std::string_view when) {
  const TrueFigures truth = reference.figures();
  for (const InfoMode mode : {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters}) {
    const VmallocInfo info = space.info(mode);
    if (info.used != truth.used || info.largest_chunk != truth.largest_chunk) {
      throw std::runtime_error(strprintf(
          "core bug: %.*s, with no writer running, info(%s) says used %zu, largest_chunk %zu; "
          "the reference says %zu, %zu",
          static_cast<int>(when.size()), when.data(), std::string(mode_name(mode)).c_str(),
          info.used, info.largest_chunk, truth.used, truth.largest_chunk));
    }
  }
}

double distance(std::size_t seen, std::size_t truth) {
  return seen > truth ? static_cast<double>(seen - truth) : static_cast<double>(truth - seen);
}

// A read's distance to the nearest state in [read.first, last], per figure.
ReadError error_of(const RawRead& read, const TruthLog& log, std::uint64_t last) {
  ReadError error{.used_bytes = -1, .used_percent = 0, .chunk_bytes = -1, .chunk_percent = 0,
                  .matches_one_state = false, .window = last - read.first + 1};
  for (std::uint64_t state = read.first; state <= last; ++state) {
    const TrueFigures& truth = log.at(state);
    const double used = distance(read.used, truth.used);
    const double chunk = distance(read.largest_chunk, truth.largest_chunk);
    if (error.used_bytes < 0 || used < error.used_bytes) {
      error.used_bytes = used;
      error.used_percent = truth.used ? 100 * used / static_cast<double>(truth.used) : 0;
    }
    if (error.chunk_bytes < 0 || chunk < error.chunk_bytes) {
      error.chunk_bytes = chunk;
      error.chunk_percent =
          truth.largest_chunk ? 100 * chunk / static_cast<double>(truth.largest_chunk) : 0;
    }
    error.matches_one_state |= used == 0 && chunk == 0;
  }
  return error;
}

std::vector<ReadError> measure(const AccuracyOptions& options, InfoMode mode) {
  Packed packed = make_packed(options.areas, mode);
  VaSpace& space = *packed.space;
  ReferenceFigures reference(kSpaceStart, packed.end);
  for (const auto start : packed.live) {
    const auto area = space.find(start);
    reference.add(area->start, area->end);
  }
  check_at_rest(space, reference, "after building the layout");
  TruthLog log(reference.figures());

  std::mutex bench_mutex;  // serialises writers: space op + reference + log
  std::atomic<bool> stop{false};
  std::latch ready(options.writers + options.readers + 1);
  std::vector<std::vector<RawRead>> reads(options.readers);
  FirstFailure failure;
  {
    std::vector<std::jthread> threads;
    for (unsigned w = 0; w < options.writers; ++w) {
      std::vector<std::uintptr_t> mine;
      for (std::size_t i = w; i < packed.live.size(); i += options.writers) {
        mine.push_back(packed.live[i]);
      }
      threads.emplace_back([&, w, mine = std::move(mine)]() mutable {
        bench::PageSizeStream sizes(100 + w);
        std::mt19937_64 random(w);
        ready.arrive_and_wait();
        // relaxed: the flag only ends loops; joins publish everything else.
        for (std::uint64_t op = 0; !stop.load(std::memory_order_relaxed); ++op) {
          std::lock_guard lock(bench_mutex);
          bool freeing = op % 2 == 1 || mine.empty();
          if (!freeing) {
            const std::size_t size = sizes.next_bytes();
            const auto start = space.alloc(size, bench::kPageSize);
            if (start) {
              reference.add(*start, *start + size);
              mine.push_back(*start);
            } else if (start.error() == std::errc::not_enough_memory && !mine.empty()) {
              freeing = true;  // packed full: give something back instead
            } else {
              failure.record("writer alloc: " + start.error().message());
              stop.store(true, std::memory_order_relaxed);
              break;
            }
          }
          if (freeing) {
            const std::size_t index = random() % mine.size();
            const std::uintptr_t start = mine[index];
            mine[index] = mine.back();
            mine.pop_back();
            const auto error =
                options.free == WriterFree::now ? space.free(start) : space.free_lazy(start);
            if (error) {
              failure.record("writer free: " + error.message());
              stop.store(true, std::memory_order_relaxed);
              break;
            }
            reference.remove(start);
          }
          if (!log.append(reference.figures())) stop.store(true, std::memory_order_relaxed);
        }
      });
    }
    for (unsigned r = 0; r < options.readers; ++r) {
      threads.emplace_back([&, r] {
        auto& mine = reads[r];
        mine.reserve(kMaxReadsPerReader);
        ready.arrive_and_wait();
        while (!stop.load(std::memory_order_relaxed) && mine.size() < kMaxReadsPerReader) {
          const std::uint64_t first = log.published();
          const VmallocInfo seen = space.info(mode);
          mine.push_back({seen.used, seen.largest_chunk, first, log.published()});
        }
      });
    }
    ready.arrive_and_wait();
    std::this_thread::sleep_for(std::chrono::duration<double>(options.seconds));
    stop.store(true, std::memory_order_relaxed);
  }  // joins
  failure.throw_if_any();
  if (options.free == WriterFree::lazy) space.purge();
  check_at_rest(space, reference, "after the run");
  // The log is complete now, so state last_published + 1 (which may have
  // been in the space when the read ended) is known for every read.
  const std::uint64_t final_state = log.published();
  std::vector<ReadError> errors;
  for (const auto& reader : reads) {
    for (const RawRead& read : reader) {
      errors.push_back(error_of(read, log, std::min(read.last_published + 1, final_state)));
    }
  }
  return errors;
}

void run(const AccuracyOptions& options) {
  Report report({{"mode", "mode"},
                 {"figure", "figure"},
                 {"reads", "reads", Format::integer},
                 {"exact_fraction", "exact", Format::ratio},
                 {"error_median_bytes", "median", Format::bytes},
                 {"error_p90_bytes", "p90", Format::bytes},
                 {"error_p99_bytes", "p99", Format::bytes},
                 {"error_max_bytes", "max", Format::bytes},
                 {"error_median_percent", "median %", Format::fixed1},
                 {"error_p90_percent", "p90 %", Format::fixed1},
                 {"error_p99_percent", "p99 %", Format::fixed1},
                 {"error_max_percent", "max %", Format::fixed1}});
  std::vector<std::string> notes;
  std::vector<std::string> bugs;
  Progress progress("bench accuracy", static_cast<double>(options.modes.size()) * options.seconds);
  for (std::size_t m = 0; m < options.modes.size(); ++m) {
    const InfoMode mode = options.modes[m];
    progress.update(m, options.modes.size(), std::string(mode_name(mode)));
    const auto errors = measure(options, mode);
    if (errors.empty()) throw std::runtime_error("no read finished; raise --seconds");
    const auto add = [&](std::string figure, auto bytes_of, auto percent_of) {
      std::vector<double> bytes;
      std::vector<double> percents;
      std::size_t exact = 0;
      for (const auto& error : errors) {
        bytes.push_back(bytes_of(error));
        percents.push_back(percent_of(error));
        exact += bytes.back() == 0;
      }
      const double max_bytes = percentile(bytes, 100);
      if (mode != InfoMode::rcu_walk && max_bytes != 0) {
        bugs.push_back(strprintf("%s: %s was off by %.0f bytes from every state during a read",
                                 std::string(mode_name(mode)).c_str(), figure.c_str(), max_bytes));
      }
      report.add_row({std::string(mode_name(mode)), std::move(figure),
                      static_cast<std::int64_t>(errors.size()),
                      static_cast<double>(exact) / static_cast<double>(errors.size()),
                      median(bytes), percentile(bytes, 90), percentile(bytes, 99), max_bytes,
                      median(percents), percentile(percents, 90), percentile(percents, 99),
                      percentile(percents, 100)});
    };
    add("used", [](const ReadError& e) { return e.used_bytes; },
        [](const ReadError& e) { return e.used_percent; });
    add("largest_chunk", [](const ReadError& e) { return e.chunk_bytes; },
        [](const ReadError& e) { return e.chunk_percent; });
    std::size_t whole = 0;
    double window = 0;
    std::uint64_t widest = 0;
    for (const auto& error : errors) {
      whole += error.matches_one_state;
      window += static_cast<double>(error.window);
      widest = std::max(widest, error.window);
    }
    notes.push_back(strprintf(
        "%s: %.1f%% of reads equal one state the space was in during the read; the state "
        "changed up to %.1f times during a read on average, %llu times at most.",
        std::string(mode_name(mode)).c_str(),
        100.0 * static_cast<double>(whole) / static_cast<double>(errors.size()),
        window / static_cast<double>(errors.size()) - 1,
        static_cast<unsigned long long>(widest - 1)));
  }
  notes.insert(notes.begin(),
               strprintf("Error = distance from the nearest true figure during the read; %u "
                         "writer(s) allocating and %s 1-4 page areas among %llu live areas "
                         "packed with holes, %u reader(s), %g s per mode.",
                         options.writers,
                         options.free == WriterFree::now ? "freeing" : "lazily freeing",
                         static_cast<unsigned long long>(options.areas), options.readers,
                         options.seconds));
  emit(report, options.output, notes);
  for (const auto& bug : bugs) {
    std::fprintf(stderr, "uvmalloc bench accuracy: core bug: %s (must be exact)\n", bug.c_str());
  }
  if (!bugs.empty()) throw std::runtime_error("locked/counters readings were not exact");
}

}  // namespace

void register_bench_accuracy(CLI::App& bench) {
  auto options = std::make_shared<AccuracyOptions>();
  CLI::App* sub = bench.add_subcommand(
      "accuracy", "How far info() readings are from the true figures while writers run");
  sub->add_option_function<std::string>(
         "--modes",
         [&modes = options->modes](const std::string& text) {
           modes = parse_modes("--modes", text);
         },
         "Info modes to measure: any of locked,rcu_walk,counters")
      ->default_str("locked,rcu_walk,counters")
      ->type_name("LIST");
  sub->add_option_function<std::string>(
         "--writers",
         [&writers = options->writers](const std::string& text) {
           writers = static_cast<unsigned>(parse_count("--writers", text, 1, 64));
         },
         "Writer threads (serialised by the benchmark's own mutex)")
      ->default_str("1")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--readers",
         [&readers = options->readers](const std::string& text) {
           readers = static_cast<unsigned>(parse_count("--readers", text, 1, 64));
         },
         "Reader threads calling info(mode) non-stop")
      ->default_str("1")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--areas",
         [&areas = options->areas](const std::string& text) {
           areas = parse_count("--areas", text, 1, 10'000'000);
         },
         "Live areas in the packed layout")
      ->default_str("10000")
      ->type_name("N");
  add_seconds_option(*sub, "--seconds", options->seconds, "Duration per mode", 600);
  add_choice_option(*sub, "--free", options->free,
                    {{"now", WriterFree::now}, {"lazy", WriterFree::lazy}},
                    "How writers free: free() now, or free_lazy() with purges as they fall due");
  add_output_options(*sub, options->output, /*with_plot=*/false);
  sub->callback([options] { run(*options); });
}

}  // namespace uvmalloc::tool
