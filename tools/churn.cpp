// tools/churn.cpp - the churn measurement (see churn.hpp): the loop a child
// process runs, and the parent that spawns, repeats and summarises.
#include "churn.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <uvmalloc/vmalloc.hpp>

#include "cli_common.hpp"

extern char** environ;

namespace uvmalloc::tool {
namespace {

constexpr std::size_t kPageBytes = 4096;

constexpr std::array<std::pair<ChurnPeer, std::string_view>, 7> kPeerNames = {{
    {ChurnPeer::vmalloc, "vmalloc"},
    {ChurnPeer::vmalloc_fresh, "vmalloc_fresh"},
    {ChurnPeer::vmalloc_populate, "vmalloc_populate"},
    {ChurnPeer::mmap, "mmap"},
    {ChurnPeer::glibc_128k, "glibc_128k"},
    {ChurnPeer::glibc, "glibc"},
    {ChurnPeer::jemalloc, "jemalloc"},
}};

bool is_malloc_peer(ChurnPeer peer) {
  return peer == ChurnPeer::glibc_128k || peer == ChurnPeer::glibc || peer == ChurnPeer::jemalloc;
}

/*** The child: one run in this process ***/

// "VmHWM:     1234 kB" from /proc/self/status, in bytes.
std::uint64_t status_bytes(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::size_t length = std::strlen(field);
  while (std::getline(status, line)) {
    if (line.compare(0, length, field) == 0) return std::strtoull(line.c_str() + length, nullptr, 10) * 1024;
  }
  throw std::runtime_error(strprintf("no %s in /proc/self/status", field));
}

// Resets VmHWM to the current resident size (Linux 4.0+), so the peak read
// after the loop belongs to the loop.
void reset_peak_rss() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
  clear_refs.flush();
  if (!clear_refs) throw std::runtime_error("cannot reset the resident peak (/proc/self/clear_refs)");
}

// Page faults and CPU time (user + system) of the whole process so far.
struct Usage {
  std::uint64_t minor_faults;
  double cpu_seconds;
};

Usage usage_so_far() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& time) { return static_cast<double>(time.tv_sec) + 1e-6 * static_cast<double>(time.tv_usec); };
  return {static_cast<std::uint64_t>(usage.ru_minflt), seconds(usage.ru_utime) + seconds(usage.ru_stime)};
}

// The buffer interface every peer offers the loop.
struct Buffers {
  std::function<void*(std::size_t)> take;
  std::function<void(void*, std::size_t)> give_back;
};

// Writes one byte to every page. volatile: the stores must reach memory even
// though the buffer is freed right after (compilers drop dead stores to
// malloc'd memory).
void touch_every_page(void* buffer, std::size_t size) {
  auto* bytes = static_cast<volatile char*>(buffer);
  for (std::size_t offset = 0; offset < size; offset += kPageBytes) bytes[offset] = 1;
}

}  // namespace

