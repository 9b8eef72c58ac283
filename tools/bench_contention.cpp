// tools/bench_contention.cpp - `uvmalloc bench contention`: writer and reader
// throughput for every (mode, readers, areas) combination (DESIGN 2.3).
#include <memory>
#include <thread>

#include "cli_common.hpp"
#include "contention.hpp"
#include "subcommands.hpp"

namespace uvmalloc::tool {
namespace {

struct ContentionOptions {
  ContentionPlan plan{.modes = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters},
                      .writers = 1,
                      .readers = {0, 1, 2},
                      .areas = {10'000},
                      .seconds = 1,
                      .repeats = 3};
  OutputOptions output;
};

std::string areas_title(std::uint64_t areas) {
  return strprintf("%s areas", format_cell(static_cast<std::int64_t>(areas), Format::integer).c_str());
}

void run(const ContentionOptions& options) {
  const ContentionPlan& plan = options.plan;
  const auto results = run_contention(plan, "bench contention");

  Report report({{"mode", "mode"},
                 {"writers", "writers", Format::integer},
                 {"readers", "readers", Format::integer},
                 {"areas", "areas", Format::integer},
                 {"writer_ops_per_sec", "writer ops", Format::rate},
                 {"reader_ops_per_sec", "reader ops", Format::rate},
                 {"writer_kept", "writer kept", Format::ratio},
                 {"writer_on_cpu", "writer on CPU", Format::ratio}});
  for (const auto& result : results) {
    report.add_row({std::string(mode_name(result.mode)), std::int64_t{result.writers},
                    std::int64_t{result.readers}, static_cast<std::int64_t>(result.areas),
                    result.writer_ops_per_sec, result.reader_ops_per_sec,
                    result.writer_kept ? Cell{*result.writer_kept} : Cell{},
                    result.writer_on_cpu});
  }

  const unsigned cores = std::thread::hardware_concurrency();
  std::vector<std::string> notes = {
      strprintf("One writer op = alloc(1-4 pages) + %s; one reader op = %s.",
                plan.free == WriterFree::now ? "free()" : "free_lazy() (purges as they fall due)",
                plan.call == ReaderCall::info ? "info(mode)" : "meminfo() on a space in that mode"),
      strprintf("Ops are totals over all threads; medians of %u repeat(s) of %g s, interleaved.",
                plan.repeats, plan.seconds),
      "writer kept = writer ops with the readers / without them, same mode and areas "
      "(median of per-repeat ratios).",
      "writer on CPU = the writers' CPU time / wall time: below 100% they slept on the lock "
      "or the machine ran something else.",
  };
  bool oversubscribed = false;
  for (const unsigned readers : plan.readers) oversubscribed |= plan.writers + readers > cores;
  if (oversubscribed) {
    notes.push_back(strprintf(
        "This machine has %u cores: cells with writers + readers > %u share cores, so their "
        "rates also reflect time slicing, not only the lock.",
        cores, cores));
  }
  emit(report, options.output, notes);

  if (!options.output.plot.empty()) {
    PlotSpec spec{.title = strprintf("Writer throughput under meminfo readers (%u writer%s)",
                                     plan.writers, plan.writers == 1 ? "" : "s"),
                  .x_label = "reader threads",
                  .y_label = "writer alloc+free pairs per second",
                  .log_x = false,
                  .log_y = true,
                  .integer_x = true,
                  .series = {}};
    for (const InfoMode mode : plan.modes) {
      for (std::size_t a = 0; a < plan.areas.size(); ++a) {
        const std::uint64_t areas = plan.areas[a];
        Series series{.title = std::string(mode_name(mode)),
                      .points = {},
                      .colour = mode_colour(mode),
                      .variant = static_cast<int>(a)};
        if (plan.areas.size() > 1) series.title += ", " + areas_title(areas);
        for (const auto& result : results) {
          if (result.mode == mode && result.areas == areas) {
            series.points.emplace_back(result.readers, result.writer_ops_per_sec);
          }
        }
        spec.series.push_back(std::move(series));
      }
    }
    plot_lines(options.output.plot, spec);
  }
}

}  // namespace

void register_bench_contention(CLI::App& bench) {
  auto options = std::make_shared<ContentionOptions>();
  ContentionPlan& plan = options->plan;
  CLI::App* sub = bench.add_subcommand(
      "contention",
      "Writer and reader throughput for every mode x readers x areas: the seed's problem");
  sub->add_option_function<std::string>(
         "--modes", [&plan](const std::string& text) { plan.modes = parse_modes("--modes", text); },
         "Info modes to compare: any of locked,rcu_walk,counters")
      ->default_str("locked,rcu_walk,counters")
      ->type_name("LIST");
  sub->add_option_function<std::string>(
         "--writers",
         [&plan](const std::string& text) {
           plan.writers = static_cast<unsigned>(parse_count("--writers", text, 1, 256));
         },
         "Writer threads (alloc+free in a loop)")
      ->default_str("1")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--readers",
         [&plan](const std::string& text) {
           plan.readers.clear();
           for (const auto count : parse_counts("--readers", text, 0, 256)) {
             plan.readers.push_back(static_cast<unsigned>(count));
           }
         },
         "Reader thread counts, one cell each; 0 = writers alone")
      ->default_str("0,1,2")
      ->type_name("LIST");
  sub->add_option_function<std::string>(
         "--areas",
         [&plan](const std::string& text) {
           plan.areas = parse_counts("--areas", text, 1, 10'000'000);
         },
         "Live areas in the fragmented layout, one cell each (e.g. 1k,10k,100k)")
      ->default_str("10000")
      ->type_name("LIST");
  add_seconds_option(*sub, "--seconds", plan.seconds, "Duration of each cell and repeat", 600);
  sub->add_option_function<std::string>(
         "--repeats",
         [&plan](const std::string& text) {
           plan.repeats = static_cast<unsigned>(parse_count("--repeats", text, 1, 100));
         },
         "Repeats per cell; medians are reported")
      ->default_str("3")
      ->type_name("N");
  add_choice_option(*sub, "--read", plan.call,
                    {{"info", ReaderCall::info}, {"meminfo", ReaderCall::meminfo}},
                    "What readers call: info(mode), or meminfo() on a space in that mode");
  add_choice_option(*sub, "--free", plan.free,
                    {{"now", WriterFree::now}, {"lazy", WriterFree::lazy}},
                    "How writers free: free() now, or free_lazy() with purges as they fall due");
  add_output_options(*sub, options->output, /*with_plot=*/true);
  sub->callback([options] { run(*options); });
}

}  // namespace uvmalloc::tool
