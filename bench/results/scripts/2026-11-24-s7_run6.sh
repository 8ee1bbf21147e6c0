#!/usr/bin/env bash
# session 7, run 6: thread blocks of the synchronous gather (freekv:no-spec, recall GB/s in the loop)
# and of the background gather (12 vs 16, three repetitions of 128 steps) at 32K.
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin; tar -xJf $B/bins.tar.xz -C $B
SECONDS=0
show() { python3 -c "
import json,sys
for l in open(sys.argv[1]):
    l=l.strip()
    if not l.startswith('{'): continue
    r=json.loads(l)
    print(sys.argv[2], {k:r.get(k) for k in ('kv_mode','batch','step_ms','step_ms_std','floor_ratio','select_ms','recall_wait_ms','attention_ms','rest_ms','recall_gbps','recall_sync_ms')})
" $1 "$2"; }
args="--shape llama-3.1-8b -d 32768 -n 128 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda -o json -b 1,4"
for c in 32 64 128; do
FREEKV_SYNC_GATHER_CTAS=$c $B/freekv bench $args -r 1 --kv-mode freekv:no-spec > $OUT/sync$c.json 2>/dev/null; show $OUT/sync$c.json sync$c; echo "t=$SECONDS"
done
$B/freekv bench $args -r 3 --kv-mode budget-only,freekv:corr-off > $OUT/bg16.json 2>/dev/null; show $OUT/bg16.json bg16; echo "t=$SECONDS"
FREEKV_BG_GATHER_CTAS=12 $B/freekv bench $args -r 3 --kv-mode budget-only,freekv:corr-off > $OUT/bg12.json 2>/dev/null; show $OUT/bg12.json bg12; echo "t=$SECONDS"
