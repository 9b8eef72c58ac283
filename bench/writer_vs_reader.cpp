// bench/writer_vs_reader.cpp - what one non-stop info() reader costs one writer, per mode.
//
// The seed's problem, measured: for each info mode, one writer does
// alloc(1-4 pages) + free pairs at --areas fragmented live areas for
// --seconds, alone (A), while one other thread calls info() on the same
// space non-stop (B), and while that thread calls info() non-stop on another
// space, identical but untouched by the writer (C). Runs interleave A B C
// A B C ... for --repeats rounds, so slow drift of a shared machine hits all
// alike. "kept" is the median over rounds of B / A. C separates what any
// second busy thread costs on this machine (shared caches, memory bandwidth,
// sibling hardware threads, liburcu's call_rcu thread competing for the two
// CPUs) from what sharing the space costs: B / C. "kept per CPU-second"
// divides each rate by the share of the run the writer spent on a CPU, so it
// shows how much slower the writer's work got, apart from time it was
// preempted (on two CPUs, by the call_rcu thread or the kernel's real-time
// throttling) or, in locked mode, blocked on the lock.
//
// The floor for counters mode. A counters reader polls the figures the
// writer publishes, so every published update moves that cache line from the
// reader's core to the writer's and back: one cache-line transfer per update,
// which no counters design avoids. The writer publishes under its lock, and
// the lock's atomic instruction waits for the store to the polled line to
// complete, so the writer pays the transfer's full latency, not just a slot
// in its store buffer. Two synthetic writers measure it, run A B C like the
// modes (B: a reader polls the line the writer publishes to; C: it polls a
// line nobody writes):
//   publish under a lock  nothing but lock, publish, unlock: ns per update
//                         alone and polled (back to back, successive
//                         transfers overlap, so this is a lower bound);
//   pair + publishes      an alloc+free pair on the counters space with a
//                         locked publish to the polled line after the alloc
//                         and after the free, as counters mode publishes:
//                         the best "kept" a design publishing that often can
//                         reach.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <expected>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <uvmalloc/va_space.hpp>

#include "layouts.hpp"

namespace uvmalloc::bench {
namespace {

using Seconds = std::chrono::duration<double>;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kLayoutSeed = 1;
constexpr std::uint64_t kTimedSeed = 2;
constexpr int kStepsPerClockRead = 16;  // a clock read costs about as much as a small step
constexpr int kPublishesPerPair = 2;    // counters mode publishes after every alloc and free

constexpr InfoMode kModes[] = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters};

const char* name_of(InfoMode mode) {
  switch (mode) {
    case InfoMode::locked: return "locked";
    case InfoMode::rcu_walk: return "rcu_walk";
    case InfoMode::counters: return "counters";
  }
  return "?";
}

[[noreturn]] void die(std::string_view what, std::error_code ec) {
  std::fprintf(stderr, "writer_vs_reader: %.*s: %s\n", static_cast<int>(what.size()),
               what.data(), ec.message().c_str());
  std::exit(1);
}

// Isolation unit for data written by one thread and read by another: two
// cache lines, because the L2 prefetcher also fetches a line's neighbour, so
// a polled line next to one the writer writes costs transfers as if shared.
constexpr std::size_t kLinePair = 128;

// A seqlock-protected pair alone in its line pair, published and polled the
// way a counters-mode writer and reader exchange their figures.
struct alignas(kLinePair) PublishedPair {
  std::atomic<std::uint64_t> sequence{0};  // odd while the writer changes the pair
  std::atomic<std::uint64_t> used{0};
  std::atomic<std::uint64_t> largest_chunk{0};

  void publish(std::uint64_t new_used, std::uint64_t new_largest_chunk) noexcept {
    const std::uint64_t before = sequence.load(std::memory_order_relaxed);
    sequence.store(before + 1, std::memory_order_relaxed);
    // The odd sequence must be visible before either figure changes.
    std::atomic_thread_fence(std::memory_order_release);
    used.store(new_used, std::memory_order_relaxed);
    largest_chunk.store(new_largest_chunk, std::memory_order_relaxed);
    // Release: both figures are visible before the even sequence.
    sequence.store(before + 2, std::memory_order_release);
  }

