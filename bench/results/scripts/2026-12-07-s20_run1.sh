#!/usr/bin/env bash
# session 20, device call 1: session 19's PDL bisect (a80e71a, main, the fused rows 4509974 side by
# side, as 2026-12-07-s19_next.sh does), then the first run of the GPU tensor-parallel ranks, then
# on an H200 the 32K prefill beside HF sdpa (issue 14), main's GPU tests whole, the staged attention's
# stall reasons, and the sanitizers of the fused build (last: slowest). Carry .devpack/bins.tar.xz (main at this commit) and .devpack/bisect.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/bisect.tar.xz -C $B
NCCL=$(ls /usr/local/cuda/lib64/libnccl.so.2 2>/dev/null || find / -name libnccl.so.2 -not -path '/proc/*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64${NCCL:+:$(dirname "$NCCL")}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; echo "nccl: ${NCCL:-none found}"
for w in wt-a80 wt-fused; do [ -e /work/$w ] || ln -s "$PWD" /work/$w; done
cp $B/test_cuda_engine $B/test_cuda_engine_main; cp $B/freekv $B/freekv_main
for v in a80 main fused; do
  echo "== $v"
  timeout 60 $B/test_cuda_engine_$v --gtest_filter='*CudaGraphs*:*ChunkedPrefill*' 2>&1 | grep -E "^\[  (PASSED|FAILED) |variant|NMSE|nmse" | head -6
  timeout 60 $B/freekv_$v bench --shape llama-3.1-8b -d 32768 -n 8 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
    -b 4 --kv-mode freekv 2> /dev/null | grep -E "^\| llama" | cut -d'|' -f3,5,7,10-15
done
echo "== fused, --no-pdl"
timeout 60 $B/freekv_fused bench --shape llama-3.1-8b -d 32768 -n 8 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
  -b 4 --kv-mode freekv --no-pdl 2> /dev/null | grep -E "^\| llama" | cut -d'|' -f3,5,7,10-15
echo "bisect done at ${SECONDS} s"
timeout 150 $B/test_cuda_tensor_parallel 2>&1 | grep -E "^\[  |Failure|Expected|Which|actual|Skipped|nccl|NCCL|error" | head -40
echo "tensor parallel done at ${SECONDS} s"
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then  # issue 14's H200 cell: 32K prefill beside HF sdpa
  P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
  timeout 80 $B/freekv bench $P > $OUT/prefill.jsonl 2> /dev/null; echo "prefill rc $?"
  grep -oE '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
  timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> /dev/null; echo "hf rc $?"; cat $OUT/hf.jsonl
  echo "h200 prefill done at ${SECONDS} s"
fi
timeout 120 $B/test_cuda_engine 2>&1 | grep -E "^\[  (PASSED|FAILED|  OK) |Failure|Expected|Which|differ" | head -24
timeout 90 $B/test_cuda_ops 2>&1 | grep -E "^\[  (PASSED|FAILED) |Failure|Expected|Which" | head -8
echo "main tests done at ${SECONDS} s"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
timeout 90 $NCU --clock-control none -k regex:staged --launch-skip 3 --launch-count 1 --section SpeedOfLight \
  --section WarpStateStats --section Occupancy --section LaunchStats $B/bench_decode_attention 2048 4 3 2>&1 | \
  grep -E "Duration|DRAM Throughput|Memory Throughput|Stall|Achieved Occupancy|Registers|Block Limit|Warp Cycles" | head -30
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck initcheck; do
  timeout 100 $CS --tool $tool --print-limit 5 $B/test_cuda_engine_fused --gtest_filter='*CudaGraphs*' 2>&1 | \
    grep -E "ERROR SUMMARY|Invalid|Uninitialized|at 0x|by thread|PASSED|FAILED" | head -10
done
echo "done at ${SECONDS} s"
