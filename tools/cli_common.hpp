// tools/cli_common.hpp - what every subcommand of the `uvmalloc` tool shares.
//
// Option parsing with one-line errors (modes, counts, durations), result
// tables that print as aligned text, JSON or CSV from one description, plots
// drawn by piping a script to gnuplot (PNG via its cairo terminal, SVG), and
// a progress line on stderr for long runs.
//
// Thread safety: none needed; the tool's threads are the benchmarks' own and
// none of them calls into this file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <uvmalloc/va_space.hpp>

namespace uvmalloc::tool {

inline constexpr int kExitUsage = 2;    // bad options
inline constexpr int kExitFailure = 1;  // the run itself failed

// strprintf() - printf into a std::string (g++ 12 has no <format>).
[[nodiscard]] std::string strprintf(const char* format, ...) __attribute__((format(printf, 1, 2)));

// one_line() - `text` with every run of whitespace (newlines included)
// collapsed to one space and the ends trimmed: errors print as one line.
[[nodiscard]] std::string one_line(std::string_view text);

/*** Options ***/

[[nodiscard]] std::string_view mode_name(InfoMode mode) noexcept;

// parse_modes() - "locked,rcu_walk,counters" (any subset, any order, no
// repeats). Throws CLI::ValidationError naming the bad item and the allowed ones.
[[nodiscard]] std::vector<InfoMode> parse_modes(std::string_view option, std::string_view list);

// parse_count() - a whole number in [min, max]: "10000", "10k", "1M", "1e6".
// parse_counts() - a comma-separated list of them, no repeats.
// Throw CLI::ValidationError naming the option, the bad text and the range.
[[nodiscard]] std::uint64_t parse_count(std::string_view option, std::string_view text,
                                        std::uint64_t min, std::uint64_t max);
[[nodiscard]] std::vector<std::uint64_t> parse_counts(std::string_view option,
                                                      std::string_view list, std::uint64_t min,
                                                      std::uint64_t max);

// add_seconds_option() - a positive duration in seconds, at most `max`.
CLI::Option* add_seconds_option(CLI::App& app, std::string name, double& seconds,
                                std::string description, double max = 3600);

// add_choice_option() - an option taking one of a few names, e.g.
// `--free now|lazy`; anything else is a one-line error listing the names.
template <typename T>
CLI::Option* add_choice_option(CLI::App& app, const std::string& name, T& value,
                               std::vector<std::pair<std::string, T>> choices,
                               const std::string& description) {
  std::string names;
  std::string current;
  for (const auto& [choice, choice_value] : choices) {
    names += (names.empty() ? "" : "|") + choice;
    if (choice_value == value) current = choice;
  }
  return app
      .add_option_function<std::string>(
          name,
          [&value, name, names, choices = std::move(choices)](const std::string& text) {
            for (const auto& [choice, choice_value] : choices) {
              if (choice == text) {
                value = choice_value;
                return;
              }
            }
            throw CLI::ValidationError(name, "'" + text + "' is not one of " + names);
          },
          description)
      ->default_str(current)
      ->type_name(names);
}

/*** Results ***/

// How a column's numbers print in the text table; JSON and CSV always carry
// the raw number.
enum class Format {
  text,         // as is
  integer,      // 1234567 -> "1,234,567"
  rate,         // ops per second -> "5.12 M/s"
  ratio,        // 0.973 -> "97.3%"
  nanoseconds,  // 123.4 -> "123 ns", 12345 -> "12.3 us"
  bytes,        // 123456 -> "120.6 KiB"
  fixed1,       // one decimal
};

struct Column {
  std::string key;      // JSON key and CSV header: snake_case, stable
  std::string heading;  // text table heading: for people
  Format format = Format::text;
};

// A missing value (e.g. a ratio with no baseline) prints as "-", null, "".
using Cell = std::variant<std::monostate, std::string, std::int64_t, double>;

// [[nodiscard]] format_cell() - a cell as the text table shows it.
[[nodiscard]] std::string format_cell(const Cell& cell, Format format);

// Rows of results with named columns, printable three ways.
class Report {
 public:
  explicit Report(std::vector<Column> columns);

  // Report::add_row() - one value per column, in column order.
  void add_row(std::vector<Cell> row);

