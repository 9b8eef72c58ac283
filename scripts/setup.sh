#!/usr/bin/env bash
# Installs the Debian 12 packages uvmalloc needs to build, test, benchmark and
# fuzz, and only those that are missing: on a machine that has them all it
# changes nothing and needs no network. Non-interactive. Runs as root; as
# another user it goes through sudo.
#
#   bash scripts/setup.sh
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  liburcu-dev                          # the library's one dependency
  libgtest-dev libbenchmark-dev        # tests, micro benchmarks
  libcli11-dev nlohmann-json3-dev      # the uvmalloc tool
  libjemalloc-dev                      # a peer in the churn benchmark
  gnuplot-nox                          # --plot
  clang-19 libclang-rt-19-dev          # libFuzzer (scripts/fuzz.sh)
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup.sh: all ${#packages[@]} packages are installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=(env)
elif command -v sudo >/dev/null; then
  as_root=(sudo env)
else
  echo "setup.sh: missing ${missing[*]}; run this script as root (no sudo here)" >&2
  exit 1
fi
echo "setup.sh: installing ${missing[*]}"
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
