#!/usr/bin/env bash
# session-13 device run 13: bench refuses a pinned store larger than the RAM (128K x 8 native) with the plan; engine and recall tests
B=/tmp/b; mkdir -p $B /tmp/ref && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/ref.tar.xz -C /tmp/ref
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
REF=$(dirname $(find /tmp/ref -name config.json | head -1))
timeout 60 $B/freekv bench --shape llama-3.1-8b -d 130048 -b 8 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode freekv:corr-off > $OUT/bench128k_native.md 2> $OUT/bench128k_native.log
echo "rc $?"; grep -E "plan|rror" $OUT/bench128k_native.log | cut -c1-600 | head -5
timeout 60 $B/test_cuda_engine 2>&1 | grep -E "OK|FAIL|PASSED"
FREEKV_REF_MODEL=$REF FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 60 $B/test_cuda_model --gtest_filter='*RecallImpls*' 2>&1 | grep -E "OK|FAIL|PASSED|differ"
