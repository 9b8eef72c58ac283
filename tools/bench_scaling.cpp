// tools/bench_scaling.cpp - `uvmalloc bench scaling`: what one info() costs
// in each mode, and one alloc+free pair, as the live areas grow 10^3 -> 10^6.
//
// The walks (locked, rcu_walk) are O(areas); counters is O(1); an alloc+free
// pair descends the augmented free tree, O(log areas). With --adversarial,
// also the aligned alloc over DESIGN 3's misaligned-holes layout, where every
// hole is big enough but none is aligned, so an exact search visits them all.
#include <chrono>
#include <memory>

#include "cli_common.hpp"
#include "layouts.hpp"
#include "subcommands.hpp"

namespace uvmalloc::tool {
namespace {

using Clock = std::chrono::steady_clock;

struct ScalingOptions {
  std::vector<InfoMode> modes = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters};
  std::vector<std::uint64_t> areas = {1'000, 10'000, 100'000, 1'000'000};
  double seconds = 0.2;
  unsigned repeats = 3;
  bool adversarial = false;
  OutputOptions output;
};

// ns per call of `operation`, called in doubling batches until `seconds` pass,
// so a 10 ns read and a 5 ms walk both get timed over the same span.
template <typename Operation>
double time_per_call_ns(Operation&& operation, double seconds) {
  const auto started = Clock::now();
  std::uint64_t calls = 0;
  std::uint64_t batch = 1;
  while (true) {
    for (std::uint64_t i = 0; i < batch; ++i) operation();
    calls += batch;
    const std::chrono::duration<double> elapsed = Clock::now() - started;
    if (elapsed.count() >= seconds) return elapsed.count() * 1e9 / static_cast<double>(calls);
    if (elapsed.count() < seconds / 8) batch *= 2;
  }
}

template <typename Operation>
double median_ns(Operation&& operation, const ScalingOptions& options) {
  std::vector<double> samples;
  for (unsigned repeat = 0; repeat < options.repeats; ++repeat) {
    samples.push_back(time_per_call_ns(operation, options.seconds));
  }
  return median(std::move(samples));
}

// An alloc+free pair that must succeed: a failure here is a core bug.
void alloc_free(VaSpace& space, std::size_t size, std::size_t align) {
  const auto start = space.alloc(size, align);
  if (!start) throw std::runtime_error("alloc in the timed loop: " + start.error().message());
  if (const auto error = space.free(*start)) {
    throw std::runtime_error("free in the timed loop: " + error.message());
  }
}

void run(const ScalingOptions& options) {
  std::vector<Column> columns = {{"areas", "live areas", Format::integer}};
  for (const InfoMode mode : options.modes) {
    columns.push_back({strprintf("info_%s_ns", std::string(mode_name(mode)).c_str()),
                       strprintf("info(%s)", std::string(mode_name(mode)).c_str()),
                       Format::nanoseconds});
  }
  columns.push_back({"alloc_free_ns", "alloc+free", Format::nanoseconds});
  if (options.adversarial) {
    columns.push_back(
        {"aligned_alloc_free_misaligned_holes_ns", "aligned alloc+free, misaligned holes",
         Format::nanoseconds});
  }
  Report report(columns);

  const std::size_t measurements_per_size = options.modes.size() + 1 + options.adversarial;
  const std::size_t steps = options.areas.size() * measurements_per_size;
  Progress progress("bench scaling",
                    static_cast<double>(steps * options.repeats) * options.seconds);
  std::size_t done = 0;
  for (const std::uint64_t areas : options.areas) {
    const std::string areas_text = format_cell(static_cast<std::int64_t>(areas), Format::integer);
    progress.update(done, steps, "building " + areas_text + " areas");
    auto layout = bench::make_fragmented(areas, InfoMode::rcu_walk, 42);
    if (!layout) throw std::runtime_error("building the layout: " + layout.error());
    VaSpace& space = *layout->space;

    std::vector<Cell> row = {static_cast<std::int64_t>(areas)};
    for (const InfoMode mode : options.modes) {
      progress.update(done++, steps, strprintf("info(%s), %s areas",
                                               std::string(mode_name(mode)).c_str(),
                                               areas_text.c_str()));
      row.emplace_back(median_ns([&] { keep(space.info(mode)); }, options));
    }
    progress.update(done++, steps, "alloc+free, " + areas_text + " areas");
    bench::PageSizeStream sizes(7);
    row.emplace_back(
        median_ns([&] { alloc_free(space, sizes.next_bytes(), bench::kPageSize); }, options));
    layout->space.reset();

    if (options.adversarial) {
      progress.update(done, steps, "building " + areas_text + " misaligned holes");
      auto holes = bench::make_misaligned_holes(areas);
      if (!holes) throw std::runtime_error("building the misaligned holes: " + holes.error());
      progress.update(done++, steps, "aligned alloc+free, " + areas_text + " misaligned holes");
      row.emplace_back(median_ns(
          [&] { alloc_free(*holes->space, bench::kPageSize, bench::kAdversarialAlign); },
          options));
    }
    report.add_row(std::move(row));
  }

  emit(report, options.output,
       {"Nanoseconds per call, single thread, no other thread touching the space; median of " +
            std::to_string(options.repeats) + " timings of " + strprintf("%g", options.seconds) +
            " s each.",
        "Layout: N live areas of 1-4 pages, each followed by a 1-4 page hole (bench/layouts.hpp).",
        "alloc+free: alloc(1-4 pages, page aligned) then free(); lowest fit lands in the first "
        "hole."});

  if (!options.output.plot.empty()) {
    PlotSpec spec{.title = "Cost per call as live areas grow",
                  .x_label = "live areas",
                  .y_label = "nanoseconds per call",
                  .log_x = true,
                  .log_y = true,
                  .integer_x = false,
                  .series = {}};
    for (std::size_t column = 1; column < report.columns().size(); ++column) {
      // Columns after the modes are alloc+free pairs: their own colours.
      const bool info_column = column <= options.modes.size();
      Series series{.title = report.columns()[column].heading,
                    .points = {},
                    .colour = info_column ? mode_colour(options.modes[column - 1]) : "",
                    .variant = info_column ? 0 : static_cast<int>(column - options.modes.size())};
      for (const auto& row : report.rows()) {
        series.points.emplace_back(static_cast<double>(std::get<std::int64_t>(row[0])),
                                   std::get<double>(row[column]));
      }
      spec.series.push_back(std::move(series));
    }
    plot_lines(options.output.plot, spec);
  }
}

}  // namespace

void register_bench_scaling(CLI::App& bench) {
  auto options = std::make_shared<ScalingOptions>();
  CLI::App* sub = bench.add_subcommand(
      "scaling", "Cost of info() per mode and of an alloc+free pair as live areas grow");
  sub->add_option_function<std::string>(
         "--modes",
         [&modes = options->modes](const std::string& text) {
           modes = parse_modes("--modes", text);
         },
         "Info modes to time: any of locked,rcu_walk,counters")
      ->default_str("locked,rcu_walk,counters")
      ->type_name("LIST");
  sub->add_option_function<std::string>(
         "--areas",
         [&areas = options->areas](const std::string& text) {
           areas = parse_counts("--areas", text, 1, 10'000'000);
         },
         "Live area counts, one row each")
      ->default_str("1k,10k,100k,1M")
      ->type_name("LIST");
  add_seconds_option(*sub, "--seconds", options->seconds, "Timing span of each measurement", 60);
  sub->add_option_function<std::string>(
         "--repeats",
         [&repeats = options->repeats](const std::string& text) {
           repeats = static_cast<unsigned>(parse_count("--repeats", text, 1, 100));
         },
         "Timings per measurement; the median is reported")
      ->default_str("3")
      ->type_name("N");
  sub->add_flag("--adversarial", options->adversarial,
                "Also time an aligned alloc over holes that are all big enough but misaligned");
  add_output_options(*sub, options->output, /*with_plot=*/true);
  sub->callback([options] { run(*options); });
}

}  // namespace uvmalloc::tool
