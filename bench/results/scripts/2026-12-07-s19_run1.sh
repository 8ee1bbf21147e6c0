#!/usr/bin/env bash
# session 19, run 1 (issue 16): decode's fused q|k|v and gate|up GEMVs at every GEMV batch (rows
# interleaved, read by rope_append and silu_mul_rows), built here, not yet run on a GPU:
# 1. the op tests (all of test_cuda_ops: rope_append with fused rows, silu_mul_rows, the fused split-K
#    combine of session 18, attention, flash prefill, GEMVs) and the engine tests;
# 2. decode at 32K b1/b4, budget-only and full, the previous commit's binary (freekv_prev, 7798e81:
#    separate q, k, v and gate, up GEMVs for 2-8 rows) beside this one, same machine, one after the other;
# 3. compute-sanitizer memcheck of the changed and new kernels' op tests; Nsight Compute's device time per kernel over one measured budget-only b4 step (this build);
# 4. on an H200 only: the 32K prefill against the HF sdpa peer (issue 14);
# 5. decode with --attn-fused-combine (session 18's, off by default) and the freekv mode.
# Carry .devpack/bins.tar.xz and .devpack/prev.tar.xz (freekv_prev).
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/prev.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 $B/test_cuda_ops 2>&1 | tee $OUT/tests.txt | grep -E "FAIL|PASSED|Failure|Expected|Which" | head -12
timeout 80 $B/test_cuda_engine 2>&1 | tee -a $OUT/tests.txt | grep -E "FAIL|PASSED|Failure|Expected|Which|differ" | head -12
echo "tests done at ${SECONDS} s"
D="--shape llama-3.1-8b -d 32768 -n 32 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda -b 1,4"
for bin in freekv_prev freekv; do
  timeout 90 $B/$bin bench $D --kv-mode budget-only,full > $OUT/decode-$bin.md 2> /tmp/decode-$bin.log; echo "$bin rc $?"
  grep -E "^\| llama" $OUT/decode-$bin.md | cut -d'|' -f3,5,7,10-13; grep -E "Memory floor" $OUT/decode-$bin.md
done
grep -E "decode GEMV" /tmp/decode-freekv.log | cut -c1-900
echo "decode done at ${SECONDS} s"
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then  # issue 14's H200 cell: 32K prefill beside HF sdpa
  P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
  timeout 80 $B/freekv bench $P > $OUT/prefill.jsonl 2> /dev/null; echo "prefill rc $?"
  grep -oE '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
  timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> /dev/null; echo "hf rc $?"; cat $OUT/hf.jsonl
fi
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
timeout 100 $CS --tool memcheck $B/test_cuda_ops --gtest_filter='*RopeAppend*:*ElementwiseAndNorms*:*DecodeAttention*' 2>&1 | \
  grep -E "ERROR SUMMARY|PASSED|FAIL" | head -4
echo "memcheck done at ${SECONDS} s"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
timeout 120 $NCU --clock-control none --metrics gpu__time_duration.sum,launch__grid_size -k regex:. --profile-from-start off --csv \
  $B/freekv bench --shape llama-3.1-8b -d 32768 -b 4 -r 1 -n 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 \
  --kv-mode budget-only --device cuda --no-progress > /tmp/prof4.csv 2> /dev/null; echo "ncu b4 rc $?"
python3 scripts/ncu_kernel_table.py /tmp/prof4.csv > $OUT/profile-b4.md; head -30 $OUT/profile-b4.md
echo "profile done at ${SECONDS} s"
if [ $SECONDS -lt 470 ]; then
  timeout 90 $B/freekv bench $D --kv-mode budget-only,full --attn-fused-combine > $OUT/decode-fused.md 2> /dev/null; echo "fused rc $?"
  grep -E "^\| llama" $OUT/decode-fused.md | cut -d'|' -f3,5,7,10-13
fi
if [ $SECONDS -lt 530 ]; then
  timeout 65 $B/freekv bench $D --kv-mode freekv > $OUT/decode-freekv-mode.md 2> /dev/null; echo "freekv mode rc $?"
  grep -E "^\| llama" $OUT/decode-freekv-mode.md | cut -d'|' -f3,5,7,10-13
fi
echo "done at ${SECONDS} s"
