#!/usr/bin/env bash
# session-14 device run 3: wgmma flash prefill fed by TMA from a producer warp: op tests (+sanitizers), kernel bench, engine prefill 8K/32K/128K; per-kernel ncu of the 32K engine prefill (first layers)
B=/tmp/b; mkdir -p $B /tmp/ref && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/ref.tar.xz -C /tmp/ref
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
{ timeout 60 $B/test_cuda_ops --gtest_filter='*Flash*:*Prefill*' 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|wgmma|mma.sync|non-finite|rror" | head -40
  timeout 90 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*FlashPrefill*' 2>&1 | tail -2
  timeout 90 $SAN --tool racecheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*FlashPrefill*' 2>&1 | tail -2
  timeout 90 $SAN --tool synccheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*FlashPrefill*' 2>&1 | tail -2
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 100 $B/bench_prefill_attention 8192,32768 > $OUT/kernel.md 2>&1; echo "rc $?"; grep -E "wgmma|32 rows|MISMATCH|rror" $OUT/kernel.md
timeout 200 $B/freekv bench --shape llama-3.1-8b -d 8192,32768,131000 -b 1 -n 4 -r 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json > $OUT/engine.jsonl 2> $OUT/engine.log
echo "rc $?"; grep -o '"depth":[0-9]*\|"prefill_tokens_per_s":[0-9.]*\|"prefill_tflops":[0-9.]*' $OUT/engine.jsonl | paste - - -; tail -2 $OUT/engine.log | cut -c1-300
timeout 150 $NCU --clock-control none --metrics gpu__time_duration.sum -k 'regex:^(?!fill).*' -c 100 --csv --page raw \
  $B/freekv bench --shape llama-3.1-8b -d 32768 -b 1 -n 1 -r 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda > $OUT/ncu_engine.csv 2> $OUT/ncu_engine.log
echo "ncu rc $?"; python3 .devpack/agg.py $OUT/ncu_engine.csv | tee $OUT/ncu_engine.md; tail -2 $OUT/ncu_engine.log
