#!/usr/bin/env bash
# The main job on defaults: installs what is missing (setup.sh), builds the
# uvmalloc tool in Release in build/, and runs `uvmalloc demo`: the seed's
# scenario (writers allocating and freeing while readers read meminfo as fast
# as they can) in each info mode, with what the lock costs and RCU saves.
#
#   bash scripts/demo.sh            # extra arguments go to `uvmalloc demo`
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${UVMALLOC_JOBS:-2}

bash "$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DUVMALLOC_SANITIZE=
cmake --build "$root/build" -j "$jobs" --target uvmalloc_tool
exec "$root/build/tools/uvmalloc" demo "$@"
