#!/usr/bin/env bash
# session 18, run 2 (issue 16): the new defaults (staged attention only, CUDA graphs and PDL on) and the
# tensor-core GEMV rewritten (bf16 x, 8 warps, 16 or 32 rows per warp) as a measured choice.
# In order: op tests (attention, GEMVs) and engine tests; bench_decode_gemv (cuBLAS, block-k on bf16 x,
# mma); decode at 32K b1/b4 with the defaults (the start-up GEMV table in the log); bench_decode_attention's
# split-target sweep; decode with --attn-split-blocks 396; memcheck of the GEMV test; the H200 prefill when
# the card is an H200. Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/machine.txt
{ timeout 200 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*Gemv*:*Elementwise*:*RopeAppend*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|variant|rows" | head -20
  timeout 90 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|differ"
  FREEKV_REF_MODEL=tests/models/freekv-needle-12m timeout 60 $B/test_cuda_model --gtest_filter='*FullMatches*:*FullInF32*:*Dense*:*DeviceTopK*' 2>&1 \
    | grep -E "FAIL|PASSED|Failure|Expected|Which"; } 2>&1 | tee $OUT/tests.log
echo "tests done at ${SECONDS} s"
timeout 120 $B/bench_decode_gemv 1,4 20 > $OUT/gemv.md 2>&1; echo "bench_decode_gemv rc $?"
grep -E "measured HBM|cuBLAS|bf16 x|MISMATCH" $OUT/gemv.md | cut -d'|' -f2-8
S="--shape llama-3.1-8b -d 32768 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda -b 1,4"
run_decode() {  # name, modes, extra flags
  [ $SECONDS -lt 470 ] || { echo "decode $1 skipped at ${SECONDS} s"; return; }
  timeout 120 $B/freekv bench $S --kv-mode $2 $3 > $OUT/decode-$1.md 2> $OUT/decode-$1.log; echo "decode $1 rc $?"
  grep -E "^\| llama" $OUT/decode-$1.md | cut -d'|' -f3,5,7,10-13 | head -6; grep -E "Memory floor|Host issue" $OUT/decode-$1.md
  grep -E "decode GEMV" $OUT/decode-$1.log | cut -c1-900
}
run_decode defaults budget-only,full,freekv ""
timeout 100 $B/bench_decode_attention 2048,32768 1,4 20 > $OUT/attn.md 2>&1; echo "bench_decode_attention rc $?"; cat $OUT/attn.md
run_decode blocks396 budget-only,full "--attn-split-blocks 396"
if [ $SECONDS -lt 500 ]; then
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
timeout $((580 - SECONDS)) $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*DecodeGemvs*:*GemvAccumulate*' > $OUT/san-memcheck.log 2>&1
echo "memcheck rc $?"; tail -1 $OUT/san-memcheck.log
else echo "memcheck skipped at ${SECONDS} s"; fi
