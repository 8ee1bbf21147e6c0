#!/usr/bin/env bash
# session 22, device call 1 (prepared in session 21): the tensor-parallel bench test (built, not run),
# every GPU suite whole on main (fused rows + the PDL fix), a GPU tensor-parallel bench on one GPU
# through the CLI, the decode table at 32K for the README (this card, every default), memcheck of
# the engine tests, and on an H200 the 32K prefill beside HF. Carry .devpack/bins.tar.xz (main's
# cuda-release build, scripts/pack_device_bins.sh).
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
timeout 200 $B/freekv bench --shape llama-3.1-8b -d 32768 -n 32 -r 2 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
  -b 1,4 --kv-mode budget-only,full,freekv > $OUT/decode.txt 2> /dev/null; echo "decode rc $?"
grep -E "^\| llama|Memory floor" $OUT/decode.txt | cut -d'|' -f3,5,7,8,9,10,11,12,13,14,15
echo "decode done at ${SECONDS} s"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
timeout 100 $CS --tool memcheck --print-limit 5 $B/test_cuda_engine --gtest_filter='*CudaGraphs*:*ChunkedPrefill*' 2>&1 | \
  grep -E "ERROR SUMMARY|Invalid|at 0x|PASSED|FAILED" | head -8
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
  timeout 80 $B/freekv bench $P > $OUT/prefill.jsonl 2> /dev/null; grep -oE '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
  timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> /dev/null; cat $OUT/hf.jsonl
fi
echo "done at ${SECONDS} s"
