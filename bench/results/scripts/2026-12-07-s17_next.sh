#!/usr/bin/env bash
# session-17 script for the next session's first device call (issue 16), all written and built in session 17, not
# run: the staged bf16 decode attention (--attn-staged), bf16 GEMV inputs written beside the fp32 ones, the decode
# step replayed from CUDA graphs (--cuda-graphs) and the GEMVs as programmatic dependent launches (--pdl).
# In order: op tests; engine tests (CudaGraphsReplayTheSameLogits) and needle-model tests; memcheck and racecheck
# of the staged kernel; bench_decode_attention (both bf16 kernels alone, validated, against the measured HBM rate);
# on an H200 the 32K prefill against the HF peer (issue 14); decode at 32K b1/b4 with each addition in turn (freekv
# beside where graphs do not apply) with the bench's memory-floor line; ncu of the staged kernel while time is left.
# Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current --format=csv,noheader | tee $OUT/machine.txt
timeout 150 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*Elementwise*:*Gemv*:*RopeAppend*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|rror|seq |split|rows" | head -12
{ timeout 90 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|differ"
  FREEKV_REF_MODEL=tests/models/freekv-needle-12m timeout 60 $B/test_cuda_model --gtest_filter='*FullMatches*:*FullInF32*:*Dense*:*DeviceTopK*' 2>&1 \
    | grep -E "FAIL|PASSED|Failure|Expected|Which"; } 2>&1 | tee $OUT/tests.log
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck; do
  timeout 150 $SAN --tool $tool --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*DecodeAttentionStaged*' > $OUT/san-$tool.log 2>&1; echo "$tool rc $?"; tail -1 $OUT/san-$tool.log
done
timeout 150 $B/bench_decode_attention 2048,32768 1,4 20 > $OUT/attn.md 2>&1; echo "bench_decode_attention rc $?"; cat $OUT/attn.md
# issue 14 where the card is an H200: the 32K prefill against the HF peer in the same call
if grep -q H200 $OUT/machine.txt; then
  P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
  timeout 80 $B/freekv bench $P > $OUT/prefill.jsonl 2> $OUT/prefill.log; echo "prefill rc $?"
  grep -oE '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
  timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "hf rc $?"; cat $OUT/hf.jsonl
fi
S="--shape llama-3.1-8b -d 32768 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda -b 1,4"
for v in "128" "128 --attn-staged" "128 --attn-staged --cuda-graphs" "128 --attn-staged --cuda-graphs --pdl"; do
  [ $SECONDS -lt 520 ] || { echo "decode $v skipped at ${SECONDS} s"; continue; }
  f=$OUT/decode-$(echo $v | tr -d ' -').md
  modes=budget-only,full; case "$v" in *graphs*) ;; *) modes=budget-only,full,freekv;; esac  # graphs never apply to freekv
  timeout 110 $B/freekv bench $S --kv-mode $modes --attn-min-split-tokens $v > $f 2> $f.log; echo "decode floor $v rc $?"
  grep -E "^\| llama" $f | cut -d'|' -f3,5,7,10-13 | head -6; grep -E "Memory floor|Host issue" $f
done
# The optional parts run only while the call has time left (600 s per call).
if [ $SECONDS -lt 480 ]; then
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
timeout 150 $NCU --clock-control none -k regex:attention_pages_staged --launch-skip 40 -c 1 --section SpeedOfLight --section Occupancy \
  --section WarpStateStats --section MemoryWorkloadAnalysis --section SourceCounters \
  $B/freekv bench --shape llama-3.1-8b -d 32768 -n 4 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda -b 1 \
  --kv-mode full --attn-staged --breakdown-steps 0 > $OUT/ncu.txt 2>&1; echo "ncu rc $?"
grep -E "Duration|DRAM Throughput|Achieved Occupancy|Warp Cycles Per Issued|excessive" $OUT/ncu.txt | cut -c1-160 | head
else echo "ncu skipped at ${SECONDS} s"; fi