  [[nodiscard]] const std::vector<Column>& columns() const noexcept { return columns_; }
  [[nodiscard]] const std::vector<std::vector<Cell>>& rows() const noexcept { return rows_; }

  // Report::to_json() - an array with one object per row, keyed by Column::key.
  [[nodiscard]] nlohmann::json to_json() const;
  void write_csv(std::ostream& out) const;
  // Report::write_text() - an aligned table: text left, numbers right.
  void write_text(std::ostream& out) const;

 private:
  std::vector<Column> columns_;
  std::vector<std::vector<Cell>> rows_;
};

// --json / --csv (mutually exclusive) and, when asked for, --plot FILE.
struct OutputOptions {
  bool json = false;
  bool csv = false;
  std::string plot;  // empty: no plot

  [[nodiscard]] bool text() const noexcept { return !json && !csv; }
};
void add_output_options(CLI::App& app, OutputOptions& output, bool with_plot);

// emit() - the report on stdout in the chosen format. `notes` (what was
// measured, caveats) print under a text table only, so JSON/CSV stay parseable.
void emit(const Report& report, const OutputOptions& output,
          const std::vector<std::string>& notes = {});

/*** Plots (gnuplot) ***/

struct Series {
  std::string title;
  std::vector<std::pair<double, double>> points;  // (x, y)
  std::string colour = {};  // "#rrggbb"; empty: gnuplot's next colour
  int variant = 0;     // dash and point type, to tell apart series of one colour
};

struct PlotSpec {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_x = false;
  bool log_y = false;
  bool integer_x = false;  // x takes whole values only (thread counts): one tic each
  std::vector<Series> series;
};

// check_plot_path() - throws CLI::ValidationError unless `path` ends in
// .png or .svg (the two terminals we drive); call it at option parse time so
// a bad name fails before a long run.
void check_plot_path(std::string_view option, const std::string& path);

// gnuplot_quote() - `text` as a double-quoted gnuplot string that prints
// exactly `text` on our (enhanced-text) terminals: markup characters such as
// '_' are escaped, so "rcu_walk" does not turn into a subscript.
[[nodiscard]] std::string gnuplot_quote(std::string_view text);

// run_gnuplot() - sets the terminal and output for `path` (by extension),
// then runs `script` through gnuplot. Throws std::runtime_error if gnuplot
// is missing or fails, or the file was not written.
void run_gnuplot(const std::filesystem::path& path, std::string_view script,
                 int width = 1000, int height = 600);

// mode_colour() - one colour per info mode, the same in every plot.
[[nodiscard]] std::string mode_colour(InfoMode mode);

// plot_lines() - a line chart of `spec` (points marked) into `path`.
void plot_lines(const std::filesystem::path& path, const PlotSpec& spec);

/*** Progress ***/

// One line on stderr, rewritten in place: shown only when stderr is a
// terminal and the run is expected to take more than two seconds, so
// scripts and pipes never see it. Cleared when destroyed.
class Progress {
 public:
  Progress(std::string label, double expected_seconds);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Progress::update() - `done` of `total` steps finished, now doing `what`.
  void update(std::size_t done, std::size_t total, std::string_view what);

 private:
  std::string label_;
  bool enabled_;
};

/*** Threads ***/

// keep() - makes the compiler believe `value` is used, so a timed read whose
// result nobody looks at is not optimised away.
template <typename T>
void keep(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}


// FirstFailure - the first error any benchmark thread meets, rethrown on
// the main thread after the join (threads record it and stop).
class FirstFailure {
 public:
  void record(std::string what) {
    std::lock_guard lock(mutex_);
    if (what_.empty()) what_ = std::move(what);
  }
  void throw_if_any() {
    std::lock_guard lock(mutex_);
    if (!what_.empty()) throw std::runtime_error(what_);
  }

 private:
  std::mutex mutex_;
  std::string what_;  // guarded by mutex_
};

/*** Statistics ***/

// median() of a non-empty sample (the mean of the middle two when even).
[[nodiscard]] double median(std::vector<double> values);
// percentile() - nearest-rank percentile, p in [0, 100], of a non-empty sample.
[[nodiscard]] double percentile(std::vector<double> values, double p);

}  // namespace uvmalloc::tool
