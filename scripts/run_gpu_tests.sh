#!/usr/bin/env bash
# run_gpu_tests.sh: the GPU machine's test and benchmark run, in one call (the device tool runs it
# from the repository root). Usage: scripts/run_gpu_tests.sh BIN_DIR OUT_DIR [PART ...]
#   BIN_DIR: binaries built here with nvcc for sm_90 (freekv, test_cuda_ops, test_cuda_model,
#            bench_recall from build/dev), the shared libraries the GPU machine lacks (libstdc++,
#            libgcc_s, libfmt, libpcre2-8, libutf8proc, libgomp, and the netlib reference BLAS saved
#            as libopenblas.so.0: small, and nothing BLAS-bound runs there), and optionally
#            ref.tar.xz (the reference model folder, xz-compressed to fit the 64 MiB carry limit)
#            and eval_wp_tail.txt;
#   OUT_DIR: receives at most 8 files (the device tool brings back no more): machine.txt,
#            tests.log (every test and sanitizer output, one after the other), bench_recall.md,
#            perplexity.md + perplexity.log, bench.json + bench.log, profile.md; a summary is
#            printed last;
#   PART:    any of tests, perplexity, bench, profile, prefill-profile, serve (default: tests). FREEKV_BENCH_ARGS overrides
#            the bench arguments, FREEKV_PROFILE_ARGS the profiled bench's (without -n),
#            FREEKV_PPL_CHUNKS the perplexity windows (2).
# tests: the CUDA op tests, compute-sanitizer memcheck and racecheck on them, the GPU engine tests
# (plus memcheck on the dense-regime one) and the recall micro-benchmark.
# profile: Nsight Compute's device time per kernel (kernels serialized) over exactly one measured
# decode step of the profiled bench (default freekv:corr-off at 32K, batch 1), as a markdown
# table (scripts/ncu_kernel_table.py, run by the GPU machine's python3); prefill-profile: the same
# over one 32K prefill (FREEKV_PREFILL_PROFILE_ARGS), in prefill_profile.md.
# serve: `freekv serve --device cuda` for each mode of FREEKV_SERVE_MODES (freekv) with
# FREEKV_SERVE_ARGS (default --shape llama-3.1-8b at 32K, 16 slots; must not repeat --device or
# --kv-mode), loaded by `freekv bench-serve` with FREEKV_LOAD_ARGS (32K-token prompts at
# concurrency 1, 4, 8, 16); rows in serve.json, the servers' logs in serve.log.
# Exits non-zero when any part fails.
set -uo pipefail
bin="$1"
out="$2"
shift 2
parts="${*:-tests}"
export LD_LIBRARY_PATH="$bin:${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
status=0
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current,memory.total --format=csv,noheader \
    | tee "$out/machine.txt"
free -g | head -2 >> "$out/machine.txt"
ref=""
if [ -f "$bin/ref.tar.xz" ]; then
    ref=/tmp/freekv-ref
    mkdir -p "$ref" && tar -xJf "$bin/ref.tar.xz" -C "$ref" 2>/dev/null \
        || python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$bin/ref.tar.xz" "$ref"
fi
export FREEKV_EVAL_TEXT="$bin/eval_wp_tail.txt"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
bench_args=${FREEKV_BENCH_ARGS:---shape llama-3.1-8b -d 32768 -b 1,4 -n 512 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512}
profile_args=${FREEKV_PROFILE_ARGS:---shape llama-3.1-8b -d 32768 -b 1 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode freekv:corr-off}
prefill_profile_args=${FREEKV_PREFILL_PROFILE_ARGS:---shape llama-3.1-8b -d 32768 -b 1 -n 1 -r 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill}
log="$out/tests.log"

# section NAME COMMAND...: runs the command with its output appended to tests.log under a header;
# a non-zero exit marks the run failed.
section() {
    local name="$1"
    shift
    echo "==== $name" >> "$log"
    "$@" >> "$log" 2>&1
    local rc=$?
    echo "==== $name: exit $rc" >> "$log"
    [ "$rc" -eq 0 ] || status=1
}

if [[ " $parts " == *" tests "* ]]; then
    section test_cuda_ops "$bin/test_cuda_ops"
    if [ -n "$sanitizer" ]; then
        section memcheck "$sanitizer" --tool memcheck --error-exitcode 3 "$bin/test_cuda_ops"
        section racecheck "$sanitizer" --tool racecheck --error-exitcode 3 "$bin/test_cuda_ops"
    else
        echo "compute-sanitizer not found" >> "$log"
        status=1
    fi
    if [ -x "$bin/test_cuda_engine" ]; then
        section test_cuda_engine "$bin/test_cuda_engine"
    fi
    if [ -x "$bin/test_cuda_model" ]; then
        FREEKV_REF_MODEL="$ref" section test_cuda_model "$bin/test_cuda_model"
        if [ -n "$sanitizer" ] && [ -n "$ref" ]; then
            FREEKV_REF_MODEL="$ref" section memcheck_model "$sanitizer" --tool memcheck --error-exitcode 3 \
                "$bin/test_cuda_model" --gtest_filter='*DenseRegime*'
        fi
    fi
    if [ -x "$bin/bench_recall" ]; then
        "$bin/bench_recall" 4096 20 > "$out/bench_recall.md" 2>&1 || status=1
    fi
    echo "== tests (details in tests.log)"
    grep -E "^==== .*: exit|^\[ +(PASSED|FAILED)|Failure|ERROR SUMMARY|RACECHECK SUMMARY|prompt .* tokens|ppl cpu|pages/step" "$log" | head -60
    if [ -f "$out/bench_recall.md" ]; then echo "== bench_recall"; grep -E "16 KiB \| 256 \||validation" "$out/bench_recall.md"; fi
