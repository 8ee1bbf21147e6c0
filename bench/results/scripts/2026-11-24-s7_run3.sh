#!/usr/bin/env bash
# session 7, run 3: background gather thread blocks against the step's GEMMs (bench_recall_overlap)
# and in the engine (freekv:corr-off at 32K, batch 1 and 4, FREEKV_BG_GATHER_CTAS 6/8/12).
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin; tar -xJf $B/bins.tar.xz -C $B
SECONDS=0
$B/bench_recall_overlap 1,4 24 2>&1 | tee $OUT/overlap.md; echo "t=$SECONDS"
show() { python3 -c "
import json,sys
for l in open(sys.argv[1]):
    l=l.strip()
    if not l.startswith('{'): continue
    r=json.loads(l)
    print(sys.argv[2], {k:r.get(k) for k in ('kv_mode','batch','step_ms','floor_ratio','select_ms','recall_wait_ms','attention_ms','rest_ms','recall_gbps')})
" $1 "$2"; }
args="--shape llama-3.1-8b -d 32768 -n 128 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda -o json"
$B/freekv bench $args -b 1,4 --kv-mode budget-only > $OUT/floor.json 2>/dev/null; show $OUT/floor.json floor; echo "t=$SECONDS"
for c in 6 8 12; do
FREEKV_BG_GATHER_CTAS=$c $B/freekv bench $args -b 1,4 --kv-mode freekv:corr-off > $OUT/ctas$c.json 2>/dev/null; show $OUT/ctas$c.json ctas$c; echo "t=$SECONDS"
done
