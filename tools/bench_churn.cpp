// tools/bench_churn.cpp - `uvmalloc bench churn`: large-buffer churn through
// Vmalloc against mmap+munmap, glibc (fixed 128 KiB mmap threshold and
// defaults) and jemalloc (DESIGN 2.3, issue 4). The measurement is churn.cpp.
#include <sys/utsname.h>

#include <iostream>
#include <memory>
#include <thread>

#include "churn.hpp"
#include "cli_common.hpp"
#include "subcommands.hpp"

namespace uvmalloc::tool {
namespace {

struct ChurnOptions {
  ChurnPlan plan;
  OutputOptions output;
  std::string child;  // hidden: "PEER:THREADS", run one measurement and print it
};

std::vector<ChurnPeer> default_peers() {
  std::vector<ChurnPeer> peers;
  for (const ChurnPeer peer : kAllChurnPeers) {
    if (peer_available(peer)) peers.push_back(peer);
  }
  return peers;
}

std::string peer_list(const std::vector<ChurnPeer>& peers) {
  std::string list;
  for (const ChurnPeer peer : peers) list += (list.empty() ? "" : ",") + std::string(peer_name(peer));
  return list;
}

std::vector<ChurnPeer> parse_peers(const std::string& text) {
  std::vector<ChurnPeer> peers;
  std::size_t position = 0;
  while (position <= text.size()) {
    const std::size_t comma = std::min(text.find(',', position), text.size());
    const std::string item = text.substr(position, comma - position);
    const auto peer = peer_from_name(item);
    if (!peer) {
      throw CLI::ValidationError("--peers", strprintf("unknown peer '%s'; choose from %s", item.c_str(),
                                                      peer_list({std::begin(kAllChurnPeers), std::end(kAllChurnPeers)}).c_str()));
    }
    if (!peer_available(*peer)) {
      throw CLI::ValidationError("--peers", strprintf("'%s' cannot run in this build (a sanitizer build "
                                                      "replaces malloc; jemalloc also needs libjemalloc "
                                                      "at build time)", item.c_str()));
    }
    if (std::ranges::find(peers, *peer) != peers.end()) {
      throw CLI::ValidationError("--peers", strprintf("'%s' is listed twice", item.c_str()));
    }
    peers.push_back(*peer);
    position = comma + 1;
  }
  return peers;
}

void run_child(const ChurnOptions& options) {
  const std::size_t colon = options.child.find(':');
  const auto peer = peer_from_name(std::string_view(options.child).substr(0, colon));
  if (colon == std::string::npos || !peer) {
    throw CLI::ValidationError("--child", "expected PEER:THREADS, got '" + options.child + "'");
  }
  const auto threads =
      static_cast<unsigned>(parse_count("--child", options.child.substr(colon + 1), 1, 256));
  const ChurnRun run = run_churn_child(*peer, threads, options.plan);
  std::cout << to_json(run).dump() << std::endl;
}

std::string kernel_release() {
  utsname name{};
  return uname(&name) == 0 ? name.release : "unknown";
}

void run(const ChurnOptions& options) {
  if (!options.child.empty()) {
    run_child(options);
    return;
  }
  const ChurnPlan& plan = options.plan;
  if (plan.min_bytes > plan.max_bytes) {
    throw CLI::ValidationError("--min-kib", strprintf("%zu KiB is above --max-kib %zu KiB",
                                                      plan.min_bytes / 1024, plan.max_bytes / 1024));
  }
  const auto results = run_churn(plan, "bench churn");

  Report report({{"peer", "peer"},
                 {"threads", "threads", Format::integer},
                 {"ops_per_sec", "ops/s", Format::rate},
                 {"vs_mmap", "x mmap", Format::fixed1},
                 {"vs_glibc_128k", "x glibc_128k", Format::fixed1},
                 {"peak_rss_bytes", "peak RSS", Format::bytes},
                 {"peak_rss_growth_bytes", "RSS growth", Format::bytes},
                 {"faults_per_op", "faults/op", Format::fixed1},
                 {"cpu_ns_per_op", "CPU/op", Format::nanoseconds},
                 {"unmap_calls_per_1000_frees", "unmaps/1k frees", Format::fixed1},
                 {"unmap_calls_source", "counted by"},
                 {"returns_memory", "returns memory"}});
  std::size_t lazy_max_bytes = 0;
  for (const ChurnResult& result : results) {
    lazy_max_bytes = std::max<std::size_t>(lazy_max_bytes, result.lazy_max_bytes);
    auto optional_cell = [](const std::optional<double>& value) { return value ? Cell{*value} : Cell{}; };
    report.add_row({std::string(peer_name(result.peer)), std::int64_t{result.threads}, result.ops_per_sec,
                    optional_cell(result.vs_mmap), optional_cell(result.vs_glibc_128k),
                    static_cast<std::int64_t>(result.peak_rss_bytes),
                    static_cast<std::int64_t>(result.peak_rss_growth_bytes), result.faults_per_op,
                    result.cpu_us_per_op * 1000,
                    optional_cell(result.unmap_calls_per_1000_frees),
                    result.unmap_calls_source.empty() ? Cell{} : Cell{result.unmap_calls_source},
                    std::string(peer_returns_memory(result.peer) ? "yes" : "no (keeps it)")});
  }

  std::vector<std::string> notes = {
      plan.hold == 1
          ? strprintf("One op = take a buffer of %zu KiB - %zu KiB (uniform), write one byte per page, "
                      "give it back; ops/s are totals over all threads.",
                      plan.min_bytes / 1024, plan.max_bytes / 1024)
          : strprintf("One op = take a buffer of %zu KiB - %zu KiB (uniform), write one byte per page, "
                      "give back the oldest of the %zu each thread holds; ops/s are totals over all threads.",
                      plan.min_bytes / 1024, plan.max_bytes / 1024, plan.hold),
      strprintf("Each run is its own process; medians of %u repeat(s) of %g s, interleaved; "
                "x columns are medians of per-repeat ratios at the same thread count.",
                plan.repeats, plan.seconds),
      strprintf("vmalloc frees lazily: freed pages stay resident until they pass lazy_max_pages "
                "(%s here), then one purge decommits them, one call per run of adjacent buffers. "
                "Until then vmalloc reuses them (zeroed); vmalloc_fresh and vmalloc_populate "
                "take fresh pages every time (VmallocOptions::reuse off).",
                format_cell(static_cast<std::int64_t>(lazy_max_bytes), Format::bytes).c_str()),
      "peak RSS = VmHWM over the loop (reset at its start); RSS growth = peak - resident at the start.",
      "CPU/op = user + system time of the run's process per op: less sensitive than ops/s to other "
      "work on the machine, but blind to time lost waiting and to TLB-shootdown interrupts that "
      "land on other processes.",
      "unmaps/1k frees: calls that give pages back. counted = by the benchmark (vmalloc: decommit "
      "calls, mmap: munmap); strace = munmap + madvise in a separate short run under strace -f -c.",
      strprintf("Machine: %u cores, Linux %s. Other work on the machine moves absolute rates; "
                "read the ratios.",
                std::thread::hardware_concurrency(), kernel_release().c_str()),
  };
  for (const ChurnPeer peer : kAllChurnPeers) {
    if (!peer_available(peer)) {
      notes.push_back(strprintf("%s: not available in this build (sanitizers replace malloc; jemalloc "
                                "needs libjemalloc at build time).", std::string(peer_name(peer)).c_str()));
    }
  }
  emit(report, options.output, notes);

  if (!options.output.plot.empty()) {
    PlotSpec spec{.title = strprintf("Large-buffer churn (%zu KiB - %zu KiB, every page touched)",
                                     plan.min_bytes / 1024, plan.max_bytes / 1024),
                  .x_label = "threads",
                  .y_label = "buffers per second (all threads)",
                  .log_x = false,
                  .log_y = true,
                  .series = {}};
    for (const ChurnPeer peer : plan.peers) {
      Series series{.title = std::string(peer_name(peer)) + (peer_returns_memory(peer) ? "" : " (keeps memory)"),
                    .points = {}};
      for (const ChurnResult& result : results) {
        if (result.peer == peer) series.points.emplace_back(result.threads, result.ops_per_sec);
      }
      spec.series.push_back(std::move(series));
    }
    plot_lines(options.output.plot, spec);
  }
}

}  // namespace

void register_bench_churn(CLI::App& bench) {
  auto options = std::make_shared<ChurnOptions>();
  ChurnPlan& plan = options->plan;
  plan.peers = default_peers();
  CLI::App* sub = bench.add_subcommand(
      "churn", "Large-buffer churn through Vmalloc against mmap+munmap, glibc and jemalloc");
  sub->add_option_function<std::string>(
         "--peers", [&plan](const std::string& text) { plan.peers = parse_peers(text); },
         "Peers to run: any of " + peer_list({std::begin(kAllChurnPeers), std::end(kAllChurnPeers)}))
      ->default_str(peer_list(plan.peers))
      ->type_name("LIST");
  sub->add_option_function<std::string>(
         "--threads",
         [&plan](const std::string& text) {
           plan.threads.clear();
           for (const auto count : parse_counts("--threads", text, 1, 256)) {
             plan.threads.push_back(static_cast<unsigned>(count));
           }
         },
         "Thread counts, one run each")
      ->default_str("1,2,4")
      ->type_name("LIST");
  add_seconds_option(*sub, "--seconds", plan.seconds, "Duration of each run", 600);
  sub->add_option_function<std::string>(
         "--min-kib",
         [&plan](const std::string& text) {
           plan.min_bytes = 1024 * parse_count("--min-kib", text, 4, 1024 * 1024);
         },
         "Smallest buffer, KiB")
      ->default_str("64")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--max-kib",
         [&plan](const std::string& text) {
           plan.max_bytes = 1024 * parse_count("--max-kib", text, 4, 1024 * 1024);
         },
         "Largest buffer, KiB")
      ->default_str("1024")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--repeats",
         [&plan](const std::string& text) {
           plan.repeats = static_cast<unsigned>(parse_count("--repeats", text, 1, 100));
         },
         "Repeats per run; medians are reported")
      ->default_str("3")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--lazy-max-pages",
         [&plan](const std::string& text) {
           plan.lazy_max_pages = parse_count("--lazy-max-pages", text, 0, std::uint64_t{1} << 40);
         },
         "Vmalloc's lazy_max_pages; 0 = the kernel's formula")
      ->default_str("0")
      ->type_name("N");
  sub->add_option_function<std::string>(
         "--hold",
         [&plan](const std::string& text) { plan.hold = parse_count("--hold", text, 1, 4096); },
         "Buffers each thread holds; each op gives back the oldest (1: take, touch, give back)")
      ->default_str("1")
      ->type_name("N");
  sub->add_flag_callback(
      "--no-strace", [&plan] { plan.count_syscalls = false; },
      "Skip the strace runs that count the malloc peers' unmap calls");
  sub->add_option("--child", options->child, "Internal: run one measurement (PEER:THREADS)")->group("");
  add_output_options(*sub, options->output, /*with_plot=*/true);
  sub->callback([options] { run(*options); });
}

}  // namespace uvmalloc::tool