fi

if [[ " $parts " == *" perplexity "* ]] && [ -n "$ref" ]; then
    # The retrieval issue's settings (bench/results/2026-11-24-cpu-ref28m-accuracy.md), on the GPU.
    "$bin/freekv" perplexity -m "$ref" -f "$FREEKV_EVAL_TEXT" -c 8192 --prefix 4096 --chunks "${FREEKV_PPL_CHUNKS:-2}" \
        --kv-mode full,budget-only,streaming,quest,arkvale,freekv,freekv:corr-off,freekv:no-spec \
        --kv-budget 1024 --kv-sink 128 --kv-recent 128 --kv-page-size 32 --corr-threshold 0.9 --compare full \
        --device cuda --no-progress > "$out/perplexity.md" 2> "$out/perplexity.log" || status=1
    echo "== perplexity"; cat "$out/perplexity.md"; tail -3 "$out/perplexity.log"
fi

if [[ " $parts " == *" bench "* ]]; then
    # shellcheck disable=SC2086
    "$bin/freekv" bench $bench_args --device cuda --no-progress -o json > "$out/bench.json" 2> "$out/bench.log" || status=1
    echo "== bench"; cat "$out/bench.json"; tail -5 "$out/bench.log"
fi

if [[ " $parts " == *" profile "* ]]; then
    if [ -z "$ncu" ]; then
        echo "ncu not found" | tee "$out/profile.md"
        status=1
    else
        # The bench's one measured step (-n 1) alone: freekv bench brackets its measured steps with
        # cudaProfilerStart/Stop (gpu::profiler_range); every kernel the engine launches matches the regex.
        csv=/tmp/freekv-profile.csv
        # shellcheck disable=SC2086
        "$ncu" --clock-control none --metrics gpu__time_duration.sum,launch__grid_size -k regex:. \
            --profile-from-start off --csv "$bin/freekv" bench $profile_args -n 1 --breakdown-steps 0 \
            --device cuda --no-progress > "$csv" 2> /dev/null || status=1
        python3 "$(dirname "$0")/ncu_kernel_table.py" "$csv" > "$out/profile.md" || status=1
        echo "== profile"; cat "$out/profile.md"
    fi
fi
if [[ " $parts " == *" prefill-profile "* ]]; then
    if [ -z "$ncu" ]; then
        echo "ncu not found" | tee "$out/prefill_profile.md"
        status=1
    else
        # The first ~600 launches after the synthetic weights' fills: the bench's untimed prefill
        # (about one prompt's worth of every prefill kernel).
        csv=/tmp/freekv-prefill-profile.csv
        # shellcheck disable=SC2086
        "$ncu" --clock-control none --metrics gpu__time_duration.sum,launch__grid_size -k 'regex:^(?!fill).*' \
            --launch-count 600 --csv "$bin/freekv" bench $prefill_profile_args --device cuda --no-progress > "$csv" 2> /dev/null \
            || status=1
        python3 "$(dirname "$0")/ncu_kernel_table.py" "$csv" > "$out/prefill_profile.md" || status=1
        echo "== prefill-profile"; cat "$out/prefill_profile.md"
    fi
fi
if [[ " $parts " == *" serve "* ]]; then
    serve_args=${FREEKV_SERVE_ARGS:---shape llama-3.1-8b -c 32768 --max-batch 16 --cpu-kv-gib 66 --kv-budget 2048 --kv-sink 512 --kv-recent 512}
    load_args=${FREEKV_LOAD_ARGS:---concurrency 1,4,8,16 --prompt-tokens 32704 --max-tokens 64 --vocab 128000}
    port=18080
    for mode in ${FREEKV_SERVE_MODES:-freekv}; do
        echo "==== serve --kv-mode $mode" >> "$out/serve.log"
        # shellcheck disable=SC2086
        "$bin/freekv" serve $serve_args --kv-mode "$mode" --port "$port" --device cuda --no-progress >> "$out/serve.log" 2>&1 &
        server=$!
        # shellcheck disable=SC2086
        "$bin/freekv" bench-serve --port "$port" --wait-ready 300 $load_args --label "$mode" --json "$out/serve.json" \
            || status=1
        kill "$server"
        wait "$server" 2>/dev/null
        grep -E "memory plan|slots of|error" "$out/serve.log" | tail -3
        port=$((port + 1))
    done
fi
exit "$status"
