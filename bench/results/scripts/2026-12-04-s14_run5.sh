#!/usr/bin/env bash
# session-14 device run 5: install beside the next layer (side stream), 4-wide silu_mul_bf16: all op/engine tests, model tests on the prefill paths, engine prefill 8K/32K/128K (budget-only, freekv), HF peer; 128K TTFT through serve with --gpu-memory-gib 40
B=/tmp/b; mkdir -p $B /tmp/ref && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/ref.tar.xz -C /tmp/ref
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
REF=$(dirname $(find /tmp/ref -name config.json | head -1))
{ timeout 90 $B/test_cuda_ops 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|rror" | head -40
  timeout 100 $B/test_cuda_engine 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which"
  timeout 100 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_engine --gtest_filter='*ChunkedPrefill*' 2>&1 | tail -1
  FREEKV_REF_MODEL=$REF FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 150 $B/test_cuda_model 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
S="--shape llama-3.1-8b -b 1 -n 4 -r 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-fill prefill --device cuda -o json"
timeout 150 $B/freekv bench $S -d 8192,32768,131000 --kv-mode budget-only > $OUT/engine.jsonl 2> $OUT/engine.log
timeout 60 $B/freekv bench $S -d 131000 --kv-mode freekv >> $OUT/engine.jsonl 2>> $OUT/engine.log
echo "rc $?"; grep -o '"kv_mode":"[a-z-]*"\|"depth":[0-9]*\|"prefill_tokens_per_s":[0-9.]*\|"prefill_tflops":[0-9.]*' $OUT/engine.jsonl | paste - - - -; grep -i "error" $OUT/engine.log | head -3
timeout 100 python3 scripts/hf_prefill_peer.py --lengths 8192,32768 --reps 2 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "rc $?"; cat $OUT/hf.jsonl
$B/freekv serve --shape llama-3.1-8b -c 131072 --max-batch 1 --gpu-memory-gib 40 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode freekv --port 8391 --device cuda --no-progress > $OUT/serve.log 2>&1 &
SP=$!
timeout 200 $B/freekv bench-serve --port 8391 --wait-ready 150 --concurrency 1 --requests 1 --prompt-tokens 131000 --max-tokens 4 --vocab 128000 --label freekv-128k-40gib --json $OUT/serve.json > $OUT/serve.md 2>&1
echo "bench-serve rc $?"; kill $SP; wait $SP 2>/dev/null; cat $OUT/serve.md | tail -5; grep -E "memory plan|error" $OUT/serve.log | cut -c1-400 | tail -3
