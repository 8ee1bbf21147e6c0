#!/usr/bin/env bash
# session-16 device run 2 (issue 16): the measured per-shape decode GEMV choice and the residual adds folded into the o and
# down products. The new kernels against the CPU reference first; then the decode step at 32K, batch 1 and 4, before
# (bins_base: baf6a90) and after, in the same call; then the engine and needle-model tests (RecallImpls with the first
# differing forward). Outputs land under $OUT as they come, so a call cut short still returns what ran.
# Carry .devpack/bins.tar.xz, .devpack/bins_base.tar.xz, .devpack/eval_wp_tail.txt.
B=/tmp/b; A=/tmp/a; mkdir -p $B $A && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/bins_base.tar.xz -C $A
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
timeout 80 $B/test_cuda_ops --gtest_filter='*Gemv*:*Matmul*' > $OUT/ops.log 2>&1; echo "ops rc $?"
grep -E "OK|FAIL|PASSED|Failure|Expected|Which|rror|rows by" $OUT/ops.log | head -30
S="--shape llama-3.1-8b -d 32768 -b 1,4 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only,full"
for v in base new; do
  D=$([ $v = base ] && echo $A || echo $B)
  LD_LIBRARY_PATH=$D:/usr/local/cuda/lib64 timeout 100 $D/freekv bench $S > $OUT/decode-$v.md 2> $OUT/decode-$v.log; echo "$v rc $?"
  grep -E "^\| (budget-only|full) |Host issue" $OUT/decode-$v.md | head -9; grep -E "decode GEMV|rror" $OUT/decode-$v.log | cut -c1-900
done
{ timeout 40 $B/test_cuda_engine 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which"
  FREEKV_REF_MODEL=tests/models/freekv-needle-12m FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 60 $B/test_cuda_model \
    --gtest_filter='*FullMatches*:*FullInF32*:*Dense*:*RecallImpls*' 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|differ"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
