// tools/map.cpp - `uvmalloc map --png F`: a picture of the address space
// after a chosen workload, to see fragmentation at a glance.
//
// The range is cut into rows read left to right, top to bottom, like text.
// Live areas, lazily freed areas (still unusable until a purge) and free
// space get one colour each; the largest free chunk (lazily freed space
// counts as free, as in meminfo) is outlined. The title carries meminfo.
#include <algorithm>
#include <iostream>
#include <memory>
#include <random>

#include "cli_common.hpp"
#include "subcommands.hpp"

namespace uvmalloc::tool {
namespace {

constexpr std::size_t kPage = 4096;
constexpr std::uintptr_t kSpaceStart = std::uintptr_t{1} << 32;

enum class Workload { fragmented, churn, lazy };

struct MapOptions {
  std::string png;
  std::string svg;
  Workload workload = Workload::churn;
  std::uint64_t areas = 300;
  std::uint64_t seed = 1;
  unsigned rows = 16;
};

std::string_view workload_name(Workload workload) {
  switch (workload) {
    case Workload::fragmented: return "fragmented";
    case Workload::churn: return "churn";
    case Workload::lazy: return "lazy";
  }
  return "?";
}

// Runs the workload on a space of 24 pages per area: room for every area
// (1-16 pages, 8.5 on average) with a free tail in view.
//   fragmented  2N areas, then every other one freed: N live, N holes
//   churn       N areas, then 4N random steps: alloc, free or free_lazy
//   lazy        N areas, then a random half freed lazily, no purge
// churn purges once lazily freed pages pass 1/16 of the range, so some lazy
// areas are in view but they do not crowd out the rest; lazy never purges.
std::size_t lazy_max_pages(const MapOptions& options) {
  return options.workload == Workload::lazy ? std::size_t{1} << 40 : 24 * options.areas / 16;
}

std::unique_ptr<VaSpace> run_workload(const MapOptions& options) {
  auto created = VaSpace::create({.start = kSpaceStart,
                                  .end = kSpaceStart + 24 * options.areas * kPage,
                                  .page_size = kPage,
                                  .info_mode = InfoMode::locked,
                                  .lazy_max_pages = lazy_max_pages(options),
                                  .on_purge = {}});
  if (!created) throw std::runtime_error("VaSpace::create: " + created.error().message());
  std::unique_ptr<VaSpace> space = std::move(*created);
  std::mt19937_64 random(options.seed);
  std::uniform_int_distribution<std::size_t> pages(1, 16);
  std::vector<std::uintptr_t> live;
  const auto alloc = [&] {
    const auto start = space->alloc(pages(random) * kPage, kPage);
    if (start) {
      live.push_back(*start);
    } else if (start.error() != std::errc::not_enough_memory) {
      throw std::runtime_error("alloc: " + start.error().message());
    }
  };
  const auto release = [&](bool lazy) {
    std::uniform_int_distribution<std::size_t> pick(0, live.size() - 1);
    const std::size_t index = pick(random);
    const std::uintptr_t start = live[index];
    live[index] = live.back();
    live.pop_back();
    if (const auto error = lazy ? space->free_lazy(start) : space->free(start)) {
      throw std::runtime_error("free: " + error.message());
    }
  };
  switch (options.workload) {
    case Workload::fragmented: {
      for (std::uint64_t i = 0; i < 2 * options.areas; ++i) alloc();
      std::vector<std::uintptr_t> all = live;
      std::ranges::sort(all);
      live.clear();
      for (std::size_t i = 0; i < all.size(); ++i) {
        if (i % 2 == 0) {
          live.push_back(all[i]);
        } else if (const auto error = space->free(all[i])) {
          throw std::runtime_error("free: " + error.message());
        }
      }
      break;
    }
    case Workload::churn: {
      for (std::uint64_t i = 0; i < options.areas; ++i) alloc();
      std::uniform_int_distribution<int> step(0, 3);
      for (std::uint64_t i = 0; i < 4 * options.areas; ++i) {
        const int choice = live.empty() ? 0 : step(random);
        if (choice <= 1) {
          alloc();
        } else {
          release(/*lazy=*/choice == 3);
        }
      }
      break;
    }
    case Workload::lazy: {
      for (std::uint64_t i = 0; i < options.areas; ++i) alloc();
      for (std::uint64_t i = 0; i < options.areas / 2 && !live.empty(); ++i) release(true);
      break;
    }
  }
  return space;
}

// A kind of range in the picture and how it is drawn.
struct Kind {
  const char* title;
  const char* colour;
};
constexpr Kind kFree{"free", "#e6e6e6"};
constexpr Kind kLive{"live", "#2f6db5"};
constexpr Kind kLazy{"lazily freed (unusable until the next purge)", "#f08c28"};

struct Range {
  std::uintptr_t start;
  std::uintptr_t end;
};

// Rows of `row_bytes` each; a range crossing a row's end continues on the
// next row. One data line per piece: x_low x_high row, with x in KiB.
std::string pieces(const std::vector<Range>& ranges, std::uintptr_t origin,
                   std::size_t row_bytes) {
  std::string data;
  for (const auto& range : ranges) {
    for (std::uintptr_t at = range.start; at < range.end;) {
      const std::size_t row = (at - origin) / row_bytes;
      const std::uintptr_t row_end = origin + (row + 1) * row_bytes;
      const std::uintptr_t piece_end = std::min(range.end, row_end);
      data += strprintf("%.3f %.3f %zu\n", static_cast<double>(at - origin - row * row_bytes) / 1024,
                        static_cast<double>(piece_end - origin - row * row_bytes) / 1024, row);
      at = piece_end;
    }
  }
  return data;
}

void draw(const MapOptions& options, const VaSpace& space, const std::filesystem::path& path) {
  const VaSpaceOptions& range = space.options();
  std::vector<Range> live;
  std::vector<Range> lazy;
  space.for_each_area([&](const AreaInfo& area) {
    (area.lazy ? lazy : live).push_back({area.start, area.end});
  });
  // The largest gap between live areas (lazy ones count as free), as meminfo.
  Range largest{range.start, range.start};
  std::uintptr_t previous_end = range.start;
  for (const auto& area : live) {
    if (area.start - previous_end > largest.end - largest.start) largest = {previous_end, area.start};
    previous_end = area.end;
  }
  if (range.end - previous_end > largest.end - largest.start) largest = {previous_end, range.end};

  const std::size_t total = range.end - range.start;
  const unsigned rows = options.rows;
  const std::size_t row_bytes = (total / rows + kPage - 1) / kPage * kPage;
  const VmallocInfo info = space.info();

  std::string script;
  script += "$free << EOD\n" + pieces({{range.start, range.end}}, range.start, row_bytes) + "EOD\n";
  script += "$live << EOD\n" + pieces(live, range.start, row_bytes) + "EOD\n";
  script += "$lazy << EOD\n" + pieces(lazy, range.start, row_bytes) + "EOD\n";
  script += "$largest << EOD\n" + pieces({largest}, range.start, row_bytes) + "EOD\n";
  // Two lines, the second smaller: gnuplot joins strings with '.'.
  script += "set title " +
            gnuplot_quote(strprintf(
                "VmallocTotal %s kB    VmallocUsed %s kB    VmallocChunk %s kB\n",
                format_cell(static_cast<std::int64_t>(info.total / 1024), Format::integer).c_str(),
                format_cell(static_cast<std::int64_t>(info.used / 1024), Format::integer).c_str(),
                format_cell(static_cast<std::int64_t>(info.largest_chunk / 1024), Format::integer)
                    .c_str())) +
            " . \"{/*0.85 \" . " +
            gnuplot_quote(strprintf(
                "%zu live and %zu lazily freed areas after the '%s' workload (%llu areas, seed "
                "%llu); each row is %s, read like text",
                live.size(), lazy.size(), std::string(workload_name(options.workload)).c_str(),
                static_cast<unsigned long long>(options.areas),
                static_cast<unsigned long long>(options.seed),
                format_cell(static_cast<double>(row_bytes), Format::bytes).c_str())) +
            " . \"}\"\n";
  script += strprintf("set xrange [0:%.3f]\n", static_cast<double>(row_bytes) / 1024);
  script += strprintf("set yrange [%f:-0.6] reverse\n", rows - 0.4);
  script += "set xlabel 'offset in the row (KiB)'\nset ylabel 'row start address'\n";
  script += "set ytics (";
  const unsigned label_every = std::max(1u, rows / 8);
  for (unsigned row = 0; row < rows; row += label_every) {
    script += strprintf("%s'0x%llx' %u", row ? ", " : "",
                        static_cast<unsigned long long>(range.start + row * row_bytes), row);
  }
  script += ")\nset ytics nomirror scale 0\nset xtics nomirror out\nset border 3\n";
  script += "set key outside bottom center horizontal samplen 2\n";
  // boxxyerror columns: x y x_low x_high y_low y_high
  // Areas a few pixels wide or more get a white edge so neighbours stay
  // apart; below that the edges would hide the areas.
  const double pixels_per_area = 1000.0 * static_cast<double>(rows) /
                                 static_cast<double>(std::max<std::size_t>(live.size() + lazy.size(), 1));
  const std::string edge = pixels_per_area >= 6 ? "border lc rgb 'white'" : "noborder";
  const auto boxes = [&](const char* data, const Kind& kind, const std::string& style) {
    return strprintf(
        "%s using (($1+$2)/2):3:1:2:($3-0.38):($3+0.38) with boxxyerror fs solid 1.0 %s "
        "lc rgb '%s' title %s",
        data, style.c_str(), kind.colour, gnuplot_quote(kind.title).c_str());
  };
  std::string plot = "plot " + boxes("$free", kFree, "noborder");
  if (!live.empty()) plot += ", \\\n  " + boxes("$live", kLive, edge);
  if (!lazy.empty()) plot += ", \\\n  " + boxes("$lazy", kLazy, edge);
  plot += ", \\\n  $largest using (($1+$2)/2):3:1:2:($3-0.45):($3+0.45) with boxxyerror "
          "fs empty border lc rgb '#1a9641' lw 3 lc rgb '#1a9641' "
          "title 'largest free chunk (VmallocChunk)'\n";
  script += plot;
  run_gnuplot(path, script, 1200, 170 + 34 * static_cast<int>(rows));
}

void run(const MapOptions& options) {
  const auto space = run_workload(options);
  if (const auto broken = space->check_invariants(); !broken.empty()) {
    throw std::runtime_error("core bug after the workload: " + broken);
  }
  std::cout << space->meminfo();
  for (const auto& path : {options.png, options.svg}) {
    if (path.empty()) continue;
    draw(options, *space, path);
    std::cout << "wrote " << path << '\n';
  }
}

}  // namespace

void register_map(CLI::App& root) {
  auto options = std::make_shared<MapOptions>();
  CLI::App* sub = root.add_subcommand(
      "map", "Draw the address space after a workload: live, lazily freed and free ranges");
  const auto path_option = [&](const char* name, std::string& target, const char* extension) {
    return sub
        ->add_option_function<std::string>(
            name,
            [&target, name, extension](const std::string& path) {
              if (std::filesystem::path(path).extension() != extension) {
                throw CLI::ValidationError(name, "'" + path + "' must end in " + extension);
              }
              target = path;
            },
            std::string("Write the picture as ") + (extension + 1) + " (gnuplot)")
        ->type_name("F");
  };
  auto* png = path_option("--png", options->png, ".png");
  auto* svg = path_option("--svg", options->svg, ".svg");
  add_choice_option(*sub, "--workload", options->workload,
                    {{"fragmented", Workload::fragmented},
                     {"churn", Workload::churn},
                     {"lazy", Workload::lazy}},
                    "fragmented: every other area freed; churn: random alloc/free/free_lazy; "
                    "lazy: half the areas lazily freed");
  sub->add_option_function<std::string>(
         "--areas",
         [&areas = options->areas](const std::string& text) {
           areas = parse_count("--areas", text, 1, 100'000);
         },
         "Areas the workload allocates")
      ->default_str("300")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--seed",
         [&seed = options->seed](const std::string& text) {
           seed = parse_count("--seed", text, 0, ~std::uint64_t{0} >> 1);
         },
         "Random seed of the workload")
      ->default_str("1")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--rows",
         [&rows = options->rows](const std::string& text) {
           rows = static_cast<unsigned>(parse_count("--rows", text, 1, 200));
         },
         "Rows the range is cut into")
      ->default_str("16")
      ->type_name("N");
  sub->callback([options, png, svg] {
    if (png->count() == 0 && svg->count() == 0) {
      throw CLI::ValidationError("map", "nothing to draw: give --png F.png and/or --svg F.svg");
    }
    run(*options);
  });
}

}  // namespace uvmalloc::tool
