#!/usr/bin/env bash
# run_gpu_tests.sh: the GPU machine's test and benchmark run, in one call (the device tool runs it
# from the repository root). Usage: scripts/run_gpu_tests.sh BIN_DIR OUT_DIR [PART ...]
#   BIN_DIR: binaries built here with nvcc for sm_90 (freekv, test_cuda_ops, test_cuda_model,
#            bench_recall from build/dev), the shared libraries the GPU machine lacks (libstdc++,
#            libgcc_s, libfmt, libpcre2-8, libutf8proc, libgomp, and the netlib reference BLAS saved
#            as libopenblas.so.0: small, and nothing BLAS-bound runs there), and optionally
#            ref.tar.xz (the reference model folder, xz-compressed to fit the 64 MiB carry limit)
#            and eval_wp_tail.txt;
#   OUT_DIR: receives the logs; a summary is printed last;
#   PART:    any of tests, perplexity, bench (default: tests). FREEKV_BENCH_ARGS overrides the
#            bench arguments; FREEKV_PPL_CHUNKS the perplexity windows (2).
# tests: the CUDA op tests, compute-sanitizer memcheck and racecheck on them, the GPU engine tests
# (plus memcheck on the dense-regime one) and the recall micro-benchmark. Exits non-zero when any
# part fails.
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

if [[ " $parts " == *" tests "* ]]; then
    "$bin/test_cuda_ops" > "$out/test_cuda_ops.txt" 2>&1 || status=1
    if [ -n "$sanitizer" ]; then
        "$sanitizer" --tool memcheck --error-exitcode 3 "$bin/test_cuda_ops" > "$out/memcheck.txt" 2>&1 || status=1
        "$sanitizer" --tool racecheck --error-exitcode 3 "$bin/test_cuda_ops" > "$out/racecheck.txt" 2>&1 || status=1
    else
        echo "compute-sanitizer not found" | tee "$out/memcheck.txt" "$out/racecheck.txt"
        status=1
    fi
    if [ -x "$bin/test_cuda_model" ]; then
        FREEKV_REF_MODEL="$ref" "$bin/test_cuda_model" > "$out/test_cuda_model.txt" 2>&1 || status=1
        if [ -n "$sanitizer" ] && [ -n "$ref" ]; then
            FREEKV_REF_MODEL="$ref" "$sanitizer" --tool memcheck --error-exitcode 3 "$bin/test_cuda_model" \
                --gtest_filter='*DenseRegime*' > "$out/memcheck_model.txt" 2>&1 || status=1
        fi
    fi
    if [ -x "$bin/bench_recall" ]; then
        "$bin/bench_recall" 4096 20 > "$out/bench_recall.md" 2>&1 || status=1
    fi
    echo "== test_cuda_ops"; grep -E "^\[ +(OK|PASSED|FAILED|SKIPPED)|Failure" "$out/test_cuda_ops.txt" | head -20
    echo "== memcheck"; tail -3 "$out/memcheck.txt"
    echo "== racecheck"; tail -3 "$out/racecheck.txt"
    if [ -f "$out/test_cuda_model.txt" ]; then
        echo "== test_cuda_model"; grep -E "prompt|ppl|OK|FAILED|SKIPPED|Failure|Expected|Which is|actual" "$out/test_cuda_model.txt" | head -60
    fi
    if [ -f "$out/memcheck_model.txt" ]; then echo "== memcheck (engine, dense)"; tail -3 "$out/memcheck_model.txt"; fi
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
    "$bin/freekv" bench ${FREEKV_BENCH_ARGS:---shape llama-3.1-8b -d 32768 -b 1,4 -n 512 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512} \
        --device cuda --no-progress -o json > "$out/bench.json" 2> "$out/bench.log" || status=1
    echo "== bench"; cat "$out/bench.json"; tail -5 "$out/bench.log"
fi
exit "$status"
