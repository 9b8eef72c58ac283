// tools/main.cpp - the `uvmalloc` command line tool: dispatcher.
//
// Registration convention (how to add a subcommand):
//   1. Write tools/<file>.cpp defining `void register_<file>(CLI::App& parent)`
//      in namespace uvmalloc::tool, declared in tools/subcommands.hpp.
//      `parent` is the root app for top-level commands (demo, map, stress)
//      and the `bench` group for benchmarks (bench_contention, bench_churn...).
//   2. The function adds a subcommand with parent.add_subcommand(), declares
//      its options (keep their storage alive: capture a shared_ptr in the
//      callback) and sets sub->callback() to run the command.
//   3. Add the file's name to the foreach() in tools/CMakeLists.txt; CMake
//      then defines UVMALLOC_HAVE_<FILE> when the file exists and main()
//      calls the function below. Every tools/*.cpp is compiled (glob). Extra
//      libraries go in tools/<file>.cmake, which CMake includes if present.
//
// Errors and exit status, the same for every subcommand:
//   * Bad options: throw CLI::ValidationError (from an option check or from
//     the callback) with a message saying what was wrong and what is allowed.
//     main() prints it as ONE line on stderr, prefixed with the command path,
//     and exits 2. CLI11's own parse errors take the same path.
//   * Failures while running (a library error, gnuplot missing): throw any
//     std::exception; main() prints one line and exits 1.
//   * Results go to stdout (text table, --json or --csv); progress and notes
//     about the run to stderr (see cli_common.hpp: Progress).
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "cli_common.hpp"
#include "subcommands.hpp"

namespace {

// "uvmalloc bench contention": the deepest subcommand the parse reached,
// so a one-line error can say where it happened.
std::string command_path(const CLI::App& app) {
  std::string path = app.get_name();
  for (const CLI::App* current = &app; !current->get_subcommands().empty();) {
    current = current->get_subcommands().front();
    path += ' ' + current->get_name();
  }
  return path;
}

// What the command at the end of `path` accepts, for the error line.
std::string allowed_here(const CLI::App& command) {
  std::string allowed;
  const auto subcommands = command.get_subcommands([](const CLI::App*) { return true; });
  if (!subcommands.empty()) {
    allowed = "commands:";
    for (const CLI::App* subcommand : subcommands) allowed += ' ' + subcommand->get_name();
    return allowed;
  }
  allowed = "options:";
  for (const CLI::Option* option : command.get_options()) {
    if (option->get_name() != "--help") allowed += ' ' + option->get_name();
  }
  return allowed;
}

const CLI::App& deepest_command(const CLI::App& app) {
  const CLI::App* current = &app;
  while (!current->get_subcommands().empty()) current = current->get_subcommands().front();
  return *current;
}

void register_all([[maybe_unused]] CLI::App& app, [[maybe_unused]] CLI::App& bench) {
  using namespace uvmalloc::tool;
#ifdef UVMALLOC_HAVE_DEMO
  register_demo(app);
#endif
#ifdef UVMALLOC_HAVE_MAP
  register_map(app);
#endif
#ifdef UVMALLOC_HAVE_STRESS
  register_stress(app);
#endif
#ifdef UVMALLOC_HAVE_BENCH_CONTENTION
  register_bench_contention(bench);
#endif
#ifdef UVMALLOC_HAVE_BENCH_SCALING
  register_bench_scaling(bench);
#endif
#ifdef UVMALLOC_HAVE_BENCH_ACCURACY
  register_bench_accuracy(bench);
#endif
#ifdef UVMALLOC_HAVE_BENCH_CHURN
  register_bench_churn(bench);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "uvmalloc - a userspace vmalloc whose statistics readers never block its writers.\n"
      "Start with `uvmalloc demo`."};
  app.name("uvmalloc");
  app.require_subcommand(1);
  CLI::App& bench = *app.add_subcommand(
      "bench", "Benchmarks: writer/reader contention, info() scaling, rcu_walk accuracy");
  bench.require_subcommand(1);
  register_all(app, bench);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    if (error.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      return app.exit(error);  // --help
    }
    // CLI11 says what was wrong; for an unknown word or a missing command,
    // also say what this command accepts.
    std::string message = uvmalloc::tool::one_line(error.what());
    const CLI::App& command = deepest_command(app);
    if (dynamic_cast<const CLI::RequiredError*>(&error) != nullptr) {
      // `uvmalloc nope`: CLI11 leaves the unknown word unparsed.
      const auto unparsed = command.remaining();
      if (!unparsed.empty()) message = "unknown command '" + unparsed.front() + "'";
      message += "; " + allowed_here(command);
    } else if (dynamic_cast<const CLI::ExtrasError*>(&error) != nullptr) {
      message += "; " + allowed_here(command);
    }
    std::fprintf(stderr, "%s: %s\n", command_path(app).c_str(), message.c_str());
    return uvmalloc::tool::kExitUsage;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: error: %s\n", command_path(app).c_str(),
                 uvmalloc::tool::one_line(error.what()).c_str());
    return uvmalloc::tool::kExitFailure;
  }
  return 0;
}
