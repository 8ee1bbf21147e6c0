#!/usr/bin/env bash
# session-18 script for the next session's first device call (issues 16 and 14), one call (<= 600 s):
# 1. where budget-only's batch-4 step (1.35x its floor) spends its time: Nsight Compute's device time per
#    kernel over exactly one measured step (the bench brackets its measured steps for a profiler started
#    with --profile-from-start off), at batch 4 and at batch 1 beside it (kernels serialized: the sums
#    are the step without overlap; compare them with the bench's own ms/step);
# 2. on an H200: the 32K prefill against the HF sdpa peer in the same call (issue 14: <= 1.3 s);
# 3. the fused split-K combine (PagesAttentionArgs::split_counters, built in session 18, not run, off in the
#    engine): its op test (bitwise against the combine kernel) and bench_decode_attention (wave with and
#    without it), test_cuda_engine (graphs + PDL + --attn-fused-combine bitwise against direct launches), and
#    decode with --attn-fused-combine beside the defaults; if it is faster, make it the default;
# 4. the decode defaults at 32K b1/b4 (every mode) on whatever card came, with the memory-floor line.
# Carry .devpack/bins.tar.xz (cmake --build --preset cuda-release && scripts/pack_device_bins.sh).
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/machine.txt
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
for b in 4 1; do
  timeout 150 $NCU --clock-control none --metrics gpu__time_duration.sum,launch__grid_size -k regex:. --profile-from-start off --csv \
    $B/freekv bench --shape llama-3.1-8b -d 32768 -b $b -r 1 -n 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 \
    --kv-mode budget-only --device cuda --no-progress > /tmp/prof$b.csv 2> /dev/null; echo "ncu b$b rc $?"
  python3 scripts/ncu_kernel_table.py /tmp/prof$b.csv > $OUT/profile-b$b.md; head -24 $OUT/profile-b$b.md
done
if grep -q H200 $OUT/machine.txt; then
  P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
  timeout 80 $B/freekv bench $P > $OUT/prefill.jsonl 2> $OUT/prefill.log; echo "prefill rc $?"
  grep -oE '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
  timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "hf rc $?"; cat $OUT/hf.jsonl
fi
timeout 100 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*FlashPrefill*:*Gemv*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|fused" | head -12
timeout 70 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|differ"
timeout 60 $B/bench_decode_attention 2048,32768 1,4 10 > $OUT/attn.md 2>&1; echo "bench_decode_attention rc $?"; grep -E "^\| [0-9]" $OUT/attn.md | head -30
if [ $SECONDS -lt 450 ]; then
  timeout 130 $B/freekv bench --shape llama-3.1-8b -d 32768 -n 32 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
    -b 1,4 --kv-mode budget-only,full,freekv > $OUT/decode.md 2> /dev/null; echo "decode rc $?"
  grep -E "^\| llama" $OUT/decode.md | cut -d'|' -f3,5,7,10-13; grep -E "Memory floor" $OUT/decode.md
fi
if [ $SECONDS -lt 500 ]; then
  timeout 90 $B/freekv bench --shape llama-3.1-8b -d 32768 -n 32 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
    -b 1,4 --kv-mode budget-only,full --attn-fused-combine > $OUT/decode-fused.md 2> /dev/null; echo "decode fused rc $?"
  grep -E "^\| llama" $OUT/decode-fused.md | cut -d'|' -f3,5,7,10-13; grep -E "Memory floor" $OUT/decode-fused.md
fi
