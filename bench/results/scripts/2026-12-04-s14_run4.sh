#!/usr/bin/env bash
# session-14 device run 4: wgmma flash prefill, TMA producer warpgroup (setmaxnreg), 3 stages, S(t) issued with P(t-1)V(t-1): op tests (+sanitizers), kernel bench + ncu, engine prefill 8K/32K/128K
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
timeout 120 $NCU --clock-control none -k regex:flash_prefill_wgmma --launch-skip 1 -c 1 --section SpeedOfLight --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active \
  $B/bench_prefill_attention 32768 > $OUT/ncu32k.txt 2>&1; echo "ncu rc $?"; grep -E "Duration|SM Busy|Issue Slots|gmma|pipe_xu|Compute" $OUT/ncu32k.txt | head -20
