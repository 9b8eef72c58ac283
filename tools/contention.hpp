// tools/contention.hpp - the seed's scenario as a measurement, shared by
// `uvmalloc demo` and `uvmalloc bench contention`.
//
// Writer threads allocate and free over a fragmented space while reader
// threads read its meminfo figures non-stop; we count what each side gets
// done. One writer operation is alloc(1-4 pages, page aligned) followed at
// once by free() (or free_lazy(), with purges as they fall due), so the space
// looks the same after a run as before it and one layout serves every run.
//
// A cell is one (mode, writers, readers, areas) combination. Every cell runs
// `repeats` times, the repeats interleaved (all cells once, then again) so
// drift on a noisy machine hits every cell alike; we report medians, and the
// "writer kept" ratio is the median of per-repeat ratios against the
// readers = 0 cell of the same mode and areas, measured side by side.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <uvmalloc/va_space.hpp>

namespace uvmalloc::tool {

// What a reader thread calls in its loop.
enum class ReaderCall {
  info,     // space.info(mode): the figures alone
  meminfo,  // space.meminfo() on a space created with info_mode = mode: the
            // seed's scenario, /proc/meminfo's three formatted lines
};

// How a writer gives its area back.
enum class WriterFree { now, lazy };

struct ContentionPlan {
  std::vector<InfoMode> modes;
  unsigned writers = 1;
  std::vector<unsigned> readers;     // one cell per count; 0 = writers alone
  std::vector<std::uint64_t> areas;  // live areas in the fragmented layout
  double seconds = 1;                // per cell and repeat
  unsigned repeats = 3;
  ReaderCall call = ReaderCall::info;
  WriterFree free = WriterFree::now;
};

struct ContentionResult {
  InfoMode mode;
  unsigned writers;
  unsigned readers;
  std::uint64_t areas;
  double writer_ops_per_sec;  // median over repeats, all writers together
  double reader_ops_per_sec;  // median over repeats, all readers together
  // Median over repeats of writer_ops_per_sec / the same repeat's readers = 0
  // rate for this mode and areas; empty when the plan has no readers = 0.
  std::optional<double> writer_kept;
  // Median over repeats of the writers' CPU time / (wall time x writers):
  // below 1 when they waited for a lock or the machine ran something else.
  double writer_on_cpu;
};

// The plan's wall time without layout building, for progress decisions.
[[nodiscard]] double planned_seconds(const ContentionPlan& plan);

// run_contention() - every cell of `plan`, in the order modes x areas x
// readers. Shows progress on stderr under `label` (see Progress). Throws
// std::runtime_error if the space refuses an operation (a bug: the layout
// leaves room for every writer).
[[nodiscard]] std::vector<ContentionResult> run_contention(const ContentionPlan& plan,
                                                           const std::string& label);

}  // namespace uvmalloc::tool
