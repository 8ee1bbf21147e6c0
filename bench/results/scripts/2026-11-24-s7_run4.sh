#!/usr/bin/env bash
# session 7, run 4: where batch 4's extra "rest" comes from: freekv:corr-off with the background
# recall cut short (FREEKV_DIAG_BACKGROUND=none: no background work; =select: selection, no gather).
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
    print(sys.argv[2], {k:r.get(k) for k in ('kv_mode','batch','step_ms','floor_ratio','select_ms','recall_wait_ms','attention_ms','rest_ms','recall_gbps')})
" $1 "$2"; }
args="--shape llama-3.1-8b -d 32768 -n 128 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda -o json -b 1,4"
$B/freekv bench $args --kv-mode budget-only,freekv:corr-off > $OUT/default.json 2>/dev/null; show $OUT/default.json default; echo "t=$SECONDS"
for d in none select; do
FREEKV_DIAG_BACKGROUND=$d $B/freekv bench $args --kv-mode freekv:corr-off > $OUT/diag_$d.json 2>$OUT/diag_$d.err; show $OUT/diag_$d.json diag-$d; echo "t=$SECONDS"
done
FREEKV_DIAG_BACKGROUND=none FREEKV_GEMM_SM_RESERVE=0 $B/freekv bench $args --kv-mode freekv:corr-off > $OUT/diag_none_nores.json 2>/dev/null; show $OUT/diag_none_nores.json diag-none-no-sm-target; echo "t=$SECONDS"
head -3 $OUT/diag_none.err
