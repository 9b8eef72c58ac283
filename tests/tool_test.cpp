// tests/tool_test.cpp - the `uvmalloc` command line tool, run as a user
// would: exit codes, one-line errors, the shape of --json/--csv, and that
// the pictures it writes are real PNG/SVG files. Each run is kept short
// (--seconds 0.02-0.05); the demo on defaults is its own ctest
// (tool_demo_finishes, see tests/tool.cmake).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

extern char** environ;

namespace {

namespace fs = std::filesystem;

struct ToolRun {
  int exit_code;
  std::string out;
  std::string err;
};

std::string slurp(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// A scratch directory per test, removed afterwards.
class ToolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("uvmalloc_tool_test_") + info->name() + "_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs the tool with `args`, stdout and stderr captured to files (not
  // pipes, so a chatty child can never block on a full pipe).
  ToolRun run(std::vector<std::string> args) {
    args.insert(args.begin(), UVMALLOC_TOOL_PATH);
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    const fs::path out = dir_ / "stdout";
    const fs::path err = dir_ / "stderr";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = 0;
    const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
      ADD_FAILURE() << "cannot run " << argv[0];
      return {-1, "", ""};
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(out),
            slurp(err)};
  }

  fs::path dir_;
};

// PNG: the 8-byte signature, then an IHDR chunk of 13 bytes holding a
// nonzero width and height (big-endian).
void expect_valid_png(const fs::path& path) {
  const std::string bytes = slurp(path);
  ASSERT_GE(bytes.size(), 33u) << path;
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(bytes.substr(8, 8), std::string("\0\0\0\x0dIHDR", 8));
  const auto be32 = [&](std::size_t at) {
    std::uint32_t value = 0;
    for (std::size_t i = 0; i < 4; ++i) value = value << 8 | static_cast<unsigned char>(bytes[at + i]);
    return value;
  };
  EXPECT_GT(be32(16), 100u) << "width";
  EXPECT_GT(be32(20), 100u) << "height";
}

std::size_t count_lines(const std::string& text) {
  std::size_t lines = 0;
  for (const char c : text) lines += c == '\n';
  return lines;
}

TEST_F(ToolTest, BadOptionsExitTwoWithOneLineSayingWhatIsAllowed) {
  struct Case {
    std::vector<std::string> args;
    std::string must_say;  // part of the one line
  };
  const std::vector<Case> cases = {
      {{}, "commands: bench demo"},
      {{"nope"}, "unknown command 'nope'"},
      {{"bench"}, "commands:"},
      {{"bench", "contention", "--modes", "locked,fast"},
       "unknown mode 'fast'; allowed: locked, rcu_walk, counters"},
      {{"bench", "contention", "--modes", "locked,locked"}, "given twice"},
      {{"bench", "contention", "--writers", "0"}, "--writers: '0' is not a whole number in [1, 256]"},
      {{"bench", "contention", "--readers", "1,x"}, "--readers: 'x' is not a whole number"},
      {{"bench", "contention", "--areas", "0"}, "--areas: '0' is not a whole number in [1,"},
      {{"bench", "contention", "--areas", "1e99"}, "--areas"},
      {{"bench", "contention", "--seconds", "-1"}, "is not a number of seconds in (0, 600]"},
      {{"bench", "contention", "--seconds", "abc"}, "--seconds"},
      {{"bench", "contention", "--json", "--csv"}, "--json excludes --csv"},
      {{"bench", "contention", "--plot", "x.jpg"}, "must end in .png or .svg"},
      {{"bench", "contention", "--free", "later"}, "'later' is not one of now|lazy"},
      {{"bench", "contention", "--bogus"}, "options: --modes --writers"},
      {{"bench", "scaling", "--areas", "1k,1k"}, "given twice"},
      {{"bench", "accuracy", "--readers", "0"}, "--readers"},
      {{"demo", "--seconds", "0"}, "--seconds"},
      {{"map"}, "nothing to draw"},
      {{"map", "--png", "x.svg"}, "must end in .png"},
      {{"map", "--png", "x.png", "--workload", "busy"}, "not one of fragmented|churn|lazy"},
      {{"bench", "churn", "--hold", "0"}, "--hold: '0' is not a whole number in [1,"},
      {{"bench", "churn", "--peers", "vmalloc,nope"}, "unknown peer 'nope'"},
  };
  for (const auto& c : cases) {
    std::string joined;
    for (const auto& arg : c.args) joined += ' ' + arg;
    SCOPED_TRACE("uvmalloc" + joined);
    const ToolRun result = run(c.args);
    EXPECT_EQ(result.exit_code, 2);
    EXPECT_EQ(result.out, "");
    EXPECT_EQ(count_lines(result.err), 1u) << result.err;
    EXPECT_NE(result.err.find(c.must_say), std::string::npos) << result.err;
  }
}

