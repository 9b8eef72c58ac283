// tools/cli_common.cpp - shared option parsing, result output, plots, progress.
#include "cli_common.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <sys/wait.h>

namespace uvmalloc::tool {

std::string strprintf(const char* format, ...) {
  std::va_list arguments;
  va_start(arguments, format);
  std::va_list again;
  va_copy(again, arguments);
  const int length = std::vsnprintf(nullptr, 0, format, arguments);
  va_end(arguments);
  std::string text(static_cast<std::size_t>(std::max(length, 0)), '\0');
  std::vsnprintf(text.data(), text.size() + 1, format, again);
  va_end(again);
  return text;
}

std::string one_line(std::string_view text) {
  std::string line;
  bool pending_space = false;
  for (const char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      pending_space = !line.empty();
      continue;
    }
    if (pending_space) line += ' ';
    pending_space = false;
    line += c;
  }
  return line;
}

/*** Options ***/

namespace {

constexpr std::array kModes = {InfoMode::locked, InfoMode::rcu_walk, InfoMode::counters};

// Items of a comma-separated list; an empty item is kept so it can be reported.
std::vector<std::string_view> split_list(std::string_view list) {
  std::vector<std::string_view> items;
  while (true) {
    const auto comma = list.find(',');
    items.push_back(list.substr(0, comma));
    if (comma == std::string_view::npos) return items;
    list.remove_prefix(comma + 1);
  }
}

std::string group_digits(std::uint64_t value) {
  std::string digits = std::to_string(value);
  for (auto at = static_cast<std::ptrdiff_t>(digits.size()) - 3; at > 0; at -= 3) {
    digits.insert(static_cast<std::size_t>(at), ",");
  }
  return digits;
}

}  // namespace

std::string_view mode_name(InfoMode mode) noexcept {
  switch (mode) {
    case InfoMode::locked: return "locked";
    case InfoMode::rcu_walk: return "rcu_walk";
    case InfoMode::counters: return "counters";
  }
  return "?";
}

std::vector<InfoMode> parse_modes(std::string_view option, std::string_view list) {
  std::vector<InfoMode> modes;
  for (const auto item : split_list(list)) {
    const auto found = std::ranges::find(kModes, item, mode_name);
    if (found == kModes.end()) {
      throw CLI::ValidationError(
          std::string(option),
          strprintf("unknown mode '%.*s'; allowed: locked, rcu_walk, counters (comma-separated)",
                    static_cast<int>(item.size()), item.data()));
    }
    if (std::ranges::find(modes, *found) != modes.end()) {
      throw CLI::ValidationError(std::string(option),
                                 strprintf("mode '%.*s' given twice", static_cast<int>(item.size()), item.data()));
    }
    modes.push_back(*found);
  }
  return modes;
}

std::uint64_t parse_count(std::string_view option, std::string_view text, std::uint64_t min,
                          std::uint64_t max) {
  const auto reject = [&] {
    return CLI::ValidationError(
        std::string(option),
        strprintf("'%.*s' is not a whole number in [%s, %s] (forms: 10000, 10k, 1M, 1e6)",
                  static_cast<int>(text.size()), text.data(), group_digits(min).c_str(),
                  group_digits(max).c_str()));
  };
  std::uint64_t mantissa = 0;
  const auto [rest, error] = std::from_chars(text.data(), text.data() + text.size(), mantissa);
  if (error != std::errc{} || rest == text.data()) throw reject();
  std::string_view suffix(rest, static_cast<std::size_t>(text.data() + text.size() - rest));
  std::uint64_t multiplier = 1;
  if (suffix == "k" || suffix == "K") {
    multiplier = 1'000;
  } else if (suffix == "M") {
    multiplier = 1'000'000;
  } else if (suffix.size() >= 2 && (suffix[0] == 'e' || suffix[0] == 'E')) {
    unsigned exponent = 0;
    const auto [end, exponent_error] =
        std::from_chars(suffix.data() + 1, suffix.data() + suffix.size(), exponent);
    if (exponent_error != std::errc{} || end != suffix.data() + suffix.size() || exponent > 18) {
      throw reject();
    }
    for (unsigned i = 0; i < exponent; ++i) multiplier *= 10;
  } else if (!suffix.empty()) {
    throw reject();
  }
  if (mantissa > max / multiplier) throw reject();
  const std::uint64_t value = mantissa * multiplier;
  if (value < min || value > max) throw reject();
  return value;
}

