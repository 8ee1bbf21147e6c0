#!/usr/bin/env bash
# session 6, run 3: batch 4 beside the background gather: custom GEMV vs cuBLAS; launch-bound step of a tiny shape
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin
args="--shape llama-3.1-8b -d 32768 -b 4 -n 128 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only,freekv:corr-off -o json"
show() { python3 -c "
import json,sys
for l in open(sys.argv[1]):
    l=l.strip()
    if not l.startswith('{'): continue
    r=json.loads(l)
    print(sys.argv[2], {k:r.get(k) for k in ('kv_mode','batch','step_ms','floor_ratio','select_ms','attention_ms','rest_ms','recall_gbps')})
" $1 "$2"; }
$B/freekv bench $args > $OUT/b4_default.json 2>/dev/null; show $OUT/b4_default.json default
FREEKV_GEMV_MAX_ROWS=4 $B/freekv bench $args > $OUT/b4_gemv4.json 2>/dev/null; show $OUT/b4_gemv4.json gemv4
FREEKV_GEMM_SM_RESERVE=0 $B/freekv bench $args > $OUT/b4_noreserve.json 2>/dev/null; show $OUT/b4_noreserve.json no-sm-reserve
FREEKV_GEMV_MAX_ROWS=4 FREEKV_BG_GATHER_CTAS=8 $B/freekv bench $args > $OUT/b4_gemv4_cta8.json 2>/dev/null; show $OUT/b4_gemv4_cta8.json gemv4-cta8
for b in 1 4; do
$B/freekv bench --shape tiny -d 4096 -b $b -n 256 -r 1 --kv-budget 1024 --kv-sink 256 --kv-recent 256 --device cuda --kv-mode budget-only,freekv:corr-off -o json > $OUT/tiny_b$b.json 2>$OUT/tiny.log; show $OUT/tiny_b$b.json tiny
done
head -3 $OUT/tiny.log
