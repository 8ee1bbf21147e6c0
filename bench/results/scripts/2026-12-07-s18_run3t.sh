#!/usr/bin/env bash
# session 18, run 3 (short: ~300 s of device time were left): the GPU tests of the final defaults
# (one-wave split-K, mma GEMV as the measured baseline for 2-8 rows, graphs and PDL on), summaries only;
# then budget-only and full at 32K b1/b4 with the defaults while time is left. Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 45 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|differ"
timeout 45 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*MeasuredGemv*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which" | head -8
echo "tests done at ${SECONDS} s"
if [ $SECONDS -lt 100 ]; then
  timeout 80 $B/freekv bench --shape llama-3.1-8b -d 32768 -n 32 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
    -b 1,4 --kv-mode budget-only,full > $OUT/decode.md 2> $OUT/decode.log; echo "decode rc $?"
  grep -E "^\| llama" $OUT/decode.md | cut -d'|' -f3,5,7,10-13; grep -E "Memory floor" $OUT/decode.md
  grep -E "decode GEMV" $OUT/decode.log | cut -c1-900
fi
echo "done at ${SECONDS} s"