std::vector<std::uint64_t> parse_counts(std::string_view option, std::string_view list,
                                        std::uint64_t min, std::uint64_t max) {
  std::vector<std::uint64_t> values;
  for (const auto item : split_list(list)) {
    const std::uint64_t value = parse_count(option, item, min, max);
    if (std::ranges::find(values, value) != values.end()) {
      throw CLI::ValidationError(std::string(option),
                                 strprintf("value %llu given twice in '%.*s'", static_cast<unsigned long long>(value),
                                           static_cast<int>(list.size()), list.data()));
    }
    values.push_back(value);
  }
  return values;
}

CLI::Option* add_seconds_option(CLI::App& app, std::string name, double& seconds,
                                std::string description, double max) {
  const std::string option = name;
  return app
      .add_option_function<std::string>(
          std::move(name),
          [&seconds, option, max](const std::string& text) {
            double value = 0;
            const auto [rest, error] =
                std::from_chars(text.data(), text.data() + text.size(), value);
            if (error != std::errc{} || rest != text.data() + text.size() ||
                !std::isfinite(value) || value <= 0 || value > max) {
              throw CLI::ValidationError(
                  option, strprintf("'%s' is not a number of seconds in (0, %g]", text.c_str(), max));
            }
            seconds = value;
          },
          std::move(description))
      ->default_str(strprintf("%g", seconds))
      ->type_name("S");
}

/*** Results ***/

std::string format_cell(const Cell& cell, Format format) {
  if (std::holds_alternative<std::monostate>(cell)) return "-";
  if (const auto* text = std::get_if<std::string>(&cell)) return *text;
  const double value = std::holds_alternative<std::int64_t>(cell)
                           ? static_cast<double>(std::get<std::int64_t>(cell))
                           : std::get<double>(cell);
  const auto scaled = [value](std::array<const char*, 4> units, double step) {
    double shown = value;
    std::size_t unit = 0;
    while (std::fabs(shown) >= step && unit + 1 < units.size()) {
      shown /= step;
      ++unit;
    }
    if (unit == 0 && shown == std::floor(shown)) {
      return strprintf("%.0f%s", shown, units[unit]);
    }
    const int decimals = std::fabs(shown) >= 100 ? 0 : std::fabs(shown) >= 10 ? 1 : 2;
    return strprintf("%.*f%s", decimals, shown, units[unit]);
  };
  switch (format) {
    case Format::text:
      if (std::holds_alternative<std::int64_t>(cell)) {
        return std::to_string(std::get<std::int64_t>(cell));
      }
      return strprintf("%g", value);
    case Format::integer:
      if (value < 0) return "-" + group_digits(static_cast<std::uint64_t>(-value));
      return group_digits(static_cast<std::uint64_t>(std::llround(value)));
    case Format::rate: return scaled({"/s", " k/s", " M/s", " G/s"}, 1000);
    case Format::ratio: {
      const double percent = value * 100;
      const int decimals = std::fabs(percent) >= 10 || percent == 0 ? 0 : std::fabs(percent) >= 1 ? 1 : 2;
      return strprintf("%.*f%%", decimals, percent);
    }
    case Format::nanoseconds: return scaled({" ns", " us", " ms", " s"}, 1000);
    case Format::bytes: return scaled({" B", " KiB", " MiB", " GiB"}, 1024);
    case Format::fixed1: return strprintf("%.1f", value);
  }
  return "?";
}

Report::Report(std::vector<Column> columns) : columns_(std::move(columns)) {}

void Report::add_row(std::vector<Cell> row) {
  if (row.size() != columns_.size()) {
    throw std::logic_error(strprintf("report row has %zu cells for %zu columns", row.size(),
                                     columns_.size()));
  }
  rows_.push_back(std::move(row));
}

nlohmann::json Report::to_json() const {
  auto array = nlohmann::json::array();
  for (const auto& row : rows_) {
    auto object = nlohmann::json::object();
    for (std::size_t i = 0; i < columns_.size(); ++i) {
      std::visit(
          [&](const auto& value) {
            if constexpr (std::is_same_v<std::decay_t<decltype(value)>, std::monostate>) {
              object[columns_[i].key] = nullptr;
            } else {
              object[columns_[i].key] = value;
            }
          },
          row[i]);
    }
    array.push_back(std::move(object));
  }
  return array;
}

