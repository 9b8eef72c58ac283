#!/usr/bin/env bash
# Everything CI checks (.ci/run calls this), in phases that stop at the first
# failure:
#   1. setup      install what is missing (scripts/setup.sh)
#   2. release    RelWithDebInfo build in build-test/, the whole ctest suite
#   3. asan       AddressSanitizer + UBSan (leak checks on) in build-asan/,
#                 the whole suite
#   4. tsan       ThreadSanitizer in build-tsan/, the tests labelled
#                 `concurrency`, with tsan.supp (liburcu internals only)
#   5. fuzz       scripts/fuzz.sh: the VaSpace fuzzer against the reference
#                 model for FUZZ_SECONDS (default 60), fails on any finding
#   6. soak       `uvmalloc stress --seconds UVMALLOC_SOAK_SECONDS` (default
#                 60): mixed workload, invariants and RSS checked
# and ends with a one-line summary. About 15 to 20 minutes on 2 cores.
#
# Environment:
#   UVMALLOC_JOBS=N          build and ctest parallelism (default 2)
#   UVMALLOC_TEST_SCALE=X    multiplies the work of the randomized and stress
#                            tests (default 1; e.g. 20 for a soak)
#   UVMALLOC_TEST_PHASES=... the phases to run, e.g. "release tsan"
#                            (default "release asan tsan fuzz soak"; setup
#                            always runs)
#   FUZZ_SECONDS, UVMALLOC_SOAK_SECONDS  length of the fuzz and soak phases
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${UVMALLOC_JOBS:-2}
phases=${UVMALLOC_TEST_PHASES:-release asan tsan fuzz soak}
export UVMALLOC_TEST_SCALE=${UVMALLOC_TEST_SCALE:-1}

passed=()
current=setup
summary() {
  local status=$? elapsed
  elapsed=$(printf '%dm%02ds' $((SECONDS / 60)) $((SECONDS % 60)))
  if [ "$status" -eq 0 ]; then
    echo "test.sh: PASSED ${passed[*]} in $elapsed"
  else
    echo "test.sh: FAILED in phase '$current' (exit $status) after $elapsed;" \
         "passed before it: ${passed[*]:-none}" >&2
  fi
}
trap summary EXIT

banner() {
  current=$1
  printf '\n======== %s: %s  [%s UTC] ========\n' "$1" "$2" "$(date -u +%H:%M:%S)"
}

# build DIR CMAKE_ARGS... - configure and build one tree. The sanitizer is
# always passed, so a reused tree never keeps another phase's setting.
build() {
  local dir=$root/$1
  shift
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
  cmake --build "$dir" -j "$jobs"
}

# run_tests PHASE DIR [CTEST_ARGS...] - run ctest under the command prefix
# $test_prefix (environment, runner), fail when no test matches, and note
# ctest's count for the summary.
test_prefix=()
run_tests() {
  local phase=$1 dir=$root/$2 log count
  shift 2
  log=$dir/ctest-last.log
  "${test_prefix[@]}" ctest --test-dir "$dir" --output-on-failure --no-tests=error -j "$jobs" "$@" 2>&1 |
    tee "$log"
  count=$(grep -oE '[0-9]+ tests failed out of [0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  passed+=("$phase(${count:-?} tests)")
}

# The runner for TSan binaries. GCC 12's TSan needs its fixed shadow layout
# and dies with "unexpected memory mapping" when the kernel randomises mmap
# with more bits than it expects (vm.mmap_rnd_bits > 28 on newer kernels),
# so a run can fail or not by chance. Where setarch may turn ASLR off for the
# test processes we always do (it costs nothing and removes the chance);
# where it may not, a probe shows whether TSan runs at all.
tsan_runner=()
choose_tsan_runner() {
  local probe_dir=$root/build-tsan/aslr-probe output
  mkdir -p "$probe_dir"
  printf '#include <thread>\nint main() { std::thread([] {}).join(); }\n' >"$probe_dir/probe.cpp"
  "$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$root/build-tsan/CMakeCache.txt")" -std=c++23 -fsanitize=thread "$probe_dir/probe.cpp" -o "$probe_dir/probe"
  if setarch "$(uname -m)" -R true 2>/dev/null; then
    tsan_runner=(setarch "$(uname -m)" -R)
    echo "tsan: running with ASLR off (setarch -R); vm.mmap_rnd_bits=$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo '?')"
  else
    echo "tsan: setarch -R is not permitted here; running with ASLR on"
  fi
  if ! output=$("${tsan_runner[@]}" "$probe_dir/probe" 2>&1); then
    echo "$output" >&2
    echo "tsan: a TSan-built probe cannot run on this machine. If it says 'unexpected" \
         "memory mapping', lower ASLR entropy (sysctl vm.mmap_rnd_bits=28) or allow" \
         "setarch -R (personality) in the container." >&2
    return 1
  fi
}

banner setup "installing missing packages"
bash "$root/scripts/setup.sh"
passed+=(setup)

for phase in $phases; do
  case $phase in
    release)
      banner release "RelWithDebInfo build in build-test/, all tests"
      build build-test -DUVMALLOC_SANITIZE=
      run_tests release build-test
      ;;
    asan)
      banner asan "AddressSanitizer + UBSan build in build-asan/, all tests"
      build build-asan -DUVMALLOC_SANITIZE=address -DUVMALLOC_BUILD_BENCH=OFF
      test_prefix=(env
        ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:check_initialization_order=1:strict_init_order=1
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1)
      run_tests asan build-asan
      ;;
    tsan)
      banner tsan "ThreadSanitizer build in build-tsan/, tests labelled concurrency"
      # Only the concurrency tests run here, and none needs the tool.
      build build-tsan -DUVMALLOC_SANITIZE=thread -DUVMALLOC_BUILD_BENCH=OFF -DUVMALLOC_BUILD_TOOLS=OFF
      choose_tsan_runner
      test_prefix=(env "TSAN_OPTIONS=suppressions=$root/tsan.supp halt_on_error=1 second_deadlock_stack=1"
        "${tsan_runner[@]}")
      run_tests tsan build-tsan -L concurrency
      ;;
    fuzz)
      banner fuzz "libFuzzer (clang-19, ASan+UBSan) against the reference model, ${FUZZ_SECONDS:-60} s"
      FUZZ_SECONDS=${FUZZ_SECONDS:-60} bash "$root/scripts/fuzz.sh"
      passed+=(fuzz)
      ;;
    soak)
      banner soak "uvmalloc stress (release build), ${UVMALLOC_SOAK_SECONDS:-60} s"
      build build-test -DUVMALLOC_SANITIZE=  # a no-op after the release phase
      "$root/build-test/tools/uvmalloc" stress --seconds "${UVMALLOC_SOAK_SECONDS:-60}"
      passed+=(soak)
      ;;
    *)
      echo "test.sh: unknown phase '$phase' in UVMALLOC_TEST_PHASES (release, asan, tsan, fuzz, soak)" >&2
      exit 2
      ;;
  esac
done
