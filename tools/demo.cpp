// tools/demo.cpp - `uvmalloc demo`: the seed's scenario on defaults, in
// under a minute, as a table a newcomer can read.
//
// One writer allocates and frees over 10^4 live areas while one reader reads
// meminfo as fast as it can, in each info mode, with and without the reader.
// The closing sentence is built from the measured numbers.
#include <algorithm>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include "cli_common.hpp"
#include "contention.hpp"
#include "layouts.hpp"
#include "subcommands.hpp"

namespace uvmalloc::tool {
namespace {

struct DemoOptions {
  ContentionPlan plan{.modes = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters},
                      .writers = 1,
                      .readers = {0, 1},
                      .areas = {10'000},
                      .seconds = 2,
                      .repeats = 2,
                      .call = ReaderCall::meminfo,
                      .free = WriterFree::now};
};

std::string_view how_read(InfoMode mode) {
  switch (mode) {
    case InfoMode::locked: return "walks all areas holding the writers' lock";
    case InfoMode::rcu_walk: return "walks all areas under RCU, no lock";
    case InfoMode::counters: return "reads totals the writers keep, O(1)";
  }
  return "?";
}

std::string percent(double ratio) { return format_cell(ratio, Format::ratio); }

void run(const DemoOptions& options) {
  const ContentionPlan& plan = options.plan;
  const unsigned readers = plan.readers.back();
  const std::uint64_t areas = plan.areas.front();
  const std::string areas_text = format_cell(static_cast<std::int64_t>(areas), Format::integer);

  auto sample = bench::make_fragmented(areas, InfoMode::counters, 42);
  if (!sample) throw std::runtime_error("building the layout: " + sample.error());
  const auto threads = [](unsigned count, const char* what) {
    return std::to_string(count) + ' ' + what + (count == 1 ? " thread " : " threads ");
  };
  std::cout << "uvmalloc demo - the seed's scenario on this machine ("
            << std::thread::hardware_concurrency() << " cores)\n\n"
            << threads(plan.writers, "writer") << (plan.writers == 1 ? "allocates" : "allocate")
            << " and frees areas of 1-4 pages among " << areas_text << " live areas,\nwhile "
            << threads(readers, "reader") << (readers == 1 ? "reads" : "read")
            << " meminfo as fast as possible. meminfo returns three lines:\n\n";
  std::istringstream lines(sample->space->meminfo());
  for (std::string line; std::getline(lines, line);) std::cout << "    " << line << '\n';
  sample->space.reset();
  std::cout << "\nEach info mode computes VmallocUsed and VmallocChunk differently. Every cell runs "
            << plan.seconds << " s, " << plan.repeats << " times; medians shown.\n\n";
  std::cout.flush();

  const auto results = run_contention(plan, "demo");
  Report table({{"mode", "info mode"},
                {"how", "how meminfo is computed"},
                {"alone", "writer alone", Format::rate},
                {"with_readers", readers == 1 ? "with the reader" : "with the readers", Format::rate},
                {"kept", "writer kept", Format::ratio},
                {"reads", "meminfo reads", Format::rate},
                {"read_ns", "one read", Format::nanoseconds}});
  struct ModeFigures {
    double kept;
    double read_ns;
  };
  std::vector<ModeFigures> figures;
  double lowest_alone_on_cpu = 1;
  for (const InfoMode mode : plan.modes) {
    const ContentionResult* alone = nullptr;
    const ContentionResult* contended = nullptr;
    for (const auto& result : results) {
      if (result.mode != mode) continue;
      (result.readers == 0 ? alone : contended) = &result;
    }
    // Each reader spends the whole run reading, so its time per read is
    // readers / (total reads per second).
    const double read_ns = static_cast<double>(readers) * 1e9 / contended->reader_ops_per_sec;
    figures.push_back({*contended->writer_kept, read_ns});
    lowest_alone_on_cpu = std::min(lowest_alone_on_cpu, alone->writer_on_cpu);
    table.add_row({std::string(mode_name(mode)), std::string(how_read(mode)),
                   alone->writer_ops_per_sec, contended->writer_ops_per_sec,
                   *contended->writer_kept, contended->reader_ops_per_sec, read_ns});
  }
  table.write_text(std::cout);

  const auto& locked = figures[0];
  const auto& rcu = figures[1];
  const auto& counters = figures[2];
  std::cout << "\n'writer kept' is the writer's rate with the reader running divided by its rate "
               "alone.\n";
  if (plan.writers + readers > std::thread::hardware_concurrency()) {
    std::cout << "Note: more threads than cores here, so part of every slowdown is time "
                 "slicing.\n";
  }
  if (lowest_alone_on_cpu < 0.8) {
    std::cout << "Note: other programs were busy on this machine (the writer alone ran only "
              << percent(lowest_alone_on_cpu)
              << " of the time), so these ratios are noisy; rerun when it is idle.\n";
  }
  std::cout << '\n'
            << "With a reader hammering meminfo, the writer kept " << percent(locked.kept)
            << " of its speed when meminfo takes the lock, " << percent(rcu.kept)
            << " with the RCU walk and " << percent(counters.kept)
            << " with counters, which also answer in "
            << format_cell(counters.read_ns, Format::nanoseconds) << " instead of "
            << format_cell(rcu.read_ns, Format::nanoseconds) << " per read.\n";
}

}  // namespace

void register_demo(CLI::App& root) {
  auto options = std::make_shared<DemoOptions>();
  ContentionPlan& plan = options->plan;
  CLI::App* sub = root.add_subcommand(
      "demo", "The seed's scenario in under a minute: what the lock costs, what RCU saves");
  add_seconds_option(*sub, "--seconds", plan.seconds, "Duration of each cell and repeat", 60);
  sub->add_option_function<std::string>(
         "--repeats",
         [&plan](const std::string& text) {
           plan.repeats = static_cast<unsigned>(parse_count("--repeats", text, 1, 20));
         },
         "Repeats per cell; medians are shown")
      ->default_str("2")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--areas",
         [&plan](const std::string& text) {
           plan.areas = {parse_count("--areas", text, 1, 10'000'000)};
         },
         "Live areas the meminfo walk has to cover")
      ->default_str("10000")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--writers",
         [&plan](const std::string& text) {
           plan.writers = static_cast<unsigned>(parse_count("--writers", text, 1, 64));
         },
         "Writer threads")
      ->default_str("1")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--readers",
         [&plan](const std::string& text) {
           plan.readers = {0, static_cast<unsigned>(parse_count("--readers", text, 1, 64))};
         },
         "Reader threads reading meminfo non-stop")
      ->default_str("1")
      ->type_name("N");
  sub->callback([options] { run(*options); });
}

}  // namespace uvmalloc::tool
