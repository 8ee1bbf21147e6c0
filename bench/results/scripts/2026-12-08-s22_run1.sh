#!/usr/bin/env bash
# session 22, device call 1 (prepared in session 21): the tensor-parallel bench test (built, not run),
# every GPU suite whole on main (fused rows + the PDL fix; the determinism table now has --attn-pdl),
# a GPU tensor-parallel bench on one GPU through the CLI, the decode attention alone with V in
# registers, --attn-pdl and --attn-v-registers against the default (budget-only 32K b1/b4), memcheck. Call 2 (s22_run2.sh): the decode table and the H200
# prefill. Carry .devpack/bins.tar.xz (main's cuda-release build, scripts/pack_device_bins.sh).
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
NCCL=$(ls /usr/lib/x86_64-linux-gnu/libnccl.so.2 /usr/local/cuda/lib64/libnccl.so.2 2>/dev/null | head -1)
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64${NCCL:+:$(dirname "$NCCL")}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 $B/test_cuda_tensor_parallel > $OUT/tp.txt 2>&1; grep -E "^\[  (PASSED|FAILED|     OK) |Failure|actual|Which" $OUT/tp.txt | head -12
timeout 150 $B/test_cuda_engine > $OUT/engine.txt 2>&1; grep -E "^\[  (PASSED|FAILED) |Failure|actual|runs differ from the serial run \(" $OUT/engine.txt | head -12
timeout 120 $B/test_cuda_ops > $OUT/ops.txt 2>&1; grep -E "^\[  (PASSED|FAILED) |Failure" $OUT/ops.txt | head -6
FREEKV_REF_MODEL=tests/models/freekv-needle-12m timeout 100 $B/test_cuda_model > $OUT/model.txt 2>&1; grep -E "^\[  (PASSED|FAILED) |Failure" $OUT/model.txt | head -6
echo "tests done at ${SECONDS} s"
timeout 90 $B/freekv bench --shape llama-3.1-8b -d 8192 -n 8 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
  -b 1 --kv-mode budget-only,freekv --tensor-parallel 2 --tp-gpus 0,0 > $OUT/bench_tp2.txt 2> $OUT/bench_tp2.err; echo "tp2 bench rc $?"
grep -E "^\| llama|tensor-parallel ranks" $OUT/bench_tp2.txt | cut -c1-220; tail -2 $OUT/bench_tp2.err
echo "tp bench done at ${SECONDS} s"
timeout 60 $B/bench_decode_attention 2048,32768 1,4 20 > $OUT/attention.txt 2>&1; grep -E "^\| (2048|32768) \| [14] \| [0-9]+(, [a-zA-Z ]+)? \|" $OUT/attention.txt | head -16
for extra in "" "--attn-pdl" "--attn-v-registers" "--attn-pdl --attn-v-registers" "" "--attn-pdl" "--attn-v-registers" "--attn-pdl --attn-v-registers"; do  # each twice
  echo "== budget-only ${extra:-default}"
  timeout 60 $B/freekv bench --shape llama-3.1-8b -d 32768 -n 32 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
    -b 1,4 --kv-mode budget-only $extra 2> /dev/null | grep -E "^\| llama" | cut -d"|" -f3,5,7,8,12,13
done
echo "attn-pdl done at ${SECONDS} s"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
timeout 100 $CS --tool memcheck --print-limit 5 $B/test_cuda_engine --gtest_filter='*CudaGraphs*:*ChunkedPrefill*' 2>&1 | \
  grep -E "ERROR SUMMARY|Invalid|at 0x|PASSED|FAILED" | head -8
echo "done at ${SECONDS} s"
