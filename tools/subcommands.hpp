// tools/subcommands.hpp - the registration functions main.cpp calls.
//
// Each subcommand lives in tools/<file>.cpp and defines the function named
// here. It adds itself to the parent it is given (the root app, or the
// `bench` group), declares its options with CLI11 and sets a callback that
// runs it. See main.cpp for the whole convention.
#pragma once

#include <CLI/CLI.hpp>

namespace uvmalloc::tool {

void register_demo(CLI::App& root);                // tools/demo.cpp
void register_map(CLI::App& root);                 // tools/map.cpp
void register_stress(CLI::App& root);              // tools/stress.cpp (issue 5)
void register_bench_contention(CLI::App& bench);   // tools/bench_contention.cpp
void register_bench_scaling(CLI::App& bench);      // tools/bench_scaling.cpp
void register_bench_accuracy(CLI::App& bench);     // tools/bench_accuracy.cpp
void register_bench_churn(CLI::App& bench);        // tools/bench_churn.cpp (issue 4)

}  // namespace uvmalloc::tool
