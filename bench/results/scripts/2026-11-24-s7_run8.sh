#!/usr/bin/env bash
# session 7, run 8 (commit 7c2a9bb): GPU tests not run at 8e867fd, and serve's per-request time
# after the pinned-store fix.
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin; tar -xJf $B/bins.tar.xz -C $B
mkdir -p /tmp/freekv-ref && tar -xJf $B/ref.tar.xz -C /tmp/freekv-ref
export FREEKV_REF_MODEL=/tmp/freekv-ref FREEKV_EVAL_TEXT=$PWD/$B/eval_wp_tail.txt
SECONDS=0
$B/freekv serve -m /tmp/freekv-ref --device cuda --port 8099 > $OUT/serve.log 2>&1 &
SP=$!
for i in $(seq 60); do python3 -c "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8099/health')" 2>/dev/null && break; sleep 1; done
python3 - <<'PY' > $OUT/serve_client.txt 2>&1
import json, time, urllib.request
def post(body):
    req = urllib.request.Request('http://127.0.0.1:8099/v1/completions', data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'})
    t = time.time()
    with urllib.request.urlopen(req) as r: out = r.read().decode()
    return time.time() - t, out
for n in (24, 24, 128):
    dt, out = post({'prompt': 'The history of the city', 'max_tokens': n, 'temperature': 0})
    print(f'{n} tokens: {dt*1000:.0f} ms client-side;', out[:160])
PY
kill $SP; cat $OUT/serve_client.txt; grep "serve:" $OUT/serve.log; echo "t=$SECONDS"
{
timeout 100 $B/test_cuda_ops; echo "test_cuda_ops exit $?"
timeout 330 $B/test_cuda_model --gtest_filter='-*SparseModesTrackTheCpuEngine*'; echo "test_cuda_model exit $?"
} > $OUT/tests.log 2>&1
grep -E "exit|OK|PASSED|FAILED|Failure" $OUT/tests.log | head -30; echo "t=$SECONDS"
