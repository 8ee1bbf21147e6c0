#!/usr/bin/env bash
# session-14 device run 6: warm engine prefill (bench times after one untimed prefill) 8K/32K/128K with the HF peer at 32K; the sparse-mode model tests cut in run 5
B=/tmp/b; mkdir -p $B /tmp/ref && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/ref.tar.xz -C /tmp/ref
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
REF=$(dirname $(find /tmp/ref -name config.json | head -1))
S="--shape llama-3.1-8b -b 1 -n 4 -r 1 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-fill prefill --device cuda -o json"
timeout 120 $B/freekv bench $S -d 8192,32768,131000 --kv-mode budget-only > $OUT/engine.jsonl 2> $OUT/engine.log
echo "rc $?"; grep -o '"kv_mode":"[a-z-]*"\|"depth":[0-9]*\|"prefill_tokens_per_s":[0-9.]*\|"prefill_tflops":[0-9.]*' $OUT/engine.jsonl | paste - - - -; grep -i "error" $OUT/engine.log | head -3
timeout 70 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 2 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "rc $?"; cat $OUT/hf.jsonl
FREEKV_REF_MODEL=$REF FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 220 $B/test_cuda_model --gtest_filter='*SparseModes*:*RecallImpls*' > $OUT/model_tests.log 2>&1
echo "model tests rc $?"; grep -E "OK|FAIL|PASSED|Failure|Expected|Which|RUN" $OUT/model_tests.log | head -20
