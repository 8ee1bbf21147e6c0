#!/usr/bin/env bash
# session 7, run 7 (commit 8e867fd): GPU tests, then issue 5's acceptance table: 32K, batch 1 and 4,
# every method, 512 measured steps.
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin; tar -xJf $B/bins.tar.xz -C $B
mkdir -p /tmp/freekv-ref && tar -xJf $B/ref.tar.xz -C /tmp/freekv-ref
export FREEKV_REF_MODEL=/tmp/freekv-ref FREEKV_EVAL_TEXT=$PWD/$B/eval_wp_tail.txt
SECONDS=0
{
timeout 100 $B/test_cuda_ops; echo "test_cuda_ops exit $?"
timeout 150 $B/test_cuda_model; echo "test_cuda_model exit $?"
} > $OUT/tests.log 2>&1
grep -E "exit|PASSED|FAILED|Failure" $OUT/tests.log | head -20; echo "t=$SECONDS"
args="--shape llama-3.1-8b -d 32768 -b 1,4 -n 512 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode full,budget-only,streaming,quest,arkvale,freekv,freekv:corr-off,freekv:no-spec"
echo "freekv bench $args" > $OUT/bench.log
timeout 420 $B/freekv bench $args -o json > $OUT/bench.json 2>>$OUT/bench.log; echo "bench exit $? t=$SECONDS"
python3 -c "
import json,sys
for l in open(sys.argv[1]):
    l=l.strip()
    if not l.startswith('{'): continue
    r=json.loads(l)
    print({k:r.get(k) for k in ('kv_mode','batch','step_ms','step_ms_p99','floor_ratio','select_ms','recall_wait_ms','attention_ms','rest_ms','recall_gbps','pages_per_step')})
" $OUT/bench.json
