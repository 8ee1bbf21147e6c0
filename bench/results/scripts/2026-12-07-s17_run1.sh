#!/usr/bin/env bash
# session-17 device run 1 (issue 16 first, then issue 14 where the card is an H200): session 16's unrun GEMV work.
# 1. the new GEMV kernels against the CPU reference, then memcheck on them;
# 2. the decode step at 32K, batch 1 and 4, budget-only / full / freekv (the chosen-GEMV table the engine prints);
# 2b. bench_decode_gemv for the measured HBM bandwidth (the floor) and the variant table;
# 3. the engine suite and the needle-model suite (RecallImpls names its first differing forward);
# 4. on an H200 only: the 32K prefill against the HF peer (issue 14's <= 1.3 s).
# Outputs land under $OUT as they come. Carry .devpack/bins.tar.xz and .devpack/eval_wp_tail.txt.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader | tee $OUT/machine.txt
timeout 80 $B/test_cuda_ops --gtest_filter='*Gemv*:*Matmul*' > $OUT/ops.log 2>&1; echo "ops rc $?"
grep -E "FAIL|PASSED|Failure|Expected|Which|rror" $OUT/ops.log | head -20
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
timeout 100 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*Gemv*' > $OUT/san.log 2>&1; echo "memcheck rc $?"; tail -2 $OUT/san.log
S="--shape llama-3.1-8b -d 32768 -b 1,4 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only,full,freekv"
timeout 170 $B/freekv bench $S > $OUT/decode.md 2> $OUT/decode.log; echo "decode rc $?"
grep -E "^\| (budget-only|full|freekv) |Host issue|bandwidth" $OUT/decode.md | head -12; grep -E "GEMV|rror" $OUT/decode.log | cut -c1-1200 | head -20
timeout 120 $B/bench_decode_gemv 1,4 10 > $OUT/gemv.md 2>&1; echo "gemv rc $?"; grep -iE "bandwidth|GB/s" $OUT/gemv.md | head -3
{ timeout 60 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which"
  FREEKV_REF_MODEL=tests/models/freekv-needle-12m FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 150 $B/test_cuda_model 2>&1 \
    | grep -E "FAIL|PASSED|Failure|Expected|Which|differ"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
if grep -q H200 $OUT/machine.txt; then
  P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
  timeout 90 $B/freekv bench $P > $OUT/prefill.jsonl 2> $OUT/prefill.log; echo "prefill rc $?"
  grep -o '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
  timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "hf rc $?"; cat $OUT/hf.jsonl
fi