ChurnRun run_churn_child(ChurnPeer peer, unsigned threads, const ChurnPlan& plan) {
  std::unique_ptr<Vmalloc> vm;
  std::atomic<std::uint64_t> munmaps{0};
  Buffers buffers;
  switch (peer) {
    case ChurnPeer::vmalloc:
    case ChurnPeer::vmalloc_fresh:
    case ChurnPeer::vmalloc_populate: {
      VmallocOptions options;
      options.lazy_max_pages = plan.lazy_max_pages;
      options.reuse = peer == ChurnPeer::vmalloc;
      auto created = Vmalloc::create(options);
      if (!created) throw std::runtime_error("Vmalloc::create: " + created.error().message());
      vm = std::move(*created);
      const VmallocFlags flags =
          peer == ChurnPeer::vmalloc_populate ? VmallocFlags::populate : VmallocFlags::none;
      buffers.take = [&vm, flags](std::size_t size) -> void* {
        auto buffer = vm->vmalloc(size, flags);
        return buffer ? *buffer : nullptr;
      };
      buffers.give_back = [&vm](void* buffer, std::size_t) {
        if (vm->vfree(buffer)) throw std::logic_error("vfree refused a buffer vmalloc returned");
      };
      break;
    }
    case ChurnPeer::mmap:
      buffers.take = [](std::size_t size) -> void* {
        void* buffer = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return buffer == MAP_FAILED ? nullptr : buffer;
      };
      buffers.give_back = [&munmaps](void* buffer, std::size_t size) {
        ::munmap(buffer, size);
        munmaps.fetch_add(1, std::memory_order_relaxed);
      };
      break;
    case ChurnPeer::glibc_128k:
    case ChurnPeer::glibc:
    case ChurnPeer::jemalloc:
      if (peer == ChurnPeer::glibc_128k && mallopt(M_MMAP_THRESHOLD, 128 * 1024) != 1) {
        throw std::runtime_error("mallopt(M_MMAP_THRESHOLD) refused");
      }
      // jemalloc replaces malloc when preloaded; mallctl is its own symbol.
      if ((peer == ChurnPeer::jemalloc) != (dlsym(RTLD_DEFAULT, "mallctl") != nullptr)) {
        throw std::runtime_error(peer == ChurnPeer::jemalloc ? "jemalloc is not loaded in the child"
                                                             : "jemalloc is loaded, glibc expected");
      }
      buffers.take = [](std::size_t size) { return std::malloc(size); };
      buffers.give_back = [](void* buffer, std::size_t) { std::free(buffer); };
      break;
  }

  std::atomic<bool> go{false};
  std::atomic<bool> stop{false};
  std::atomic<bool> failed{false};
  std::vector<std::uint64_t> ops(threads, 0);
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 random(0x5eed + t);
      std::uniform_int_distribution<std::size_t> sizes(plan.min_bytes, plan.max_bytes);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      std::uint64_t done = 0;
      // Buffers in flight, oldest first; one op takes one and gives back
      // the oldest once plan.hold are held.
      std::deque<std::pair<void*, std::size_t>> held;
      while (!stop.load(std::memory_order_relaxed)) {
        const std::size_t size = sizes(random);
        void* buffer = buffers.take(size);
        if (buffer == nullptr) {
          failed.store(true, std::memory_order_relaxed);
          break;
        }
        touch_every_page(buffer, size);
        held.emplace_back(buffer, size);
        if (held.size() >= plan.hold) {
          buffers.give_back(held.front().first, held.front().second);
          held.pop_front();
          ++done;
        }
      }
      for (const auto& [buffer, size] : held) buffers.give_back(buffer, size);
      ops[t] = done;
    });
  }

  reset_peak_rss();
  const std::uint64_t start_rss = status_bytes("VmRSS:");
  const Usage usage_before = usage_so_far();
  const auto start = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  std::this_thread::sleep_for(std::chrono::duration<double>(plan.seconds));
  stop.store(true, std::memory_order_relaxed);
  for (std::thread& worker : workers) worker.join();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const Usage usage_after = usage_so_far();
  if (failed.load()) throw std::runtime_error(std::string(peer_name(peer)) + ": an allocation failed");

  ChurnRun run{.peer = peer,
               .threads = threads,
               .ops = 0,
               .seconds = elapsed,
               .start_rss_bytes = start_rss,
               .peak_rss_bytes = status_bytes("VmHWM:"),
               .minor_faults = usage_after.minor_faults - usage_before.minor_faults,
               .cpu_seconds = usage_after.cpu_seconds - usage_before.cpu_seconds,
               .unmap_calls = std::nullopt,
               .lazy_max_bytes = 0};
  for (const std::uint64_t count : ops) run.ops += count;
  if (vm) {
    run.unmap_calls = vm->stats().unmap_calls;
    run.lazy_max_bytes = vm->space().lazy_max_pages() * vm->space().options().page_size;
  } else if (peer == ChurnPeer::mmap) {
    run.unmap_calls = munmaps.load();
  }
  return run;
}

std::string_view peer_name(ChurnPeer peer) noexcept {
  for (const auto& [known, name] : kPeerNames) {
    if (known == peer) return name;
  }
  return "?";
}

std::optional<ChurnPeer> peer_from_name(std::string_view name) noexcept {
  for (const auto& [peer, known] : kPeerNames) {
    if (known == name) return peer;
  }
  return std::nullopt;
}

bool peer_returns_memory(ChurnPeer peer) noexcept {
  return peer != ChurnPeer::glibc && peer != ChurnPeer::jemalloc;
}

