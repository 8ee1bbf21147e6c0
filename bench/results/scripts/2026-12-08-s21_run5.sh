#!/usr/bin/env bash
# session 21, device call 5 (little budget left): branch s21-fused-rows (the fused q|k|v and gate|up
# GEMV rows back on top of the PDL fix): the determinism table, graphs and chunked prefill, the fused
# ops, tensor parallelism. Carry .devpack/bins.tar.xz (this branch's cuda-release build).
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 15 $B/test_cuda_engine --gtest_filter='*RepeatedRuns*:*ChunkedPrefill*:*CudaGraphs*' --gtest_repeat=2 > $OUT/engine.txt 2>&1
grep -E "runs differ|^\[  (PASSED|FAILED|     OK) |actual|variant" $OUT/engine.txt | sed -E 's/\([0-9]+ ms\)//' | sort | uniq -c | grep -v " 0 of"
timeout 8 $B/test_cuda_ops --gtest_filter='*RopeAppend*:*Elementwise*:*GemvAccumulate*' 2>&1 | grep -E "^\[  (PASSED|FAILED) |Failure" | head -5
timeout 10 $B/test_cuda_tensor_parallel 2>&1 | grep -E "^\[  (PASSED|FAILED) |Failure|actual" | head -6
echo "done at ${SECONDS} s"
