#!/usr/bin/env bash
# session 7, run 1: op tests (every GEMV variant), the exclusive background gather's correctness,
# then floor / freekv:corr-off at 32K for GEMV chunks 2/4/8 and the exclusive background gather; serve smoke test.
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin; tar -xJf $B/bins.tar.xz -C $B
mkdir -p /tmp/freekv-ref && tar -xJf $B/ref.tar.xz -C /tmp/freekv-ref
export FREEKV_REF_MODEL=/tmp/freekv-ref FREEKV_EVAL_TEXT=$PWD/$B/eval_wp_tail.txt
{
$B/test_cuda_ops; echo "test_cuda_ops exit $?"
FREEKV_BG_GATHER_EXCLUSIVE=1 $B/test_cuda_model --gtest_filter='*SparseModesTrack*:*RecallImpls*'; echo "test_cuda_model exclusive exit $?"
} > $OUT/tests.log 2>&1
grep -E "exit|PASSED|FAILED|Failure" $OUT/tests.log | head -30
show() { python3 -c "
import json,sys
for l in open(sys.argv[1]):
    l=l.strip()
    if not l.startswith('{'): continue
    r=json.loads(l)
    print(sys.argv[2], {k:r.get(k) for k in ('kv_mode','batch','step_ms','floor_ratio','select_ms','attention_ms','rest_ms','recall_gbps')})
" $1 "$2"; }
args="--shape llama-3.1-8b -d 32768 -n 128 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only,freekv:corr-off -o json"
SECONDS=0
$B/freekv bench $args -b 1,4 > $OUT/default.json 2>$OUT/default.err; show $OUT/default.json default; echo "t=$SECONDS"
FREEKV_BG_GATHER_EXCLUSIVE=1 $B/freekv bench $args -b 1,4 > $OUT/excl.json 2>/dev/null; show $OUT/excl.json exclusive; echo "t=$SECONDS"
FREEKV_GEMV_CHUNKS=4 $B/freekv bench $args -b 1 > $OUT/chunks4.json 2>/dev/null; show $OUT/chunks4.json chunks4; echo "t=$SECONDS"
FREEKV_GEMV_CHUNKS=8 $B/freekv bench $args -b 1 > $OUT/chunks8.json 2>/dev/null; show $OUT/chunks8.json chunks8; echo "t=$SECONDS"
FREEKV_BG_GATHER_EXCLUSIVE=1 FREEKV_BG_GATHER_CTAS=24 $B/freekv bench $args -b 4 > $OUT/excl24.json 2>/dev/null; show $OUT/excl24.json exclusive-24; echo "t=$SECONDS"
# serve smoke test on the GPU
$B/freekv serve -m /tmp/freekv-ref --device cuda --port 8099 > $OUT/serve.log 2>&1 &
SP=$!
for i in $(seq 60); do python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8099/health')" 2>/dev/null && break; sleep 1; done
python3 - <<'PY' > $OUT/serve_client.txt 2>&1
import json, urllib.request
def post(body):
    req = urllib.request.Request('http://127.0.0.1:8099/v1/completions', data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req) as r: return r.status, r.read().decode()
    except urllib.error.HTTPError as e: return e.code, e.read().decode()
print(post({'prompt': 'The history of the city', 'max_tokens': 24, 'temperature': 0}))
print(post({'prompt': 'The history of the city', 'max_tokens': 24, 'temperature': 0, 'stream': True})[1][:600])
print(post({'prompt': 'x', 'max_tokens': -1}))
PY
kill $SP; cat $OUT/serve_client.txt | head -c 1500; echo "t=$SECONDS"
