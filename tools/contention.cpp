// tools/contention.cpp - runs the writer/reader contention cells.
#include "contention.hpp"

#include <atomic>
#include <time.h>

#include <chrono>
#include <latch>
#include <map>
#include <stdexcept>
#include <thread>

#include "cli_common.hpp"
#include "layouts.hpp"

namespace uvmalloc::tool {
namespace {

using Clock = std::chrono::steady_clock;

// One counter per cache line, so threads counting side by side do not slow
// each other down through false sharing.
struct alignas(64) OpCount {
  std::uint64_t ops = 0;
  double cpu_seconds = 0;  // the thread's time on a CPU during the run
};

struct Sample {
  double writer_ops_per_sec;
  double reader_ops_per_sec;
  double writer_on_cpu;
};

double thread_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

Sample run_once(VaSpace& space, InfoMode mode, unsigned writers, unsigned readers,
                const ContentionPlan& plan) {
  std::atomic<bool> stop{false};
  std::latch ready(writers + readers + 1);
  std::vector<OpCount> writer_ops(writers);
  std::vector<OpCount> reader_ops(readers);
  FirstFailure failure;
  std::vector<std::jthread> threads;
  for (unsigned w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      bench::PageSizeStream sizes(1000 + w);  // each writer its own fixed size sequence
      ready.arrive_and_wait();
      const double cpu_started = thread_cpu_seconds();
      std::uint64_t ops = 0;
      // relaxed: the flag only ends the loop; the join publishes the counts.
      while (!stop.load(std::memory_order_relaxed)) {
        const auto start = space.alloc(sizes.next_bytes(), bench::kPageSize);
        if (!start) {
          failure.record("writer alloc: " + start.error().message());
          stop.store(true, std::memory_order_relaxed);
          break;
        }
        const auto error =
            plan.free == WriterFree::now ? space.free(*start) : space.free_lazy(*start);
        if (error) {
          failure.record("writer free: " + error.message());
          stop.store(true, std::memory_order_relaxed);
          break;
        }
        ++ops;
      }
      writer_ops[w] = {ops, thread_cpu_seconds() - cpu_started};
    });
  }
  for (unsigned r = 0; r < readers; ++r) {
    threads.emplace_back([&, r] {
      ready.arrive_and_wait();
      std::uint64_t ops = 0;
      if (plan.call == ReaderCall::info) {
        while (!stop.load(std::memory_order_relaxed)) {
          keep(space.info(mode));
          ++ops;
        }
      } else {
        while (!stop.load(std::memory_order_relaxed)) {
          keep(space.meminfo().size());
          ++ops;
        }
      }
      reader_ops[r] = {ops, 0};
    });
  }
  ready.arrive_and_wait();
  const auto started = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(plan.seconds));
  stop.store(true, std::memory_order_relaxed);
  const std::chrono::duration<double> elapsed = Clock::now() - started;
  threads.clear();  // joins
  failure.throw_if_any();
  const auto rate = [&](const std::vector<OpCount>& counts) {
    std::uint64_t total = 0;
    for (const auto& count : counts) total += count.ops;
    return static_cast<double>(total) / elapsed.count();
  };
  double writer_cpu = 0;
  for (const auto& count : writer_ops) writer_cpu += count.cpu_seconds;
  if (plan.free == WriterFree::lazy) space.purge();  // back to the layout as built
  return {rate(writer_ops), rate(reader_ops), writer_cpu / (elapsed.count() * writers)};
}

}  // namespace

double planned_seconds(const ContentionPlan& plan) {
  return static_cast<double>(plan.modes.size() * plan.readers.size() * plan.areas.size() *
                             plan.repeats) *
         plan.seconds;
}

std::vector<ContentionResult> run_contention(const ContentionPlan& plan,
                                             const std::string& label) {
  Progress progress(label, planned_seconds(plan));
  const std::size_t total_runs =
      plan.modes.size() * plan.readers.size() * plan.areas.size() * plan.repeats;
  std::size_t runs_done = 0;

  // samples[{mode index, areas index, readers index}] = one Sample per repeat
  std::map<std::tuple<std::size_t, std::size_t, std::size_t>, std::vector<Sample>> samples;
  for (std::size_t a = 0; a < plan.areas.size(); ++a) {
    // meminfo() reads the way the space was created, so that call needs a
    // layout per mode; info(mode) can share one.
    std::vector<bench::Layout> layouts;
    const std::size_t layout_count = plan.call == ReaderCall::meminfo ? plan.modes.size() : 1;
    for (std::size_t m = 0; m < layout_count; ++m) {
      progress.update(runs_done, total_runs,
                      strprintf("building %llu areas", static_cast<unsigned long long>(plan.areas[a])));
      auto layout = bench::make_fragmented(plan.areas[a], plan.modes[m], 42);
      if (!layout) throw std::runtime_error("building the layout: " + layout.error());
      layouts.push_back(std::move(*layout));
    }
    for (unsigned repeat = 0; repeat < plan.repeats; ++repeat) {
      for (std::size_t m = 0; m < plan.modes.size(); ++m) {
        VaSpace& space = *layouts[layouts.size() == 1 ? 0 : m].space;
        for (std::size_t r = 0; r < plan.readers.size(); ++r) {
          progress.update(runs_done, total_runs,
                          strprintf("%s, %llu areas, %u writer(s), %u reader(s), repeat %u",
                                    std::string(mode_name(plan.modes[m])).c_str(),
                                    static_cast<unsigned long long>(plan.areas[a]), plan.writers,
                                    plan.readers[r], repeat + 1));
          samples[{m, a, r}].push_back(
              run_once(space, plan.modes[m], plan.writers, plan.readers[r], plan));
          ++runs_done;
        }
      }
    }
  }

  std::vector<ContentionResult> results;
  const auto baseline = std::ranges::find(plan.readers, 0u);
  for (std::size_t m = 0; m < plan.modes.size(); ++m) {
    for (std::size_t a = 0; a < plan.areas.size(); ++a) {
      for (std::size_t r = 0; r < plan.readers.size(); ++r) {
        const auto& cell = samples.at({m, a, r});
        std::vector<double> writer_rates;
        std::vector<double> reader_rates;
        std::vector<double> writer_on_cpu;
        for (const auto& sample : cell) {
          writer_rates.push_back(sample.writer_ops_per_sec);
          reader_rates.push_back(sample.reader_ops_per_sec);
          writer_on_cpu.push_back(sample.writer_on_cpu);
        }
        std::optional<double> kept;
        if (baseline != plan.readers.end()) {
          const auto& alone =
              samples.at({m, a, static_cast<std::size_t>(baseline - plan.readers.begin())});
          std::vector<double> ratios;
          for (std::size_t i = 0; i < cell.size(); ++i) {
            ratios.push_back(cell[i].writer_ops_per_sec / alone[i].writer_ops_per_sec);
          }
          kept = median(std::move(ratios));
        }
        results.push_back({.mode = plan.modes[m],
                           .writers = plan.writers,
                           .readers = plan.readers[r],
                           .areas = plan.areas[a],
                           .writer_ops_per_sec = median(std::move(writer_rates)),
                           .reader_ops_per_sec = median(std::move(reader_rates)),
                           .writer_kept = kept,
                           .writer_on_cpu = median(std::move(writer_on_cpu))});
      }
    }
  }
  return results;
}

}  // namespace uvmalloc::tool
