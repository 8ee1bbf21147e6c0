#!/usr/bin/env bash
# session 21, device call 3: the PDL race fixed? (the GEMVs read x through L2, __ldcg, instead of the
# read-only path). The determinism table, the chunked-prefill check repeated, the graphs test, the
# GEMV op tests, then budget-only decode before (prev) and after in the same call.
# Carry .devpack/bins.tar.xz (this commit) and .devpack/prev21.tar.xz (the commit before the fix).
B=/tmp/b; P=/tmp/p; mkdir -p $B $P && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/prev21.tar.xz -C $P
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 $B/test_cuda_engine --gtest_filter='*RepeatedRuns*:*ChunkedPrefill*:*CudaGraphs*' --gtest_repeat=4 > $OUT/engine.txt 2>&1
grep -E "runs differ|^\[  (PASSED|FAILED|     OK) |actual" $OUT/engine.txt | sed -E 's/\([0-9]+ ms\)//' | sort | uniq -c
echo "engine done at ${SECONDS} s"
timeout 120 $B/test_cuda_ops --gtest_filter='*Gemv*:*Matmul*' > $OUT/ops.txt 2>&1; grep -E "^\[  (PASSED|FAILED) |Failure" $OUT/ops.txt | head
echo "ops done at ${SECONDS} s"
for v in p b; do
  D=/tmp/$v; [ $v = p ] && echo "== before (prev)" || echo "== after"
  timeout 90 $D/freekv bench --shape llama-3.1-8b -d 32768 -n 24 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
    -b 1,4 --kv-mode budget-only 2> /dev/null | grep -E "^\| llama" | cut -d'|' -f3,5,7,8,10-12
done
echo "done at ${SECONDS} s"
