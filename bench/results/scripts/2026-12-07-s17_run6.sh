#!/usr/bin/env bash
# session-17 device run 6 (issue 14, H200 only): the 32K prefill against the HF sdpa peer in the same call (target on the
# H200: <= 1.3 s, >= 25K tokens/s). Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current --format=csv,noheader | tee $OUT/machine.txt
P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
timeout 80 $B/freekv bench $P > $OUT/prefill.jsonl 2> $OUT/prefill.log; echo "prefill rc $?"
grep -oE '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> $OUT/hf.log; echo "hf rc $?"; cat $OUT/hf.jsonl
