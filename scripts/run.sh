#!/usr/bin/env bash
# run.sh: the README's first command. Installs the Debian dependencies, builds the Release binary
# (cpu-release preset) and runs the main job:
#   scripts/run.sh                      freekv bench on its built-in default (synthetic tiny shape)
#   scripts/run.sh MODEL [PROMPT] [...] freekv generate on a Hugging Face folder or .gguf file
# Invariant: safe to run again (incremental build); builds only the binary (the tests are
# scripts/test.sh's job), so a fresh 2-core machine gets to the main job in minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_deps.sh
cmake --preset cpu-release >/dev/null
cmake --build --preset cpu-release --target freekv
if [ $# -lt 1 ]; then
    exec build/cpu-release/app/freekv bench
fi
model="$1"
prompt="${2:-The history of the world is}"
shift $(( $# >= 2 ? 2 : 1 ))
exec build/cpu-release/app/freekv generate -m "$model" -p "$prompt" -n 64 "$@"
