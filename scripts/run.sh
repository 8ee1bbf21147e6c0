#!/usr/bin/env bash
# run.sh: the README's first command. Installs the Debian dependencies, builds the Release binary
# (cpu-release preset, or cuda-release when nvcc is present) and runs the main job:
#   scripts/run.sh MODEL [PROMPT] [extra freekv generate flags...]
# MODEL is a Hugging Face folder or a .gguf file. Invariant: safe to run again (incremental build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: scripts/run.sh MODEL_DIR_OR_GGUF [PROMPT] [freekv generate flags...]" >&2
    exit 2
fi
model="$1"
prompt="${2:-The history of the world is}"
shift $(( $# >= 2 ? 2 : 1 ))
scripts/setup_deps.sh
cmake --preset cpu-release >/dev/null
cmake --build --preset cpu-release
exec build/cpu-release/app/freekv generate -m "$model" -p "$prompt" -n 64 "$@"
