// tools/churn.hpp - large-buffer churn through Vmalloc against its peers, the
// measurement behind `uvmalloc bench churn` (issue 4, DESIGN 4).
//
// Each of T threads loops: take a buffer of a random size in [64 KiB, 1 MiB]
// (or the range asked for), write one byte to every page, give the buffer
// back (with --hold N, give back the oldest of the N it holds: buffers in
// flight, as in a pipeline, so frees no longer follow allocations). The peers:
//
//   vmalloc           Vmalloc::vmalloc / vfree on defaults: lazy, one decommit
//                     per merged run, freed areas reused until the purge
//   vmalloc_fresh     the same with VmallocOptions::reuse off: fresh pages
//   vmalloc_populate  vmalloc_fresh with VmallocFlags::populate (pre-faulted)
//   mmap              mmap + munmap per buffer: gives memory back at once
//   glibc_128k        glibc malloc with M_MMAP_THRESHOLD fixed at 128 KiB:
//                     buffers from 128 KiB up are mmap'd and munmap'd
//   glibc             glibc defaults: the threshold climbs, freed memory stays
//   jemalloc          jemalloc defaults (LD_PRELOAD): freed memory stays
//
// The first four give memory back like the kernel's vmalloc does; the last two
// keep it, and are shown with their resident memory to say what that buys.
//
// Every (peer, threads) run is its own process: this tool re-executed with a
// hidden --child option, so mallopt, LD_PRELOAD and the resident-memory peak
// belong to that run alone. The child prints one JSON line. Runs repeat,
// interleaved (every run once, then again, peer order rotated), and ratios
// are medians of per-repeat ratios taken side by side.
//
// Unmap calls (system calls that give pages back) are counted by us for
// vmalloc and mmap; for the malloc peers an extra short run under
// `strace -f -c` counts munmap and madvise, when strace is installed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace uvmalloc::tool {

enum class ChurnPeer { vmalloc, vmalloc_fresh, vmalloc_populate, mmap, glibc_128k, glibc, jemalloc };

inline constexpr ChurnPeer kAllChurnPeers[] = {
    ChurnPeer::vmalloc,    ChurnPeer::vmalloc_fresh, ChurnPeer::vmalloc_populate, ChurnPeer::mmap,
    ChurnPeer::glibc_128k, ChurnPeer::glibc,         ChurnPeer::jemalloc};


[[nodiscard]] std::string_view peer_name(ChurnPeer peer) noexcept;
[[nodiscard]] std::optional<ChurnPeer> peer_from_name(std::string_view name) noexcept;
// Whether a freed buffer's pages leave the process (at once or at a purge).
[[nodiscard]] bool peer_returns_memory(ChurnPeer peer) noexcept;
// Whether this build can run the peer. The malloc peers need the real
// allocators: a sanitizer build replaces malloc with its own (which ignores
// mallopt), and its runtime refuses to come after a preloaded jemalloc.
// jemalloc also needs libjemalloc found at build time.
[[nodiscard]] bool peer_available(ChurnPeer peer) noexcept;

struct ChurnPlan {
  std::vector<ChurnPeer> peers;
  std::vector<unsigned> threads = {1, 2, 4};
  std::size_t min_bytes = 64 * 1024;    // buffer sizes, uniform in [min_bytes, max_bytes]
  std::size_t max_bytes = 1024 * 1024;
  double seconds = 1;             // per run
  unsigned repeats = 3;
  std::size_t lazy_max_pages = 0;  // for the vmalloc peers; 0: the kernel's formula
  std::size_t hold = 1;            // buffers each thread keeps; it gives back the oldest
  bool count_syscalls = true;      // the strace pass for the malloc peers
};

// One child process's measurement.
struct ChurnRun {
  ChurnPeer peer;
  unsigned threads;
  std::uint64_t ops;          // buffers taken, touched and given back
  double seconds;             // wall time of the loop
  std::uint64_t start_rss_bytes;  // resident memory when the loop started
  std::uint64_t peak_rss_bytes;   // VmHWM over the loop (reset at its start)
  std::uint64_t minor_faults;     // page faults over the loop, all threads
  double cpu_seconds;             // user + system time over the loop, all threads
  std::optional<std::uint64_t> unmap_calls;  // counted by us (vmalloc, mmap)
  std::uint64_t lazy_max_bytes;              // vmalloc peers: lazy_max_pages in bytes
};

[[nodiscard]] nlohmann::json to_json(const ChurnRun& run);
[[nodiscard]] ChurnRun churn_run_from_json(const nlohmann::json& json);

// run_churn_child() - the child's side: one run in this process. Throws
// std::runtime_error when an allocation fails or the peer cannot run here.
// Uses plan.min_bytes, max_bytes, seconds and lazy_max_pages.
[[nodiscard]] ChurnRun run_churn_child(ChurnPeer peer, unsigned threads, const ChurnPlan& plan);

// What the report shows for one (peer, threads).
struct ChurnResult {
  ChurnPeer peer;
  unsigned threads;
  double ops_per_sec;                       // median over repeats
  std::optional<double> vs_mmap;            // median per-repeat ratio to mmap, same threads
  std::optional<double> vs_glibc_128k;      // the same against glibc_128k
  std::uint64_t peak_rss_bytes;             // highest over repeats
  std::uint64_t peak_rss_growth_bytes;      // highest (peak - start) over repeats
  double faults_per_op;                     // median over repeats
  double cpu_us_per_op;                     // median over repeats: CPU time, not wall time
  std::optional<double> unmap_calls_per_1000_frees;
  std::string unmap_calls_source;           // "counted", "strace" or "" (not measured)
  std::uint64_t lazy_max_bytes;             // vmalloc peers, else 0
};

// run_churn() - every (peer, threads) of `plan`, each in a child process,
// `repeats` times interleaved, plus the strace pass. Progress on stderr
// under `label`. Throws std::runtime_error if a child fails.
[[nodiscard]] std::vector<ChurnResult> run_churn(const ChurnPlan& plan, const std::string& label);

}  // namespace uvmalloc::tool
