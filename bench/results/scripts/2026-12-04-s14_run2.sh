#!/usr/bin/env bash
# session-14 device run 2: wgmma flash prefill with warpgroup ping-pong: op tests (+memcheck, racecheck), kernel bench, ncu at 32K, engine prefill 8K/32K/128K, HF peer 32K/128K
B=/tmp/b; mkdir -p $B /tmp/ref && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/ref.tar.xz -C /tmp/ref
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
free -g >> $OUT/machine.txt
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
{ timeout 60 $B/test_cuda_ops --gtest_filter='*Flash*:*Prefill*' 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|wgmma|mma.sync|non-finite" | head -40
  timeout 90 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*FlashPrefill*' 2>&1 | tail -2
  timeout 90 $SAN --tool racecheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*FlashPrefill*' 2>&1 | tail -2
  timeout 90 $SAN --tool synccheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*FlashPrefill*' 2>&1 | tail -2
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 120 $B/bench_prefill_attention 8192,32768 > $OUT/kernel.md 2>&1; echo "rc $?"; grep -E "wgmma|32 rows" $OUT/kernel.md
timeout 120 $NCU --clock-control none -k regex:flash_prefill_wgmma --launch-skip 1 -c 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
  $B/bench_prefill_attention 32768 > $OUT/ncu32k.txt 2>&1; echo "ncu rc $?"; grep -E "Duration|Throughput|SM Busy|Issue Slots|Pipe|Executed Ipc" $OUT/ncu32k.txt | head -20
timeout 200 $B/freekv bench --shape llama-3.1-8b -d 8192,32768,131000 -b 1 -n 4 -r 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json > $OUT/engine.jsonl 2> $OUT/engine.log
echo "rc $?"; cut -c1-700 $OUT/engine.jsonl; tail -3 $OUT/engine.log | cut -c1-300
timeout 150 python3 scripts/hf_prefill_peer.py --lengths 32768,131072 --reps 1 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "rc $?"; cat $OUT/hf.jsonl; tail -2 $OUT/hf.log
