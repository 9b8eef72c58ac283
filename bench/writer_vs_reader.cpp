// bench/writer_vs_reader.cpp - what one non-stop info() reader costs one writer, per mode.
//
// The seed's problem, measured: for each info mode, one writer does
// alloc(1-4 pages) + free pairs at --areas fragmented live areas for
// --seconds, alone (A) and while one other thread calls info() non-stop (B).
// Runs interleave A B A B ... for --repeats rounds, so slow drift of a shared
// machine hits both sides alike; "kept" is the median over rounds of B / A.
//
// The floor for counters mode. A counters reader polls the figures the
// writer publishes, so every published update moves that cache line from the
// reader's core to the writer's and back: one cache-line transfer per update,
// which no counters design avoids. Two synthetic writers measure it, also
// interleaved with and without a reader polling a seqlock-protected pair:
//   publish only     the writer does nothing but publish: ns per update alone
//                    and polled, whose difference is one transfer;
//   pair + publishes an alloc+free pair on the counters space plus
//                    --publishes-per-pair publishes to the polled line: the
//                    best "kept" a design publishing that often can reach.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
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

// A seqlock-protected pair in one cache line, published and polled the way a
// counters-mode writer and reader exchange their figures.
struct alignas(64) PublishedPair {
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
};

// Runs writer_step in this thread for `duration`, alone or while one other
// thread runs reader_step non-stop, and returns both rates.
template <class WriterStep, class ReaderStep>
Rates run_writer(WriterStep&& writer_step, ReaderStep&& reader_step, bool with_reader,
                 Seconds duration) {
  // Each flag on its own line, so polling them moves no line the writer writes.
  alignas(64) std::atomic<bool> reading{false};
  alignas(64) std::atomic<bool> stopped{false};
  alignas(64) std::atomic<std::uint64_t> reader_sink{0};
  double reader_per_second = 0;
  std::thread reader;
  if (with_reader) {
    reader = std::thread([&] {
      const auto begin = Clock::now();
      reading.store(true, std::memory_order_relaxed);
      std::uint64_t reads = 0;
      std::uint64_t sum = 0;
      while (!stopped.load(std::memory_order_relaxed)) {
        sum += reader_step();
        ++reads;
      }
      reader_per_second = static_cast<double>(reads) / Seconds(Clock::now() - begin).count();
      reader_sink.store(sum, std::memory_order_relaxed);  // keeps the reads observable
    });
    // The writer's clock starts only once the reader runs, so no part of a
    // with-reader run is really a run alone.
    while (!reading.load(std::memory_order_relaxed)) std::this_thread::yield();
  }
  const auto begin = Clock::now();
  std::uint64_t steps = 0;
  Seconds elapsed{};
  do {
    for (int i = 0; i < kStepsPerClockRead; ++i) writer_step();
    steps += kStepsPerClockRead;
    elapsed = Clock::now() - begin;
  } while (elapsed < duration);
  stopped.store(true, std::memory_order_relaxed);
  if (reader.joinable()) reader.join();
  return {static_cast<double>(steps) / elapsed.count(), reader_per_second};
}

