#!/usr/bin/env bash
# session 18, run 3 (short: ~100 s of device time were left): the GPU tests of the final defaults
# (one-wave split-K, mma GEMV choices, graphs and PDL on), summaries only. Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 45 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|differ"
timeout 45 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*MeasuredGemv*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which" | head -8
echo "done at ${SECONDS} s"
