#!/usr/bin/env bash
# session-17 device run 4 (issue 16, then issue 14 on an H200): the bf16 decode attention that issues a whole tile's
# K and V loads before using them (head_dim 64/128, groups <= 8; the generic kernel for the rest). Op tests (both
# kernels: f32, head_dim 96 and group 16 take the generic one) + memcheck; the measured HBM bandwidth; decode at 32K
# b1/b4 budget-only/full with split floor 128; on an H200 the 32K prefill against the HF peer. Also the
# gate and up weights fused into one matrix (one decode GEMV per row): engine and needle-model tests first.
# Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader | tee $OUT/machine.txt
timeout 100 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*RopeAppend*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|rror|seq " | head -10
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
timeout 120 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*RopeAppend*' > $OUT/san.log 2>&1; echo "memcheck rc $?"; tail -1 $OUT/san.log
{ timeout 60 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which"
  FREEKV_REF_MODEL=tests/models/freekv-needle-12m timeout 60 $B/test_cuda_model --gtest_filter='*FullMatches*:*FullInF32*:*Dense*:*DeviceTopK*' 2>&1 \
    | grep -E "FAIL|PASSED|Failure|Expected|Which"; } 2>&1 | tee $OUT/tests.log
timeout 60 $B/bench_decode_gemv 1 3 2>&1 | grep -m1 "measured HBM"
for ms in 128; do
  S="--shape llama-3.1-8b -d 32768 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --attn-min-split-tokens $ms"
  timeout 120 $B/freekv bench $S -b 1,4 --kv-mode budget-only,full > $OUT/decode-$ms.md 2> $OUT/decode-$ms.log; echo "decode floor $ms rc $?"
  grep -E "^\| llama" $OUT/decode-$ms.md | cut -d'|' -f3,5,7,10-13 | head -6; grep -E "Host issue" $OUT/decode-$ms.md
done
if grep -q H200 $OUT/machine.txt; then
  P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
  timeout 90 $B/freekv bench $P > $OUT/prefill.jsonl 2> $OUT/prefill.log; echo "prefill rc $?"
  grep -oE '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
  timeout 120 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "hf rc $?"; cat $OUT/hf.jsonl
fi