  [[nodiscard]] std::uint64_t read() const noexcept {
    for (;;) {
      // Acquire: the figures read below are not older than this sequence.
      const std::uint64_t before = sequence.load(std::memory_order_acquire);
      const std::uint64_t figures = used.load(std::memory_order_relaxed) +
                                    largest_chunk.load(std::memory_order_relaxed);
      // The figures are read before the sequence is checked again.
      std::atomic_thread_fence(std::memory_order_acquire);
      if (before % 2 == 0 && sequence.load(std::memory_order_relaxed) == before) return figures;
    }
  }
};

struct Rates {
  double writer_per_second;
  double reader_per_second;  // 0 when run alone
  // The writer's CPU time over wall time: below 1 when it was preempted (by
  // the call_rcu thread or other tasks) or blocked (on the lock), which
  // tells scheduling losses from slower work.
  double writer_on_cpu;
};

Seconds thread_cpu_time() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return Seconds(static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9);
}

// Who runs beside the writer.
enum class Companion { none, reader, neighbour };

// Runs writer_step in this thread for `duration`, alone or while one other
// thread runs reader_step non-stop, and returns both rates.
template <class WriterStep, class ReaderStep>
Rates run_writer(WriterStep&& writer_step, ReaderStep&& reader_step, Companion companion,
                 Seconds duration) {
  const bool with_reader = companion != Companion::none;
  // Each flag in its own line pair, so polling them moves no line the writer writes.
  alignas(kLinePair) std::atomic<bool> reading{false};
  alignas(kLinePair) std::atomic<bool> stopped{false};
  double reader_per_second = 0;
  std::thread reader;
  if (with_reader) {
    reader = std::thread([&] {
      const auto begin = Clock::now();
      reading.store(true, std::memory_order_relaxed);
      std::uint64_t reads = 0;
      // Each step is an atomic load or a call into the library: the
      // compiler can drop neither, so the results need no sink.
      while (!stopped.load(std::memory_order_relaxed)) {
        reader_step();
        ++reads;
      }
      reader_per_second = static_cast<double>(reads) / Seconds(Clock::now() - begin).count();
    });
    // The writer's clock starts only once the reader runs, so no part of a
    // with-reader run is really a run alone.
    while (!reading.load(std::memory_order_relaxed)) std::this_thread::yield();
  }
  const auto begin = Clock::now();
  const auto cpu_begin = thread_cpu_time();
  std::uint64_t steps = 0;
  Seconds elapsed{};
  do {
    for (int i = 0; i < kStepsPerClockRead; ++i) writer_step();
    steps += kStepsPerClockRead;
    elapsed = Clock::now() - begin;
  } while (elapsed < duration);
  stopped.store(true, std::memory_order_relaxed);
  if (reader.joinable()) reader.join();
  const Seconds on_cpu = thread_cpu_time() - cpu_begin;
  return {static_cast<double>(steps) / elapsed.count(), reader_per_second,
          on_cpu / elapsed};
}

double median(std::vector<double> values) {
  std::ranges::sort(values);
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

// The runs of one configuration, round by round.
struct Series {
  std::vector<Rates> alone, with_reader, with_neighbour;

  void add(Companion companion, Rates rates) {
    switch (companion) {
      case Companion::none: alone.push_back(rates); break;
      case Companion::reader: with_reader.push_back(rates); break;
      case Companion::neighbour: with_neighbour.push_back(rates); break;
    }
  }
};

double median_of(const std::vector<Rates>& runs, double Rates::*field) {
  std::vector<double> values;
  for (const Rates& run : runs) values.push_back(run.*field);
  return median(values);
}

// The writer rate of each run over that of the same round's `base` run.
std::vector<double> kept(const std::vector<Rates>& runs, const std::vector<Rates>& base) {
  std::vector<double> ratios;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    ratios.push_back(runs[i].writer_per_second / base[i].writer_per_second);
  }
  return ratios;
}

// The same per second the writer spent on a CPU: how much slower its work
// got, leaving out time it was preempted or blocked.
std::vector<double> kept_on_cpu(const std::vector<Rates>& runs, const std::vector<Rates>& base) {
  std::vector<double> ratios;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    ratios.push_back((runs[i].writer_per_second / runs[i].writer_on_cpu) /
                     (base[i].writer_per_second / base[i].writer_on_cpu));
  }
  return ratios;
}