bool peer_available([[maybe_unused]] ChurnPeer peer) noexcept {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  if (is_malloc_peer(peer)) return false;
#endif
#ifndef UVMALLOC_JEMALLOC_PATH
  if (peer == ChurnPeer::jemalloc) return false;
#endif
  return true;
}

nlohmann::json to_json(const ChurnRun& run) {
  nlohmann::json json = {{"peer", peer_name(run.peer)},
                         {"threads", run.threads},
                         {"ops", run.ops},
                         {"seconds", run.seconds},
                         {"start_rss_bytes", run.start_rss_bytes},
                         {"peak_rss_bytes", run.peak_rss_bytes},
                         {"minor_faults", run.minor_faults},
                         {"cpu_seconds", run.cpu_seconds},
                         {"lazy_max_bytes", run.lazy_max_bytes}};
  json["unmap_calls"] = run.unmap_calls ? nlohmann::json(*run.unmap_calls) : nlohmann::json(nullptr);
  return json;
}

ChurnRun churn_run_from_json(const nlohmann::json& json) {
  const auto peer = peer_from_name(json.at("peer").get<std::string>());
  if (!peer) throw std::runtime_error("child reported an unknown peer");
  ChurnRun run{.peer = *peer,
               .threads = json.at("threads").get<unsigned>(),
               .ops = json.at("ops").get<std::uint64_t>(),
               .seconds = json.at("seconds").get<double>(),
               .start_rss_bytes = json.at("start_rss_bytes").get<std::uint64_t>(),
               .peak_rss_bytes = json.at("peak_rss_bytes").get<std::uint64_t>(),
               .minor_faults = json.at("minor_faults").get<std::uint64_t>(),
               .cpu_seconds = json.at("cpu_seconds").get<double>(),
               .unmap_calls = std::nullopt,
               .lazy_max_bytes = json.at("lazy_max_bytes").get<std::uint64_t>()};
  if (!json.at("unmap_calls").is_null()) run.unmap_calls = json.at("unmap_calls").get<std::uint64_t>();
  return run;
}

/*** The parent: spawn, repeat, summarise ***/

namespace {

std::string self_executable() {
  std::array<char, PATH_MAX> path{};
  const ssize_t length = ::readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (length <= 0) throw std::runtime_error("cannot find this executable (/proc/self/exe)");
  return std::string(path.data(), static_cast<std::size_t>(length));
}

#ifdef UVMALLOC_JEMALLOC_PATH
constexpr const char* kJemallocPath = UVMALLOC_JEMALLOC_PATH;
#else
constexpr const char* kJemallocPath = "";
#endif

// Runs `argv` with stdout on a pipe and returns what it printed. Throws when
// it cannot start or exits with a failure (its stderr goes to ours).
std::string run_capturing(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe: " + std::string(std::strerror(errno)));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);

  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_storage(extra_env);
  for (char** entry = environ; *entry != nullptr; ++entry) env_storage.emplace_back(*entry);
  std::vector<char*> env;
  for (std::string& entry : env_storage) env.push_back(entry.data());
  env.push_back(nullptr);

  pid_t pid = 0;
  const int spawn_error = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (spawn_error != 0) {
    ::close(pipe_fds[0]);
    throw std::runtime_error(strprintf("cannot run %s: %s", argv[0].c_str(), std::strerror(spawn_error)));
  }
  std::string output;
  std::array<char, 4096> chunk{};
  ssize_t got = 0;
  while ((got = ::read(pipe_fds[0], chunk.data(), chunk.size())) != 0) {
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) break;
    output.append(chunk.data(), static_cast<std::size_t>(got));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(strprintf("%s failed (%s %d)", argv[0].c_str(),
                                       WIFEXITED(status) ? "exit status" : "signal",
                                       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status)));
  }
  return output;
}

// The arguments that make this tool run one child measurement
// (bench_churn.cpp parses them).
std::vector<std::string> child_arguments(const std::string& exe, ChurnPeer peer, unsigned threads,
                                         const ChurnPlan& plan, double seconds) {
  return {exe,
          "bench",
          "churn",
          "--child",
          strprintf("%s:%u", std::string(peer_name(peer)).c_str(), threads),
          "--seconds",
          strprintf("%.17g", seconds),
          "--lazy-max-pages",
          strprintf("%zu", plan.lazy_max_pages),
          "--min-kib",
          strprintf("%zu", plan.min_bytes / 1024),
          "--max-kib",
          strprintf("%zu", plan.max_bytes / 1024),
          "--hold",
          strprintf("%zu", plan.hold)};
}

