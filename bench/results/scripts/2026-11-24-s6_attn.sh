#!/usr/bin/env bash
# session 6: attention kernel launch bounds + min split tokens
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin
ncu=$(ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
$B/test_cuda_ops > $OUT/ops.log 2>&1; echo "test_cuda_ops exit $?"; grep -E "PASSED|FAILED" $OUT/ops.log
args="--shape llama-3.1-8b -d 32768 -b 1,4 -n 128 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode full,budget-only,freekv:corr-off"
for ms in 64 16 32; do
  echo "== min split $ms"
  FREEKV_ATTN_MIN_SPLIT_TOKENS=$ms $B/freekv bench $args -o json > $OUT/bench_ms$ms.json 2>$OUT/bench_ms$ms.log
  echo exit $?
  python3 -c "
import json,sys
for l in open(sys.argv[1]):
    l=l.strip()
    if not l.startswith('{'): continue
    r=json.loads(l)
    print({k:r.get(k) for k in ('kv_mode','batch','step_ms','floor_ratio','select_ms','attention_ms','rest_ms','recall_gbps')})
" $OUT/bench_ms$ms.json
done
for mode in full budget-only; do
  echo "== ncu $mode"
  timeout 120 $ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats -k regex:attention_pages_kernel --launch-skip 100 --launch-count 1 $B/freekv bench --shape llama-3.1-8b -d 32768 -b 1 -n 8 -r 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode $mode --device cuda 2>&1 | grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Grid Size|Waves" 
done
