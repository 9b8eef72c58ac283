#!/usr/bin/env bash
# Builds the VaSpace fuzzer with clang-19 (ASan + UBSan + libFuzzer) and runs
# it for FUZZ_SECONDS (default 60) over a scratch copy of fuzz/corpus, so the
# repository's seed corpus is never rewritten. Exits non-zero on any finding
# (crash, sanitizer report, leak, timeout, out-of-memory, model mismatch);
# the input that caused it is left in build-fuzz/fuzz-artifacts/.
#
#   scripts/fuzz.sh                      # CI: 60 s
#   FUZZ_SECONDS=3600 scripts/fuzz.sh    # an hour
#   FUZZ_JOBS=2 FUZZ_SECONDS=600 scripts/fuzz.sh   # two fuzzing processes
#   FUZZ_CORPUS_DIR=~/uvm-corpus scripts/fuzz.sh    # keep the grown corpus there
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
cxx=${FUZZ_CXX:-clang++-19}

if ! command -v "$cxx" >/dev/null; then
  echo "fuzz.sh: $cxx not found; install Debian's clang-19 and libclang-rt-19-dev" >&2
  exit 2
fi

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER="$cxx" -DUVMALLOC_BUILD_FUZZ=ON -DUVMALLOC_SANITIZE=address \
  -DUVMALLOC_BUILD_TESTS=OFF -DUVMALLOC_BUILD_BENCH=OFF -DUVMALLOC_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" -j2 --target va_space_fuzz

if [ -n "${FUZZ_CORPUS_DIR:-}" ]; then
  corpus=$FUZZ_CORPUS_DIR
  mkdir -p "$corpus"
else
  corpus=$(mktemp -d "${TMPDIR:-/tmp}/uvmalloc-fuzz-corpus.XXXXXX")
  trap 'rm -rf "$corpus"' EXIT
fi
cp "$root"/fuzz/corpus/* "$corpus"/
artifacts=$build/fuzz-artifacts
mkdir -p "$artifacts"
log=$build/fuzz-last.log

echo "fuzz.sh: fuzzing for ${seconds}s with $jobs process(es); log in $log"
status=0
# -fork keeps fuzzing after nothing, but makes every worker a separate
# process; with one job we run in-process so the final stats are exact.
if [ "$jobs" -gt 1 ]; then
  fork_args=(-fork="$jobs" -ignore_crashes=0 -ignore_timeouts=0 -ignore_ooms=0)
else
  fork_args=()
fi
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$build/fuzz/va_space_fuzz" "${fork_args[@]}" \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" \
  "$corpus" >"$log" 2>&1 || status=$?

tail -n 25 "$log"
execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1 || true)
if [ -z "$execs" ]; then
  execs=$(grep -oE '#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
fi
echo "fuzz.sh: total executions: ${execs:-unknown}, corpus: $(ls "$corpus" | wc -l) inputs"
if [ "$status" -ne 0 ] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log"; then
  echo "fuzz.sh: FAILED (exit $status); reproducer(s) in $artifacts:" >&2
  ls -t "$artifacts" | head -n 5 >&2
  exit 1
fi
echo "fuzz.sh: no findings"