void Report::write_csv(std::ostream& out) const {
  // RFC 4180: quote a field only when it holds a comma, a quote or a newline.
  const auto field = [](const std::string& text) {
    if (text.find_first_of(",\"\n") == std::string::npos) return text;
    std::string quoted = "\"";
    for (const char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
    return quoted + '"';
  };
  for (std::size_t i = 0; i < columns_.size(); ++i) {
    out << (i ? "," : "") << field(columns_[i].key);
  }
  out << '\n';
  for (const auto& row : rows_) {
    for (std::size_t i = 0; i < row.size(); ++i) {
      out << (i ? "," : "");
      std::visit(
          [&](const auto& value) {
            using T = std::decay_t<decltype(value)>;
            if constexpr (std::is_same_v<T, std::string>) {
              out << field(value);
            } else if constexpr (std::is_same_v<T, double>) {
              out << strprintf("%.6g", value);
            } else if constexpr (std::is_same_v<T, std::int64_t>) {
              out << value;
            }
          },
          row[i]);
    }
    out << '\n';
  }
}

void Report::write_text(std::ostream& out) const {
  std::vector<std::vector<std::string>> cells;
  std::vector<std::size_t> widths;
  for (const auto& column : columns_) widths.push_back(column.heading.size());
  for (const auto& row : rows_) {
    auto& shown = cells.emplace_back();
    for (std::size_t i = 0; i < row.size(); ++i) {
      shown.push_back(format_cell(row[i], columns_[i].format));
      widths[i] = std::max(widths[i], shown.back().size());
    }
  }
  const auto right_aligned = [&](std::size_t i) { return columns_[i].format != Format::text; };
  const auto print_row = [&](const auto& texts) {
    std::string line;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      if (i) line += "  ";
      const std::string& text = texts[i];
      const std::string pad(widths[i] - text.size(), ' ');
      line += right_aligned(i) ? pad + text : text + pad;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << '\n';
  };
  std::vector<std::string> headings;
  for (const auto& column : columns_) headings.push_back(column.heading);
  print_row(headings);
  std::vector<std::string> rule;
  for (const auto width : widths) rule.emplace_back(width, '-');
  print_row(rule);
  for (const auto& row : cells) print_row(row);
}

void add_output_options(CLI::App& app, OutputOptions& output, bool with_plot) {
  auto* json = app.add_flag("--json", output.json, "Print the results as one JSON array");
  auto* csv = app.add_flag("--csv", output.csv, "Print the results as CSV with a header line");
  json->excludes(csv);
  if (with_plot) {
    app.add_option_function<std::string>(
           "--plot",
           [&output](const std::string& path) {
             check_plot_path("--plot", path);
             output.plot = path;
           },
           "Also draw the results into F.png or F.svg (gnuplot)")
        ->type_name("F");
  }
}

void emit(const Report& report, const OutputOptions& output,
          const std::vector<std::string>& notes) {
  if (output.json) {
    std::cout << report.to_json().dump(2) << '\n';
  } else if (output.csv) {
    report.write_csv(std::cout);
  } else {
    report.write_text(std::cout);
    if (!notes.empty()) std::cout << '\n';
    for (const auto& note : notes) std::cout << note << '\n';
  }
  std::cout.flush();
}

/*** Plots (gnuplot) ***/

void check_plot_path(std::string_view option, const std::string& path) {
  const auto extension = std::filesystem::path(path).extension();
  if (extension != ".png" && extension != ".svg") {
    throw CLI::ValidationError(std::string(option),
                               strprintf("'%s' must end in .png or .svg", path.c_str()));
  }
}

std::string gnuplot_quote(std::string_view text) {
  std::string quoted = "\"";
  for (const char c : text) {
    switch (c) {
      case '"': quoted += "\\\""; break;
      case '\n': quoted += "\\n"; break;
      // Enhanced-text markup: a doubled backslash in a double-quoted string
      // prints the character as is.
      case '\\': case '_': case '^': case '@': case '&': case '~': case '{': case '}':
        quoted += "\\\\";
        quoted += c;
        break;
      default: quoted += c;
    }
  }
  return quoted + '"';
}

void run_gnuplot(const std::filesystem::path& path, std::string_view script, int width,
                 int height) {
  const bool svg = path.extension() == ".svg";
  const std::string terminal =
      svg ? strprintf("set terminal svg size %d,%d dynamic enhanced font 'Sans,12' background '#ffffff'\n",
                      width, height)
          : strprintf("set terminal pngcairo size %d,%d enhanced font 'Sans,11'\n", width, height);
  std::error_code ignored;
  std::filesystem::remove(path, ignored);  // so a stale file cannot pass for a new one
  // gnuplot reads the script from stdin; its messages go to our stderr.
  FILE* pipe = popen("gnuplot", "w");
  if (pipe == nullptr) throw std::runtime_error("cannot start gnuplot (install gnuplot-nox)");
  // A single-quoted gnuplot string is taken literally; only ' is doubled.
  std::string output = "'";
  for (const char c : path.string()) output += c == '\'' ? std::string("''") : std::string(1, c);
  const std::string header = terminal + "set output " + output + "'\n";
  std::fwrite(header.data(), 1, header.size(), pipe);
  std::fwrite(script.data(), 1, script.size(), pipe);
  std::fputs("\nset output\n", pipe);
  const int status = pclose(pipe);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(
        WIFEXITED(status) && WEXITSTATUS(status) == 127
            ? std::string("gnuplot not found (install gnuplot-nox)")
            : strprintf("gnuplot failed drawing %s", path.c_str()));
  }
  if (!std::filesystem::exists(path) || std::filesystem::file_size(path) == 0) {
    throw std::runtime_error(strprintf("gnuplot wrote nothing to %s", path.c_str()));
  }
}

