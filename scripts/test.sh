#!/usr/bin/env bash
# test.sh: the README's second command and what CI runs. Installs the Debian dependencies, builds
# the cpu-debug preset (AddressSanitizer + UndefinedBehaviorSanitizer, debug checks, -Werror) and
# runs the whole test suite with ctest. Exits non-zero when any test fails.
# Tests that need ../shared (the reference model) or the npm tokenizer files skip with a message
# when those are missing; `ctest -L unit` runs only the self-contained ones.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_deps.sh
cmake --preset cpu-debug >/dev/null
cmake --build --preset cpu-debug
ctest --preset cpu-debug "$@"
