#!/usr/bin/env bash
# Carry .devpack/bins.tar.xz and .devpack/eval_wp_tail.txt only: with tests/models/freekv-needle-12m in the tree,
# the reference model (ref.tar.xz, 40 MB) no longer fits the 64 MiB a call carries; its GPU tests need a call of their own.
# session-15 device run 1: session 14's built-but-unrun work: op/engine tests (bf16 flash output, misaligned K/V
# refused, WhereTheInstallRunsChangesNoOutput), memcheck on the install-placement test, bench_decode_gemv (issue 16's
# variant table), the 32K warm prefill with --prefill-install-ctas 0/2/4 and --no-prefill-install-beside, the HF peer
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
{ timeout 100 $B/test_cuda_ops 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|rror" | head -40
  timeout 120 $B/test_cuda_engine 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which"
  timeout 90 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_engine --gtest_filter='*WhereTheInstallRuns*' 2>&1 | tail -2
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 90 $B/bench_decode_gemv 1,4 40 > $OUT/gemv.md 2>&1; echo "gemv rc $?"; cat $OUT/gemv.md
S="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json"
for v in "--prefill-install-ctas 0" "--prefill-install-ctas 2" "--prefill-install-ctas 4" "--no-prefill-install-beside"; do
  timeout 60 $B/freekv bench $S $v >> $OUT/engine.jsonl 2>> $OUT/engine.log; echo "$v rc $?"
done
grep -o '"prefill_tokens_per_s":[0-9.]*\|"prefill_install_beside":[a-z]*\|"prefill_install_ctas":[0-9]*' $OUT/engine.jsonl | paste - - -
grep -i "error" $OUT/engine.log | head -3
timeout 80 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 2 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "hf rc $?"; cat $OUT/hf.jsonl
