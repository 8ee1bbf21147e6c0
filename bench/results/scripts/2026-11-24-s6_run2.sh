#!/usr/bin/env bash
# session 6, run 2: top-k kernel + forward_top tests, skip of empty corrective launches, min split 32
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin
mkdir -p /tmp/freekv-ref && tar -xJf $B/ref.tar.xz -C /tmp/freekv-ref
export FREEKV_REF_MODEL=/tmp/freekv-ref FREEKV_EVAL_TEXT=$PWD/$B/eval_wp_tail.txt
san=$(ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
{
$B/test_cuda_ops; echo "test_cuda_ops exit $?"
$san --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*TopK*'; echo "memcheck topk exit $?"
$B/test_cuda_model --gtest_filter='*DeviceTopK*:*RecallImpls*:*SparseModesTrack*:*DenseRegime*'; echo "test_cuda_model exit $?"
} > $OUT/tests.log 2>&1
grep -E "exit|PASSED|FAILED|top-|ERROR SUMMARY|Failure" $OUT/tests.log | head -40
args="--shape llama-3.1-8b -d 32768 -b 1,4 -n 512 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode full,budget-only,streaming,quest,arkvale,freekv,freekv:corr-off,freekv:no-spec"
echo "freekv bench $args" > $OUT/bench.log
timeout 420 $B/freekv bench $args -o json > $OUT/bench.json 2>>$OUT/bench.log; echo "bench exit $?"
python3 -c "
import json,sys
for l in open(sys.argv[1]):
    l=l.strip()
    if not l.startswith('{'): continue
    r=json.loads(l)
    print({k:r.get(k) for k in ('kv_mode','batch','step_ms','step_ms_p99','floor_ratio','select_ms','recall_wait_ms','attention_ms','rest_ms','recall_gbps','pages_per_step')})
" $OUT/bench.json
