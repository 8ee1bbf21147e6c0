#!/usr/bin/env bash
# test.sh: the README's second command and what CI runs. Installs the Debian dependencies, builds
# the cpu-debug preset (AddressSanitizer + UndefinedBehaviorSanitizer, debug checks, -Werror) and
# runs the whole test suite with ctest, then the threaded tests under ThreadSanitizer (cpu-tsan),
# then every fuzz target for 30 s (scripts/fuzz.sh), then compiles the CUDA backend where nvcc
# exists and runs its tests (they skip without a GPU) and the CLI tests, then soaks the server
# for 60 s (scripts/soak.sh).
# Exits non-zero when any test fails.
# Tests that need ../shared (the reference model) or the npm tokenizer files skip with a message
# when those are missing; `ctest -L unit` runs only the self-contained ones.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_deps.sh
cmake --preset cpu-debug >/dev/null
cmake --build --preset cpu-debug
status=0
ctest --preset cpu-debug "$@" || status=$?
# The tests that start threads again under ThreadSanitizer: the engine's (test_engine), the
# server's and its clients' (test_serve), the CPU transfer engine's (test_retrieval_kv), the
# recall worker's (test_recall_worker) and the tensor-parallel ranks' with their collectives
# (test_tensor_parallel_runner); OpenMP runs one thread there (libgomp is not instrumented and its
# barriers would read as races). The other suites are single-threaded, so TSan would only make them
# slower (the preset builds and runs these five; test_cli and test_ref_model start the same threads
# on the 28M model and are left to the ASan pass).
cmake --preset cpu-tsan >/dev/null
cmake --build --preset cpu-tsan
ctest --preset cpu-tsan || status=$?
# Every libFuzzer target for 30 s from its seed corpus (clang 14, ASan + UBSan): a parser change
# that crashes on a malformed model file, request body, template or id list fails here.
scripts/fuzz.sh 30 || status=$?
# The CUDA backend is compiled wherever nvcc is (CI machines have CUDA 13 in /usr/local/cuda), the
# binary, the GPU tests, the CLI tests and test_serve unsanitized (its resident-set check needs a
# build without sanitizers; the CPU suites ran above, with them), and the slow model cases the
# sanitizer pass left out (label slow: seconds here, minutes under ASan): its
# GPU tests skip without a device, and the CLI tests then check that the CUDA build falls back to
# the CPU with a message (--device auto) or stops with one (--device cuda).
if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc >/dev/null 2>&1; then
    cmake --preset cuda-release >/dev/null
    cmake --build --preset cuda-release
    ctest --preset cuda-release || status=$?
else
    echo "test.sh: nvcc not found: the CUDA backend was not compiled (install CUDA 13 to check it)"
    # The slow model cases (label slow: the needle grids, the CLI's perplexity and needle runs) that
    # the sanitizer pass leaves to an optimized build run in cpu-release instead.
    cmake --preset cpu-release >/dev/null
    cmake --build --preset cpu-release --target freekv test_cli test_needle_model
    ctest --preset cpu-release -L slow || status=$?
fi
# A 60-second soak of the server (scripts/soak.sh; the record in tests/results runs 10 minutes):
# load, malformed requests and dropped streams together; fails on an unexpected answer or on
# resources (RSS, descriptors, threads) that do not come back once the server is idle.
scripts/soak.sh 60 || status=$?
# ctest counts a test executable as passed when some of its cases skipped; list those cases.
log=build/cpu-debug/Testing/Temporary/LastTest.log
if [ -f "$log" ]; then
    skipped=$(grep -c '^\[  SKIPPED \] .*ms)$' "$log" || true)
    echo "test.sh: ${skipped} test cases skipped"
    grep -B1 '^\[  SKIPPED \]' "$log" | grep -v -e '^\[' -e '^--$' | sort | uniq -c | head -20 || true
fi
exit "$status"
