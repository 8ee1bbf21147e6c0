#!/usr/bin/env bash
# run_gpu_tests.sh: the GPU machine's test and benchmark run, in one call (the device tool runs it
# from the repository root). Usage: scripts/run_gpu_tests.sh BIN_DIR OUT_DIR
#   BIN_DIR: test_cuda_ops, test_cuda_model and bench_recall built here with nvcc for sm_90
#            (build/dev/...), plus the shared libraries they need that the GPU machine lacks
#            (libstdc++, libgcc_s, libfmt), and optionally the reference model in BIN_DIR/ref
#            (config.json, golden.json, index and shards: about 56 MiB of the 64 MiB carry limit);
#   OUT_DIR: receives the logs; the summary is printed last.
# Runs the CUDA op tests, then compute-sanitizer memcheck and racecheck on them, then the recall
# micro-benchmark. Exits non-zero when any of them fails.
set -uo pipefail
bin="$1"
out="$2"
export LD_LIBRARY_PATH="$bin:${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
status=0
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader \
    | tee "$out/machine.txt"
"$bin/test_cuda_ops" > "$out/test_cuda_ops.txt" 2>&1 || status=1
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
    "$sanitizer" --tool memcheck --error-exitcode 3 "$bin/test_cuda_ops" > "$out/memcheck.txt" 2>&1 || status=1
    "$sanitizer" --tool racecheck --error-exitcode 3 "$bin/test_cuda_ops" > "$out/racecheck.txt" 2>&1 || status=1
else
    echo "compute-sanitizer not found" | tee "$out/memcheck.txt" "$out/racecheck.txt"
    status=1
fi
if [ -x "$bin/test_cuda_model" ]; then
    FREEKV_REF_MODEL="$bin/ref" "$bin/test_cuda_model" > "$out/test_cuda_model.txt" 2>&1 || status=1
fi
if [ -x "$bin/bench_recall" ]; then
    "$bin/bench_recall" 4096 20 > "$out/bench_recall.md" 2>&1 || status=1
fi
echo "== test_cuda_ops"; grep -E "^\[ +(OK|PASSED|FAILED|SKIPPED)|Failure" "$out/test_cuda_ops.txt" | head -20
echo "== memcheck"; tail -3 "$out/memcheck.txt"
echo "== racecheck"; tail -3 "$out/racecheck.txt"
if [ -f "$out/test_cuda_model.txt" ]; then echo "== test_cuda_model"; grep -E "prompt|OK|FAILED|SKIPPED" "$out/test_cuda_model.txt"; fi
if [ -f "$out/bench_recall.md" ]; then echo "== bench_recall"; grep -E "16 KiB \| 256 \||validation" "$out/bench_recall.md"; fi
exit "$status"
