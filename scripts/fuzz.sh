#!/usr/bin/env bash
# fuzz.sh: builds the libFuzzer targets (preset `fuzz`: clang 14, ASan + UBSan + libFuzzer) and runs
# each one for SECONDS (default 30) from its committed seed corpus in tests/fuzz/corpus/<name>
# (copied to a scratch folder: the repository is never written). Exits non-zero when a target
# crashes, leaks, trips a sanitizer, throws anything but a parser's own error, or exceeds 4 GiB;
# the input that did it is saved under build/fuzz/crashes/ and its path printed.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET ...]   (targets: fuzz_parsers fuzz_server_inputs)
# CI runs it with 30 s per target. A long run (tests/results/*-fuzz.md) sets FUZZ_RUNS to stop after
# that many executions instead (SECONDS stays the upper bound): FUZZ_RUNS=10000000 scripts/fuzz.sh 5400
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_parsers fuzz_server_inputs)
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
crashes=build/fuzz/crashes
mkdir -p "$crashes"
status=0
for t in "${targets[@]}"; do
    bin=build/fuzz/tests/fuzz/$t
    seeds=tests/fuzz/corpus/${t#fuzz_}
    work=$(mktemp -d)
    cp "$seeds"/* "$work"/
    echo "fuzz.sh: $t for ${seconds} s from $(ls "$seeds" | wc -l) seeds"
    runs=()
    [ -n "${FUZZ_RUNS:-}" ] && runs=(-runs="$FUZZ_RUNS")
    if ! "$bin" "$work" "${runs[@]}" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=25 -print_final_stats=1 \
        -artifact_prefix="$crashes/$t-" > "$crashes/$t.log" 2>&1; then
        echo "fuzz.sh: $t FAILED; its log: $crashes/$t.log"
        grep -E "ERROR|SUMMARY|Test unit written|deadly|terminate" "$crashes/$t.log" | head -20 || true
        status=1
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov:" "$crashes/$t.log" | tail -3 || true
    rm -rf "$work"
done
exit "$status"