void plot_lines(const std::filesystem::path& path, const PlotSpec& spec) {
  std::string script;
  // Inline data blocks keep the plot one self-contained script.
  for (std::size_t i = 0; i < spec.series.size(); ++i) {
    script += strprintf("$series%zu << EOD\n", i);
    for (const auto& [x, y] : spec.series[i].points) script += strprintf("%.9g %.9g\n", x, y);
    script += "EOD\n";
  }
  script += "set title " + gnuplot_quote(spec.title) + "\n";
  script += "set xlabel " + gnuplot_quote(spec.x_label) + "\n";
  script += "set ylabel " + gnuplot_quote(spec.y_label) + "\n";
  if (spec.log_x) script += "set logscale x\nset format x '10^{%L}'\n";
  if (spec.log_y) script += "set logscale y\nset format y '10^{%L}'\n";
  if (spec.integer_x) {
    double low = 0;
    double high = 0;
    for (const auto& series : spec.series) {
      for (const auto& point : series.points) {
        low = std::min(low, point.first);
        high = std::max(high, point.first);
      }
    }
    script += strprintf("set xtics 1\nset xrange [%g:%g]\n", low - 0.2, high + 0.2);
  }
  script +=
      "set grid xtics ytics mytics lc rgb '#dddddd'\n"
      "set key outside right top box\n"
      "set border lw 1.2\n";
  std::string plot = "plot ";
  for (std::size_t i = 0; i < spec.series.size(); ++i) {
    if (i) plot += ", \\\n     ";
    const Series& series = spec.series[i];
    constexpr std::array kPointTypes = {7, 5, 9, 11, 13};  // filled circle, square, triangles...
    plot += strprintf("$series%zu using 1:2 with linespoints lw 2 ps 1.2 pt %d dt %d", i,
                      kPointTypes[static_cast<std::size_t>(series.variant) % kPointTypes.size()],
                      series.variant % 5 + 1);
    if (!series.colour.empty()) plot += " lc rgb '" + series.colour + "'";
    plot += " title " + gnuplot_quote(series.title);
  }
  script += plot + "\n";
  run_gnuplot(path, script);
}

std::string mode_colour(InfoMode mode) {
  switch (mode) {
    case InfoMode::locked: return "#d7301f";
    case InfoMode::rcu_walk: return "#2f6db5";
    case InfoMode::counters: return "#1a9641";
  }
  return "#000000";
}

/*** Progress ***/

Progress::Progress(std::string label, double expected_seconds)
    : label_(std::move(label)), enabled_(expected_seconds > 2 && isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() {
  if (enabled_) std::fputs("\r\033[K", stderr);
}

void Progress::update(std::size_t done, std::size_t total, std::string_view what) {
  if (!enabled_) return;
  std::fprintf(stderr, "\r\033[K%s [%zu/%zu] %.*s", label_.c_str(), done, total,
               static_cast<int>(what.size()), what.data());
  std::fflush(stderr);
}

/*** Statistics ***/

double median(std::vector<double> values) {
  std::ranges::sort(values);
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

double percentile(std::vector<double> values, double p) {
  std::ranges::sort(values);
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100 * static_cast<double>(values.size())));
  return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

}  // namespace uvmalloc::tool