TEST_F(ToolTest, HelpExitsZero) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--help"}, {"bench", "contention", "--help"}, {"map", "--help"}}) {
    const ToolRun result = run(args);
    EXPECT_EQ(result.exit_code, 0);
    EXPECT_NE(result.out.find("Usage:"), std::string::npos);
  }
}

// Reuse shows in the churn benchmark even with buffers in flight: the
// default vmalloc faults a small fraction of what fresh pages cost.
TEST_F(ToolTest, ChurnWithBuffersInFlightShowsReuseSavingTheFaults) {
  const ToolRun result = run({"bench", "churn", "--hold", "3", "--peers", "vmalloc,vmalloc_fresh,mmap",
                              "--threads", "1", "--seconds", "0.2", "--repeats", "1", "--no-strace", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto json = nlohmann::json::parse(result.out);
  ASSERT_TRUE(json.is_array());
  ASSERT_EQ(json.size(), 3u);
  std::map<std::string, nlohmann::json> by_peer;
  for (const auto& row : json) by_peer[row.at("peer").get<std::string>()] = row;
  ASSERT_EQ(by_peer.size(), 3u);
  for (const auto& [peer, row] : by_peer) EXPECT_GT(row.at("ops_per_sec").get<double>(), 0) << peer;
  const double reused = by_peer.at("vmalloc").at("faults_per_op").get<double>();
  const double fresh = by_peer.at("vmalloc_fresh").at("faults_per_op").get<double>();
  EXPECT_GT(fresh, 16.0) << "every fresh buffer of 64 KiB or more faults in each page";
  EXPECT_LT(reused * 4, fresh) << "reuse should save most page faults";
  EXPECT_GE(by_peer.at("mmap").at("unmap_calls_per_1000_frees").get<double>(), 1000.0);
}

TEST_F(ToolTest, ContentionJsonHasOneObjectPerCombination) {
  const ToolRun result = run({"bench", "contention", "--modes", "locked,counters", "--readers", "0,1",
                          "--areas", "100,1k", "--seconds", "0.05", "--repeats", "1", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto json = nlohmann::json::parse(result.out);
  ASSERT_TRUE(json.is_array());
  ASSERT_EQ(json.size(), 8u);
  std::set<std::tuple<std::string, int, int>> combinations;
  for (const auto& row : json) {
    for (const char* key : {"mode", "writers", "readers", "areas", "writer_ops_per_sec",
                            "reader_ops_per_sec"}) {
      ASSERT_TRUE(row.contains(key)) << key << " in " << row;
    }
    EXPECT_EQ(row["writers"], 1);
    EXPECT_GT(row["writer_ops_per_sec"].get<double>(), 0) << row;
    if (row["readers"] == 0) {
      EXPECT_EQ(row["reader_ops_per_sec"].get<double>(), 0) << row;
    } else {
      EXPECT_GT(row["reader_ops_per_sec"].get<double>(), 0) << row;
    }
    combinations.emplace(row["mode"], row["readers"], row["areas"]);
  }
  EXPECT_EQ(combinations.size(), 8u) << "every combination once";
  EXPECT_TRUE(combinations.contains({"counters", 1, 1000}));
}

TEST_F(ToolTest, ContentionCsvHasHeaderAndOneLinePerCombination) {
  const ToolRun result = run({"bench", "contention", "--modes", "rcu_walk", "--readers", "0,1",
                          "--areas", "100", "--seconds", "0.02", "--repeats", "1", "--csv"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  std::istringstream lines(result.out);
  std::string header;
  std::getline(lines, header);
  EXPECT_EQ(header.rfind("mode,writers,readers,areas,writer_ops_per_sec,reader_ops_per_sec", 0),
            0u)
      << header;
  EXPECT_EQ(count_lines(result.out), 3u) << result.out;
}

TEST_F(ToolTest, ContentionPlotWritesValidPng) {
  const fs::path png = dir_ / "contention.png";
  const ToolRun result = run({"bench", "contention", "--modes", "locked,rcu_walk", "--readers", "0,1",
                          "--areas", "100", "--seconds", "0.02", "--repeats", "1", "--plot",
                          png.string()});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  expect_valid_png(png);
}

TEST_F(ToolTest, ProgressStaysOffWhenStderrIsNotATerminal) {
  // Planned 3 x 0.7 s > 2 s, so only the missing terminal keeps it quiet.
  const ToolRun result = run({"bench", "contention", "--modes", "counters", "--readers", "0,1,2",
                          "--areas", "100", "--seconds", "0.7", "--repeats", "1", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.err, "");
}

TEST_F(ToolTest, ScalingJsonHasEveryModeAndAllocFreeForEachAreaCount) {
  const fs::path svg = dir_ / "scaling.svg";
  const ToolRun result = run({"bench", "scaling", "--areas", "100,1000", "--seconds", "0.02",
                          "--repeats", "1", "--adversarial", "--json", "--plot", svg.string()});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto json = nlohmann::json::parse(result.out);
  ASSERT_EQ(json.size(), 2u);
  EXPECT_EQ(json[0]["areas"], 100);
  EXPECT_EQ(json[1]["areas"], 1000);
  for (const auto& row : json) {
    for (const char* key : {"info_locked_ns", "info_rcu_walk_ns", "info_counters_ns",
                            "alloc_free_ns", "aligned_alloc_free_misaligned_holes_ns"}) {
      ASSERT_TRUE(row.contains(key)) << key;
      EXPECT_GT(row[key].get<double>(), 0) << key;
    }
  }
  EXPECT_NE(slurp(svg).find("<svg"), std::string::npos);
}

TEST_F(ToolTest, AccuracyFindsLockedAndCountersReadingsExact) {
  const ToolRun result = run({"bench", "accuracy", "--areas", "1000", "--seconds", "0.1", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto json = nlohmann::json::parse(result.out);
  ASSERT_EQ(json.size(), 6u) << "3 modes x (used, largest_chunk)";
  for (const auto& row : json) {
    EXPECT_GT(row["reads"].get<double>(), 0) << row;
    if (row["mode"] != "rcu_walk") {
      EXPECT_EQ(row["error_max_bytes"].get<double>(), 0) << row;
      EXPECT_EQ(row["exact_fraction"].get<double>(), 1) << row;
    }
  }
}

TEST_F(ToolTest, MapWritesPngAndSvgForEveryWorkload) {
  for (const std::string workload : {"fragmented", "churn", "lazy"}) {
    SCOPED_TRACE(workload);
    const fs::path png = dir_ / (workload + ".png");
    const fs::path svg = dir_ / (workload + ".svg");
    const ToolRun result = run({"map", "--workload", workload, "--areas", "100", "--png",
                            png.string(), "--svg", svg.string()});
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(result.out.rfind("VmallocTotal:", 0), 0u) << result.out;
    expect_valid_png(png);
    EXPECT_NE(slurp(svg).find("<svg"), std::string::npos);
  }
}

}  // namespace