std::vector<std::string> child_environment(ChurnPeer peer) {
  if (peer != ChurnPeer::jemalloc) return {};
  return {std::string("LD_PRELOAD=") + kJemallocPath};
}

ChurnRun parse_child_output(const std::string& output) {
  const std::size_t last_line = output.find_last_of('{');
  if (last_line == std::string::npos) throw std::runtime_error("child printed no result");
  return churn_run_from_json(nlohmann::json::parse(output.substr(output.rfind('\n', last_line) + 1)));
}

ChurnRun spawn_run(const std::string& exe, ChurnPeer peer, unsigned threads, const ChurnPlan& plan) {
  return parse_child_output(
      run_capturing(child_arguments(exe, peer, threads, plan, plan.seconds), child_environment(peer)));
}

// strace's `-c` summary: the "calls" column of the munmap and madvise rows.
std::uint64_t unmap_calls_in_strace_summary(const std::string& path) {
  std::ifstream summary(path);
  std::string line;
  std::uint64_t calls = 0;
  while (std::getline(summary, line)) {
    std::istringstream fields(line);
    std::vector<std::string> words;
    for (std::string word; fields >> word;) words.push_back(word);
    if (words.size() >= 5 && (words.back() == "munmap" || words.back() == "madvise")) {
      calls += std::strtoull(words[3].c_str(), nullptr, 10);
    }
  }
  return calls;
}

bool strace_installed() {
  for (const char* directory : {"/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"}) {
    if (::access(directory, X_OK) == 0) return true;
  }
  return false;
}

// One short run under `strace -f -c`: unmap calls per 1000 frees. strace
// slows every system call down, so the rate of this run is not reported.
double strace_unmap_calls_per_1000(const std::string& exe, ChurnPeer peer, unsigned threads,
                                   const ChurnPlan& plan, double seconds) {
  char summary_path[] = "/tmp/uvmalloc-churn-strace-XXXXXX";
  const int fd = ::mkstemp(summary_path);
  if (fd < 0) throw std::runtime_error("mkstemp: " + std::string(std::strerror(errno)));
  ::close(fd);
  std::vector<std::string> argv = {"strace", "-f", "-qq", "-c", "-o", summary_path, "-e",
                                   "trace=munmap,madvise"};
  for (const std::string& env : child_environment(peer)) {
    argv.push_back("-E");
    argv.push_back(env);
  }
  const auto child = child_arguments(exe, peer, threads, plan, seconds);
  argv.insert(argv.end(), child.begin(), child.end());
  ChurnRun run{};
  std::uint64_t calls = 0;
  try {
    run = parse_child_output(run_capturing(argv, {}));
    calls = unmap_calls_in_strace_summary(summary_path);
  } catch (...) {
    ::unlink(summary_path);
    throw;
  }
  ::unlink(summary_path);
  return run.ops == 0 ? 0.0 : 1000.0 * static_cast<double>(calls) / static_cast<double>(run.ops);
}

double ops_per_sec(const ChurnRun& run) { return static_cast<double>(run.ops) / run.seconds; }

}  // namespace