// The round trip of one cache line between this thread and another: the
// unit every shared-line cost is made of. On a VM it changes when the host
// moves the virtual CPUs (measured here: 51 ns and 335 ns on the same VM an
// hour apart), so each run reports it: the median of 21 bursts of 5 000
// round trips, so a burst stalled by preemption or real-time throttling does
// not count. A waiting side yields after a while, so an oversubscribed
// machine still finishes quickly (and reports a meaningless figure).
double cache_line_round_trip_ns() {
  constexpr std::uint64_t kRoundTrips = 5'000;
  constexpr int kBursts = 21;
  constexpr int kSpinsBeforeYield = 4096;
  std::vector<double> bursts;
  for (int burst = 0; burst < kBursts; ++burst) {
    alignas(kLinePair) std::atomic<std::uint64_t> ball{0};
    // Acquire/release: each side's turn follows the other's, nothing more.
    const auto play = [&ball](std::uint64_t first_turn) {
      for (std::uint64_t turn = first_turn; turn < 2 * kRoundTrips; turn += 2) {
        for (int spins = 0; ball.load(std::memory_order_acquire) != turn; ++spins) {
          if (spins >= kSpinsBeforeYield) std::this_thread::yield();
        }
        ball.store(turn + 1, std::memory_order_release);
      }
    };
    std::thread partner(play, 1);
    // Timed from the first return of the ball, so thread start-up is left out.
    ball.store(1, std::memory_order_release);
    while (ball.load(std::memory_order_acquire) != 2) std::this_thread::yield();
    const auto begin = Clock::now();
    play(2);
    const auto end = Clock::now();
    partner.join();
    bursts.push_back(std::chrono::duration<double, std::nano>(end - begin).count() /
                     (kRoundTrips - 1));
  }
  return median(bursts);
}