double median(std::vector<double> values) {
  std::ranges::sort(values);
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

// Alone and with-reader runs of one configuration, round by round.
struct Series {
  std::vector<Rates> alone, with_reader;

  [[nodiscard]] double median_alone() const { return median_of(alone, &Rates::writer_per_second); }
  [[nodiscard]] double median_with_reader() const {
    return median_of(with_reader, &Rates::writer_per_second);
  }
  [[nodiscard]] double median_reader() const {
    return median_of(with_reader, &Rates::reader_per_second);
  }
  [[nodiscard]] std::vector<double> kept_per_round() const {
    std::vector<double> kept;
    for (std::size_t i = 0; i < alone.size(); ++i) {
      kept.push_back(with_reader[i].writer_per_second / alone[i].writer_per_second);
    }
    return kept;
  }
  [[nodiscard]] double median_kept() const { return median(kept_per_round()); }

 private:
  static double median_of(const std::vector<Rates>& runs, double Rates::*field) {
    std::vector<double> values;
    for (const Rates& run : runs) values.push_back(run.*field);
    return median(values);
  }
};

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

std::string kept_range(const Series& series) {
  const auto kept = series.kept_per_round();
  const auto [low, high] = std::ranges::minmax(kept);
  char text[48];
  std::snprintf(text, sizeof text, "%.3f-%.3f", low, high);
  return text;
}

struct Options {
  double seconds = 0.5;
  int repeats = 5;
  std::size_t areas = 10'000;
  int publishes_per_pair = 2;
  bool raw = false;
};

int run(const Options& options) {
  const Seconds duration(options.seconds);
  std::map<InfoMode, Layout> spaces;
  for (const InfoMode mode : kModes) {
    auto layout = make_fragmented(options.areas, mode, kLayoutSeed);
    if (!layout) {
      std::fprintf(stderr, "writer_vs_reader: building the layout: %s\n", layout.error().c_str());
      return 1;
    }
    spaces.emplace(mode, std::move(*layout));
  }
  PageSizeStream sizes(kTimedSeed);
  const auto alloc_free_pair = [&sizes](VaSpace& space) {
    auto start = space.alloc(sizes.next_bytes(), kPageSize);
    if (!start) die("alloc", start.error());
    if (auto ec = space.free(*start)) die("free", ec);
  };
  PublishedPair polled;
  std::uint64_t updates = 0;
  const auto poll = [&polled] { return polled.read(); };

  std::printf("# writer vs reader: %zu live areas, %.2f s per run, %d rounds of A B, %u CPUs, "
              "load average before: %s\n",
              options.areas, options.seconds, options.repeats,
              std::thread::hardware_concurrency(), load_average().c_str());
  if (options.raw) std::printf("round,configuration,reader,writer_per_second,reader_per_second\n");

  std::map<InfoMode, Series> by_mode;
  Series publish_only, pair_and_publishes;
  const auto record = [&](Series& series, const char* configuration, int round, bool with_reader,
                          Rates rates) {
    (with_reader ? series.with_reader : series.alone).push_back(rates);
    if (options.raw) {
      std::printf("%d,%s,%d,%.0f,%.0f\n", round, configuration, with_reader ? 1 : 0,
                  rates.writer_per_second, rates.reader_per_second);
    }
  };
  // Alone, then with a reader, back to back: A B A B ... over the rounds.
  const auto measure = [&](Series& series, const char* configuration, int round,
                           auto&& writer_step, auto&& reader_step) {
    for (const bool with_reader : {false, true}) {
      record(series, configuration, round, with_reader,
             run_writer(writer_step, reader_step, with_reader, duration));
    }
  };
  const auto publish = [&polled, &updates] {
    ++updates;
    polled.publish(updates, updates);
  };
  VaSpace& counters_space = *spaces.at(InfoMode::counters).space;
  for (int round = 0; round < options.repeats; ++round) {
    for (const InfoMode mode : kModes) {
      VaSpace& space = *spaces.at(mode).space;
      measure(by_mode[mode], name_of(mode), round, [&] { alloc_free_pair(space); },
              [&space] { return std::uint64_t{space.info().used}; });
    }
    measure(publish_only, "publish_only", round, publish, poll);
    measure(pair_and_publishes, "pair_and_publishes", round,
            [&] {
              alloc_free_pair(counters_space);
              for (int i = 0; i < options.publishes_per_pair; ++i) publish();
            },
            poll);
  }

  std::printf("\n| mode | writer pairs/s alone | with a reader | kept (median) | kept range "
              "| reader info()/s |\n|---|---|---|---|---|---|\n");
  for (const InfoMode mode : kModes) {
    const Series& series = by_mode.at(mode);
    std::printf("| %s | %s | %s | %.3f | %s | %s |\n", name_of(mode),
                si(series.median_alone()).c_str(), si(series.median_with_reader()).c_str(),
                series.median_kept(), kept_range(series).c_str(),
                si(series.median_reader()).c_str());
  }
  const double locked_with_reader = by_mode.at(InfoMode::locked).median_with_reader();
  std::printf("\n| writer pairs/s with a reader, ratio | value |\n|---|---|\n");
  std::printf("| rcu_walk / locked | %.1f |\n",
              by_mode.at(InfoMode::rcu_walk).median_with_reader() / locked_with_reader);
  std::printf("| counters / locked | %.1f |\n",
              by_mode.at(InfoMode::counters).median_with_reader() / locked_with_reader);

  const double update_ns_alone = 1e9 / publish_only.median_alone();
  const double update_ns_polled = 1e9 / publish_only.median_with_reader();
  const double transfer_ns = update_ns_polled - update_ns_alone;
  const double pair_ns_alone = 1e9 / by_mode.at(InfoMode::counters).median_alone();
  const double predicted_floor =
      pair_ns_alone / (pair_ns_alone + options.publishes_per_pair * transfer_ns);
  const double measured_floor = pair_and_publishes.median_kept();
  std::printf("\n| floor: synthetic writer | alone | polled by a reader | kept (median) "
              "| kept range |\n|---|---|---|---|---|\n");
  std::printf("| publish only (updates/s) | %s | %s | %.3f | %s |\n",
              si(publish_only.median_alone()).c_str(),
              si(publish_only.median_with_reader()).c_str(), publish_only.median_kept(),
              kept_range(publish_only).c_str());
  std::printf("| pair + %d publishes (pairs/s) | %s | %s | %.3f | %s |\n",
              options.publishes_per_pair, si(pair_and_publishes.median_alone()).c_str(),
              si(pair_and_publishes.median_with_reader()).c_str(), measured_floor,
              kept_range(pair_and_publishes).c_str());
  std::printf("\none publish: %.1f ns alone, %.1f ns polled -> one cache-line transfer = %.1f ns\n",
              update_ns_alone, update_ns_polled, transfer_ns);
  std::printf("predicted floor for counters at %d publishes per pair of %.1f ns: %.3f\n",
              options.publishes_per_pair, pair_ns_alone, predicted_floor);
  std::printf("counters kept %.3f = %.2f of the measured floor %.3f\n",
              by_mode.at(InfoMode::counters).median_kept(),
              by_mode.at(InfoMode::counters).median_kept() / measured_floor, measured_floor);
  std::printf("load average after: %s\n", load_average().c_str());
  return 0;
}

}  // namespace
}  // namespace uvmalloc::bench

int main(int argc, char** argv) {
  uvmalloc::bench::Options options;
  CLI::App app{"One writer's alloc+free rate alone and against a non-stop info() reader, "
               "per info mode, with the cache-line-transfer floor of counters mode."};
  app.add_option("--seconds", options.seconds, "length of each run")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--repeats", options.repeats, "rounds of alone/with-reader runs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--areas", options.areas, "live fragmented areas in the space")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--publishes-per-pair", options.publishes_per_pair,
                 "cache-line publishes the floor charges each alloc+free pair")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_flag("--raw", options.raw, "also print every run as CSV");
  CLI11_PARSE(app, argc, argv);
  return uvmalloc::bench::run(options);
}
