#!/usr/bin/env bash
# session-17 device run 2 (issue 16): the tiled decode attention (a lane per token while scoring, no shuffles per
# token). Its op test (page 16 and 32, head_dim 64/96/128, bf16/f32, group 1..16, splits 1..256) and memcheck first;
# then the decode step at 32K, batch 1 and 4, budget-only and full, with split-K token floors 32 and 128; then the
# engine suite and the needle-model suite (RecallImpls: f32 engines no longer set cuBLAS's SM target).
# Carry .devpack/bins.tar.xz and .devpack/eval_wp_tail.txt.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader | tee $OUT/machine.txt
timeout 100 $B/test_cuda_ops --gtest_filter='*DecodeAttention*' > $OUT/ops.log 2>&1; echo "ops rc $?"
grep -E "FAIL|PASSED|Failure|Expected|Which|rror|seq " $OUT/ops.log | head -20
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
timeout 150 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*DecodeAttention*' > $OUT/san.log 2>&1; echo "memcheck rc $?"; tail -2 $OUT/san.log
for ms in 32 128; do
  S="--shape llama-3.1-8b -d 32768 -b 1,4 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only,full --attn-min-split-tokens $ms"
  timeout 120 $B/freekv bench $S > $OUT/decode-$ms.md 2> $OUT/decode-$ms.log; echo "decode split-floor $ms rc $?"
  grep -E "^\| llama|Host issue" $OUT/decode-$ms.md | cut -d'|' -f3,5,7,10-13 | head -6; grep -E "Host issue" $OUT/decode-$ms.md; grep -E "rror" $OUT/decode-$ms.log | head -3
done
{ timeout 60 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which"
  FREEKV_REF_MODEL=tests/models/freekv-needle-12m FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 150 $B/test_cuda_model 2>&1 \
    | grep -E "FAIL|PASSED|Failure|Expected|Which|differ"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
