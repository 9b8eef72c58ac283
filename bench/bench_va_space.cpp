// bench/bench_va_space.cpp - single-thread costs of the VaSpace core.
//
//   BM_AllocFreePair/areas:N          alloc(1-4 pages) + free at N fragmented live areas
//   BM_AllocFreeLazyPair/areas:N      the same with free_lazy: purges run inside the loop
//   BM_ChurnRandomArea/areas:N        free a random live area, allocate a new one:
//                                     touches the whole space, not only its low end
//   BM_AllocFreeAligned/areas:N       alloc(1 page, 16-page aligned) + free, fragmented
//   BM_AllocFreeAligned_Adversarial/holes:N
//                                     the same over N holes that all fit until aligned:
//                                     the exact aligned search visits every hole (DESIGN 3)
//   BM_Info/mode:M/areas:N            one info(M) at N fragmented live areas
//
// Every timed call is checked (an error or a wrong address stops the
// benchmark with a message), so a broken core cannot report a fast time.
// Times are wall-clock (UseRealTime): deferred releases run on liburcu's
// call_rcu thread, whose work a per-thread CPU clock would hide.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <uvmalloc/va_space.hpp>

#include "layouts.hpp"

namespace uvmalloc::bench {
namespace {

constexpr std::uint64_t kLayoutSeed = 1;
constexpr std::uint64_t kTimedSeed = 2;  // differs from kLayoutSeed so requests do not mirror holes
constexpr std::int64_t kAreaCounts[] = {1'000, 10'000, 100'000, 1'000'000};

// Layouts outlive a benchmark run: Google Benchmark calls each function
// several times (to size the loop, then once per repetition) and building
// 10^6 areas takes seconds. Every benchmark leaves its layout with the same
// live areas it found, except churn, which keeps their number but not their
// places and so gets layouts of its own.
class LayoutCache {
 public:
  enum class Kind { fragmented, churned, misaligned_holes };

  // LayoutCache::get() - the layout, built on first use; nullptr (and the
  // benchmark skipped with the reason) if building it failed.
  Layout* get(Kind kind, std::size_t count, benchmark::State& state) {
    const auto key = std::pair(kind, count);
    if (auto found = layouts_.find(key); found != layouts_.end()) return &found->second;
    auto built = kind == Kind::misaligned_holes
                     ? make_misaligned_holes(count)
                     : make_fragmented(count, InfoMode::rcu_walk, kLayoutSeed);
    if (!built) {
      state.SkipWithError(built.error().c_str());
      return nullptr;
    }
    return &layouts_.emplace(key, std::move(*built)).first->second;
  }

  // Spaces wait for their deferred releases when destroyed; do it before
  // main returns, while liburcu's threads certainly still run.
  void clear() { layouts_.clear(); }

 private:
  std::map<std::pair<Kind, std::size_t>, Layout> layouts_;
};

LayoutCache layouts;

// Stops the benchmark with `what` and the error. Cold and out of line, so
// the checks in the timed loops cost one predictable branch each.
[[gnu::cold, gnu::noinline]] void stop(benchmark::State& state, const char* what,
                                        std::error_code ec) {
  state.SkipWithError((std::string(what) + ": " + ec.message()).c_str());
}

void BM_AllocFreePair(benchmark::State& state) {
  Layout* layout = layouts.get(LayoutCache::Kind::fragmented, state.range(0), state);
  if (layout == nullptr) return;
  VaSpace& space = *layout->space;
  PageSizeStream sizes(kTimedSeed);
  for (auto _ : state) {
    auto start = space.alloc(sizes.next_bytes(), kPageSize);
    if (!start) [[unlikely]] {
      stop(state, "alloc", start.error());
      break;
    }
    if (auto ec = space.free(*start)) [[unlikely]] {
      stop(state, "free", ec);
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_AllocFreeLazyPair(benchmark::State& state) {
  Layout* layout = layouts.get(LayoutCache::Kind::fragmented, state.range(0), state);
  if (layout == nullptr) return;
  VaSpace& space = *layout->space;
  PageSizeStream sizes(kTimedSeed);
  const auto purges_before = space.stats().purges;
  for (auto _ : state) {
    auto start = space.alloc(sizes.next_bytes(), kPageSize);
    if (!start) [[unlikely]] {
      stop(state, "alloc", start.error());
      break;
    }
    if (auto ec = space.free_lazy(*start)) [[unlikely]] {
      stop(state, "free_lazy", ec);
      break;
    }
  }
  state.counters["purges"] = static_cast<double>(space.stats().purges - purges_before);
  space.purge();  // give the layout back as it was found
  state.SetItemsProcessed(state.iterations());
}

void BM_ChurnRandomArea(benchmark::State& state) {
  Layout* layout = layouts.get(LayoutCache::Kind::churned, state.range(0), state);
  if (layout == nullptr) return;
  VaSpace& space = *layout->space;
  PageSizeStream sizes(kTimedSeed);
  // Drawn up front, like the sizes, so the loop times only the space.
  std::vector<std::uint32_t> victims(std::size_t{1} << 16);
  std::mt19937_64 random(kTimedSeed);
  std::uniform_int_distribution<std::uint32_t> any_live(
      0, static_cast<std::uint32_t>(layout->live.size() - 1));
  for (auto& victim : victims) victim = any_live(random);
  std::size_t next_victim = 0;
  for (auto _ : state) {
    std::uintptr_t& slot = layout->live[victims[next_victim++ & (victims.size() - 1)]];
    if (auto ec = space.free(slot)) [[unlikely]] {
      stop(state, "free", ec);
      break;
    }
    auto start = space.alloc(sizes.next_bytes(), kPageSize);
    if (!start) [[unlikely]] {
      stop(state, "alloc", start.error());
      break;
    }
    slot = *start;
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_AllocFreeAligned(benchmark::State& state) {
  Layout* layout = layouts.get(LayoutCache::Kind::fragmented, state.range(0), state);
  if (layout == nullptr) return;
  VaSpace& space = *layout->space;
  for (auto _ : state) {
    auto start = space.alloc(kPageSize, kAdversarialAlign);
    if (!start) [[unlikely]] {
      stop(state, "alloc", start.error());
      break;
    }
    if (*start % kAdversarialAlign != 0) {
      state.SkipWithError("alloc returned a misaligned address");
      break;
    }
    if (auto ec = space.free(*start)) [[unlikely]] {
      stop(state, "free", ec);
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_AllocFreeAligned_Adversarial(benchmark::State& state) {
  Layout* layout = layouts.get(LayoutCache::Kind::misaligned_holes, state.range(0), state);
  if (layout == nullptr) return;
  VaSpace& space = *layout->space;
  const std::uintptr_t only_fit = misaligned_holes_tail(*layout);
  for (auto _ : state) {
    auto start = space.alloc(kPageSize, kAdversarialAlign);
    if (!start) [[unlikely]] {
      stop(state, "alloc", start.error());
      break;
    }
    if (*start != only_fit) {
      state.SkipWithError("alloc did not return the only aligned fit (the tail)");
      break;
    }
    if (auto ec = space.free(*start)) [[unlikely]] {
      stop(state, "free", ec);
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Info(benchmark::State& state, InfoMode mode) {
  Layout* layout = layouts.get(LayoutCache::Kind::fragmented, state.range(0), state);
  if (layout == nullptr) return;
  const VaSpace& space = *layout->space;
  const VmallocInfo expected = space.info(InfoMode::locked);
  if (space.info(InfoMode::rcu_walk) != expected || space.info(InfoMode::counters) != expected) {
    state.SkipWithError("info modes disagree on a quiet space");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(space.info(mode));
  state.SetItemsProcessed(state.iterations());
}

void register_benchmarks() {
  const auto over_area_counts = [](benchmark::internal::Benchmark* benchmark,
                                   const char* arg_name) {
    benchmark->ArgName(arg_name)->UseRealTime();
    for (const std::int64_t count : kAreaCounts) benchmark->Arg(count);
  };
  over_area_counts(benchmark::RegisterBenchmark("BM_AllocFreePair", BM_AllocFreePair), "areas");
  over_area_counts(benchmark::RegisterBenchmark("BM_AllocFreeLazyPair", BM_AllocFreeLazyPair),
                   "areas");
  over_area_counts(benchmark::RegisterBenchmark("BM_ChurnRandomArea", BM_ChurnRandomArea),
                   "areas");
  over_area_counts(benchmark::RegisterBenchmark("BM_AllocFreeAligned", BM_AllocFreeAligned),
                   "areas");
  over_area_counts(benchmark::RegisterBenchmark("BM_AllocFreeAligned_Adversarial",
                                                BM_AllocFreeAligned_Adversarial),
                   "holes");
  for (const auto& [name, mode] : {std::pair("locked", InfoMode::locked),
                                   std::pair("rcu_walk", InfoMode::rcu_walk),
                                   std::pair("counters", InfoMode::counters)}) {
    over_area_counts(
        benchmark::RegisterBenchmark((std::string("BM_Info/mode:") + name).c_str(), BM_Info, mode),
        "areas");
  }
}

}  // namespace
}  // namespace uvmalloc::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  uvmalloc::bench::register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  uvmalloc::bench::layouts.clear();
  return 0;
}