std::vector<ChurnResult> run_churn(const ChurnPlan& plan, const std::string& label) {
  const std::string exe = self_executable();
  const bool strace_pass = plan.count_syscalls && strace_installed();
  std::size_t strace_runs = 0;
  for (const ChurnPeer peer : plan.peers) strace_runs += strace_pass && is_malloc_peer(peer);
  const double strace_seconds = std::min(plan.seconds, 0.5);
  const std::size_t runs_per_repeat = plan.peers.size() * plan.threads.size();
  const std::size_t total_steps = runs_per_repeat * plan.repeats + strace_runs * plan.threads.size();
  Progress progress(label, static_cast<double>(total_steps) * plan.seconds);

  // runs[(peer index, threads index)][repeat]
  std::map<std::pair<std::size_t, std::size_t>, std::vector<ChurnRun>> runs;
  std::size_t step = 0;
  for (unsigned repeat = 0; repeat < plan.repeats; ++repeat) {
    for (std::size_t t = 0; t < plan.threads.size(); ++t) {
      for (std::size_t i = 0; i < plan.peers.size(); ++i) {
        // Rotate the order each repeat so no peer always runs first.
        const std::size_t p = (i + repeat) % plan.peers.size();
        progress.update(step++, total_steps,
                        strprintf("%s, %u thread(s), repeat %u", std::string(peer_name(plan.peers[p])).c_str(),
                                  plan.threads[t], repeat + 1));
        runs[{p, t}].push_back(spawn_run(exe, plan.peers[p], plan.threads[t], plan));
      }
    }
  }

  auto peer_index = [&](ChurnPeer wanted) -> std::optional<std::size_t> {
    const auto found = std::ranges::find(plan.peers, wanted);
    if (found == plan.peers.end()) return std::nullopt;
    return static_cast<std::size_t>(found - plan.peers.begin());
  };
  const auto mmap_index = peer_index(ChurnPeer::mmap);
  const auto glibc_128k_index = peer_index(ChurnPeer::glibc_128k);

  std::vector<ChurnResult> results;
  for (std::size_t t = 0; t < plan.threads.size(); ++t) {
    for (std::size_t p = 0; p < plan.peers.size(); ++p) {
      const std::vector<ChurnRun>& mine = runs[{p, t}];
      auto median_ratio = [&](std::optional<std::size_t> base) -> std::optional<double> {
        if (!base) return std::nullopt;
        const std::vector<ChurnRun>& theirs = runs[{*base, t}];
        std::vector<double> ratios;
        for (std::size_t r = 0; r < mine.size(); ++r) ratios.push_back(ops_per_sec(mine[r]) / ops_per_sec(theirs[r]));
        return median(ratios);
      };
      std::vector<double> rates;
      std::vector<double> faults;
      std::vector<double> cpu_us;
      std::vector<double> unmaps;
      ChurnResult result{.peer = plan.peers[p],
                         .threads = plan.threads[t],
                         .ops_per_sec = 0,
                         .vs_mmap = median_ratio(mmap_index),
                         .vs_glibc_128k = median_ratio(glibc_128k_index),
                         .peak_rss_bytes = 0,
                         .peak_rss_growth_bytes = 0,
                         .faults_per_op = 0,
                         .cpu_us_per_op = 0,
                         .unmap_calls_per_1000_frees = std::nullopt,
                         .unmap_calls_source = "",
                         .lazy_max_bytes = mine.front().lazy_max_bytes};
      for (const ChurnRun& run : mine) {
        rates.push_back(ops_per_sec(run));
        const double ops = static_cast<double>(std::max<std::uint64_t>(run.ops, 1));
        faults.push_back(static_cast<double>(run.minor_faults) / ops);
        cpu_us.push_back(1e6 * run.cpu_seconds / ops);
        if (run.unmap_calls && run.ops > 0) {
          unmaps.push_back(1000.0 * static_cast<double>(*run.unmap_calls) / static_cast<double>(run.ops));
        }
        result.peak_rss_bytes = std::max(result.peak_rss_bytes, run.peak_rss_bytes);
        result.peak_rss_growth_bytes =
            std::max(result.peak_rss_growth_bytes, run.peak_rss_bytes - std::min(run.peak_rss_bytes, run.start_rss_bytes));
      }
      result.ops_per_sec = median(rates);
      result.faults_per_op = median(faults);
      result.cpu_us_per_op = median(cpu_us);
      if (!unmaps.empty()) {
        result.unmap_calls_per_1000_frees = median(unmaps);
        result.unmap_calls_source = "counted";
      } else if (strace_pass && is_malloc_peer(plan.peers[p])) {
        progress.update(step++, total_steps,
                        strprintf("%s, %u thread(s), under strace", std::string(peer_name(plan.peers[p])).c_str(),
                                  plan.threads[t]));
        result.unmap_calls_per_1000_frees =
            strace_unmap_calls_per_1000(exe, plan.peers[p], plan.threads[t], plan, strace_seconds);
        result.unmap_calls_source = "strace";
      }
      results.push_back(std::move(result));
    }
  }
  return results;
}

}  // namespace uvmalloc::tool
