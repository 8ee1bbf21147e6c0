#!/usr/bin/env bash
# session 6, run 4: tensor-core decode GEMV (FREEKV_GEMV=mma) tests and bench against the default
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin
mkdir -p /tmp/freekv-ref && tar -xJf $B/ref.tar.xz -C /tmp/freekv-ref
export FREEKV_REF_MODEL=/tmp/freekv-ref FREEKV_EVAL_TEXT=$PWD/$B/eval_wp_tail.txt
{
$B/test_cuda_ops --gtest_filter='*Gemv*:*Matmul*'; echo "test_cuda_ops exit $?"
FREEKV_GEMV=mma FREEKV_GEMV_MAX_ROWS=8 $B/test_cuda_model --gtest_filter='*FullMatchesTransformers*:*DenseRegime*:*SparseModesTrack*'; echo "test_cuda_model mma exit $?"
} > $OUT/tests.log 2>&1
grep -E "exit|PASSED|FAILED|Failure|NMSE|greedy agrees|ppl cpu" $OUT/tests.log | head -40
show() { python3 -c "
import json,sys
for l in open(sys.argv[1]):
    l=l.strip()
    if not l.startswith('{'): continue
    r=json.loads(l)
    print(sys.argv[2], {k:r.get(k) for k in ('kv_mode','batch','step_ms','floor_ratio','select_ms','attention_ms','rest_ms','recall_gbps')})
" $1 "$2"; }
args="--shape llama-3.1-8b -d 32768 -b 1,4 -n 128 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only,freekv:corr-off -o json"
$B/freekv bench $args > $OUT/default.json 2>/dev/null; show $OUT/default.json default
FREEKV_GEMV=mma FREEKV_GEMV_MAX_ROWS=8 $B/freekv bench $args > $OUT/mma8.json 2>/dev/null; show $OUT/mma8.json mma-rows8
FREEKV_GEMV=mma FREEKV_GEMV_MAX_ROWS=8 $B/freekv bench --shape llama-3.1-8b -d 32768 -b 8 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only -o json > $OUT/mma8_b8.json 2>/dev/null; show $OUT/mma8_b8.json mma-rows8
$B/freekv bench --shape llama-3.1-8b -d 32768 -b 8 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only -o json > $OUT/default_b8.json 2>/dev/null; show $OUT/default_b8.json default
