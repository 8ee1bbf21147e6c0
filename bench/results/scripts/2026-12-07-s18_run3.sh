#!/usr/bin/env bash
# session 18, run 3 (issue 16): the decode attention's split-K target defaults to one full wave
# (cuda::attention_pages_wave); the defaults at 32K b1/b4 in every mode with the memory-floor line;
# the op and engine tests of the new defaults; bench_decode_attention while time is left (the device
# budget left for this call was ~300 s). Test summaries print last. Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/machine.txt
S="--shape llama-3.1-8b -d 32768 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda -b 1,4"
timeout 130 $B/freekv bench $S --kv-mode budget-only,full,freekv > $OUT/decode.md 2> $OUT/decode.log; echo "decode rc $?"
grep -E "^\| llama" $OUT/decode.md | cut -d'|' -f3,5,7,10-13 | head -6; grep -E "Memory floor|Host issue" $OUT/decode.md
grep -E "decode GEMV|gpu tuning" $OUT/decode.log | cut -c1-400
echo "benches done at ${SECONDS} s"
{ timeout 100 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*Gemv*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|variant" | head -12
  timeout 70 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|differ"
  FREEKV_REF_MODEL=tests/models/freekv-needle-12m timeout 50 $B/test_cuda_model --gtest_filter='*FullMatches*:*FullInF32*:*Dense*:*DeviceTopK*' 2>&1 \
    | grep -E "FAIL|PASSED|Failure|Expected|Which"; } 2>&1 > $OUT/tests.log
echo "tests done at ${SECONDS} s"
if [ $SECONDS -lt 200 ]; then
  timeout 50 $B/bench_decode_attention 2048,32768 1,4 10 > $OUT/attn.md 2>&1; echo "bench_decode_attention rc $?"; grep -E "^\| [0-9]" $OUT/attn.md | head -20
fi
cat $OUT/tests.log
