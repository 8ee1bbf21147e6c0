#!/usr/bin/env bash
# session 7, run 2: what each recall method takes from a decode step's GEMMs (bench_recall_overlap),
# then the engine's dma background recall at 32K, batch 1 and 4, for reference.
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
args="--shape llama-3.1-8b -d 32768 -n 128 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only,freekv:corr-off -o json"
$B/freekv bench $args -b 1,4 --recall-impl dma > $OUT/dma.json 2>/dev/null; show $OUT/dma.json dma; echo "t=$SECONDS"
