#!/usr/bin/env bash
# session-16 device run 1: issue 16's GEMV variant table (bench_decode_gemv, never run before: the cuda-release preset did not
# build it), and test_cuda_model on the needle model (the dense-regime test fixed to take the longest golden prompt).
# Carry .devpack/bins.tar.xz and .devpack/eval_wp_tail.txt.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
timeout 150 $B/bench_decode_gemv 1,4 40 > $OUT/gemv.md 2>&1; echo "gemv rc $?"; cat $OUT/gemv.md
FREEKV_REF_MODEL=tests/models/freekv-needle-12m FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 300 $B/test_cuda_model > $OUT/model.log 2>&1
echo "test_cuda_model rc $?"; grep -E "OK|FAIL|PASSED|Failure|Expected|Which|exception|actual|  [a-z]" $OUT/model.log | head -60
# issue 14: the 32K prefill against the HF peer with more repetitions; 128K through the server under 40 GiB with larger chunks
S="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json"
timeout 90 $B/freekv bench $S --prefill-install-ctas 2 > $OUT/engine.jsonl 2> $OUT/engine.log; echo "bench rc $?"
grep -o '"prefill_tokens_per_s":[0-9.]*' $OUT/engine.jsonl
timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "hf rc $?"; cat $OUT/hf.jsonl
for ch in 8192 16384; do
  $B/freekv serve --shape llama-3.1-8b -c 131072 --max-batch 1 --gpu-memory-gib 40 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode freekv \
    --prefill-chunk $ch --step-tokens $ch --port 8391 --device cuda --no-progress > $OUT/serve-$ch.log 2>&1 &
  SP=$!
  timeout 150 $B/freekv bench-serve --port 8391 --wait-ready 100 --concurrency 1 --requests 2 --prompt-tokens 131000 --max-tokens 4 --vocab 128000 \
    --label freekv-128k-40gib-chunk$ch --json $OUT/serve-$ch.json > $OUT/serve-$ch.md 2>&1
  echo "bench-serve $ch rc $?"; kill $SP; wait $SP 2>/dev/null; tail -4 $OUT/serve-$ch.md; grep -E "memory plan|rror" $OUT/serve-$ch.log | cut -c1-300 | tail -2
done