std::string load_average() {
  std::ifstream file("/proc/loadavg");
  std::string one, five, fifteen;
  file >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

std::string si(double value) {
  char text[32];
  if (value >= 1e6) {
    std::snprintf(text, sizeof text, "%.2f M", value / 1e6);
  } else if (value >= 1e3) {
    std::snprintf(text, sizeof text, "%.1f k", value / 1e3);
  } else {
    std::snprintf(text, sizeof text, "%.0f", value);
  }
  return text;
}

// "median (lowest-highest)" of per-round ratios.
std::string ratio(const std::vector<double>& per_round) {
  const auto [low, high] = std::ranges::minmax(per_round);
  char text[64];
  std::snprintf(text, sizeof text, "%.3f (%.3f-%.3f)", median(per_round), low, high);
  return text;
}

// The table header matching print_row, `subject` naming what runs.
void print_header(const char* subject, const char* writer_unit, const char* reader_unit) {
  std::printf("| %s | writer %s alone (A) | with a reader (B) | kept B/A "
              "| kept with a neighbour C/A | sharing B/C | kept per CPU-second B/A "
              "| writer on CPU in B | reader %s |\n|---|---|---|---|---|---|---|---|---|\n",
              subject, writer_unit, reader_unit);
}

void print_row(const char* name, const Series& series) {
  std::printf("| %s | %s | %s | %s | %s | %s | %s | %.3f | %s |\n", name,
              si(median_of(series.alone, &Rates::writer_per_second)).c_str(),
              si(median_of(series.with_reader, &Rates::writer_per_second)).c_str(),
              ratio(kept(series.with_reader, series.alone)).c_str(),
              ratio(kept(series.with_neighbour, series.alone)).c_str(),
              ratio(kept(series.with_reader, series.with_neighbour)).c_str(),
              ratio(kept_on_cpu(series.with_reader, series.alone)).c_str(),
              median_of(series.with_reader, &Rates::writer_on_cpu),
              si(median_of(series.with_reader, &Rates::reader_per_second)).c_str());
}

// The counters floor: what one cache-line transfer per published update
// costs, and how close counters mode comes to the best it could keep.
void print_floor(const Series& counters, const Series& publish_under_lock,
                 const Series& pair_and_publishes) {
  std::printf("\n");
  print_header("floor: synthetic writer", "steps/s", "polls/s");
  print_row("publish under a lock (updates)", publish_under_lock);
  print_row("pair + a publish after each op (pairs)", pair_and_publishes);

  const auto ns_per_step = [](const std::vector<Rates>& runs) {
    return 1e9 / median_of(runs, &Rates::writer_per_second);
  };
  // Back to back, the transfers of successive publishes overlap; between
  // two operations each publish finds the line in the reader's cache and
  // pays a whole transfer: the figure that sets counters mode's floor.
  const double back_to_back_ns =
      ns_per_step(publish_under_lock.with_reader) - ns_per_step(publish_under_lock.alone);
  const double isolated_ns =
      (ns_per_step(pair_and_publishes.with_reader) - ns_per_step(pair_and_publishes.alone)) /
      kPublishesPerPair;
  const double counters_kept = median(kept(counters.with_reader, counters.alone));
  const double measured_floor = median(kept(pair_and_publishes.with_reader,
                                            pair_and_publishes.alone));
  std::printf("\na polled publish costs the writer %.1f ns more back to back, %.1f ns more "
              "between operations (one whole cache-line transfer)\n",
              back_to_back_ns, isolated_ns);
  std::printf("counters kept %.3f = %.2f of the measured floor %.3f (pair of %.1f ns alone)\n",
              counters_kept, counters_kept / measured_floor, measured_floor,
              ns_per_step(counters.alone));
}

struct Options {
  double seconds = 0.5;
  int repeats = 5;
  std::size_t areas = 10'000;
  std::vector<InfoMode> modes{std::begin(kModes), std::end(kModes)};
  bool raw = false;
};

// One space per mode for the writer, and an identical one per mode that
// only the neighbour reads.
struct Spaces {
  std::map<InfoMode, Layout> written, untouched;
};

std::expected<Spaces, std::string> build_spaces(const Options& options) {
  Spaces spaces;
  for (const InfoMode mode : options.modes) {
    for (auto* side : {&spaces.written, &spaces.untouched}) {
      auto layout = make_fragmented(options.areas, mode, kLayoutSeed);
      if (!layout) return std::unexpected(layout.error());
      side->emplace(mode, std::move(*layout));
    }
  }
  return spaces;
}

int run(const Options& options) {
  const Seconds duration(options.seconds);
  auto spaces = build_spaces(options);
  if (!spaces) {
    std::fprintf(stderr, "writer_vs_reader: building the layouts: %s\n", spaces.error().c_str());
    return 1;
  }
  PageSizeStream sizes(kTimedSeed);
  // alloc(1-4 pages) + free on `space`, calling after_op() after each.
  const auto alloc_free_pair = [&sizes](VaSpace& space, auto&& after_op) {
    auto start = space.alloc(sizes.next_bytes(), kPageSize);
    if (!start) die("alloc", start.error());
    after_op();
    if (auto ec = space.free(*start)) die("free", ec);
    after_op();
  };
  PublishedPair polled, unpolled_neighbour;
  struct alignas(kLinePair) {
    std::mutex lock;  // uncontended, as the writers' lock is for a lone writer
    std::uint64_t updates = 0;
  } publisher;
  const auto publish = [&] {
    std::lock_guard<std::mutex> hold(publisher.lock);
    ++publisher.updates;
    polled.publish(publisher.updates, publisher.updates);
  };
  const auto poll = [&polled] { static_cast<void>(polled.read()); };
  const auto poll_neighbour = [&unpolled_neighbour] {
    static_cast<void>(unpolled_neighbour.read());
  };

  std::printf("# writer vs reader: %zu live areas, %.2f s per run, %d rounds of A B C, %u CPUs, "
              "load average before: %s, cache-line round trip before: %.0f ns\n",
              options.areas, options.seconds, options.repeats,
              std::thread::hardware_concurrency(), load_average().c_str(),
              cache_line_round_trip_ns());
  if (options.raw) {
    std::printf("round,configuration,companion,writer_per_second,reader_per_second,"
                "writer_on_cpu\n");
  }
  // Alone, with a reader, with a neighbour, back to back: A B C A B C ...
  const auto measure = [&](Series& series, const char* configuration, int round,
                           auto&& writer_step, auto&& reader_step, auto&& neighbour_step) {
    for (const Companion companion : {Companion::none, Companion::reader, Companion::neighbour}) {
      const Rates rates = companion == Companion::neighbour
                              ? run_writer(writer_step, neighbour_step, companion, duration)
                              : run_writer(writer_step, reader_step, companion, duration);
      series.add(companion, rates);
      if (options.raw) {
        std::printf("%d,%s,%s,%.0f,%.0f,%.3f\n", round, configuration,
                    companion == Companion::none     ? "none"
                    : companion == Companion::reader ? "reader"
                                                     : "neighbour",
                    rates.writer_per_second, rates.reader_per_second, rates.writer_on_cpu);
      }
    }
  };

  std::map<InfoMode, Series> by_mode;
  Series publish_under_lock, pair_and_publishes;
  // The floor is counters mode's: measured only with counters, on its space.
  const auto counters_layout = spaces->written.find(InfoMode::counters);
  const bool with_floor = counters_layout != spaces->written.end();
  for (int round = 0; round < options.repeats; ++round) {
    for (const InfoMode mode : options.modes) {
      VaSpace& space = *spaces->written.at(mode).space;
      const VaSpace& untouched = *spaces->untouched.at(mode).space;
      measure(by_mode[mode], name_of(mode), round, [&] { alloc_free_pair(space, [] {}); },
              [&space] { static_cast<void>(space.info()); },
              [&untouched] { static_cast<void>(untouched.info()); });
    }
    if (!with_floor) continue;
    VaSpace& counters_space = *counters_layout->second.space;
    measure(publish_under_lock, "publish_under_lock", round, publish, poll, poll_neighbour);
    measure(pair_and_publishes, "pair_and_publishes", round,
            [&] { alloc_free_pair(counters_space, publish); }, poll, poll_neighbour);
  }

  std::printf("\nB: a reader calls info() on the writer's space; C: it calls info() on an "
              "identical space the writer does not touch.\nRatios: median over rounds "
              "(lowest-highest).\n\n");
  print_header("mode", "pairs/s", "info()/s");
  for (const InfoMode mode : options.modes) print_row(name_of(mode), by_mode.at(mode));
  if (by_mode.contains(InfoMode::locked) && by_mode.size() > 1) {
    const double locked_with_reader =
        median_of(by_mode.at(InfoMode::locked).with_reader, &Rates::writer_per_second);
    std::printf("\n| writer pairs/s with a reader, ratio | value |\n|---|---|\n");
    for (const InfoMode mode : {InfoMode::rcu_walk, InfoMode::counters}) {
      if (!by_mode.contains(mode)) continue;
      std::printf("| %s / locked | %.1f |\n", name_of(mode),
                  median_of(by_mode.at(mode).with_reader, &Rates::writer_per_second) /
                      locked_with_reader);
    }
  }
  if (with_floor) {
    print_floor(by_mode.at(InfoMode::counters), publish_under_lock, pair_and_publishes);
  }
  std::printf("load average after: %s, cache-line round trip after: %.0f ns\n",
              load_average().c_str(), cache_line_round_trip_ns());
  return 0;
}

}  // namespace
}  // namespace uvmalloc::bench

int main(int argc, char** argv) {
  uvmalloc::bench::Options options;
  CLI::App app{"One writer's alloc+free rate alone and against a non-stop info() reader, "
               "per info mode, with the cache-line-transfer floor of counters mode."};
  app.add_option("--seconds", options.seconds, "length of each run")
      ->check(CLI::Range(0.001, 3600.0))
      ->capture_default_str();
  app.add_option("--repeats", options.repeats, "rounds of alone/with-reader runs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--areas", options.areas, "live fragmented areas in the space")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  const std::map<std::string, uvmalloc::InfoMode> mode_names{
      {"locked", uvmalloc::InfoMode::locked},
      {"rcu_walk", uvmalloc::InfoMode::rcu_walk},
      {"counters", uvmalloc::InfoMode::counters}};
  app.add_option("--modes", options.modes, "info modes to run (the floor runs with counters)")
      ->delimiter(',')
      ->transform(CLI::CheckedTransformer(mode_names))
      ->default_str("locked,rcu_walk,counters");
  app.add_flag("--raw", options.raw, "also print every run as CSV");
  CLI11_PARSE(app, argc, argv);
  return uvmalloc::bench::run(options);
}
