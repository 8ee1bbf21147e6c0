#!/usr/bin/env bash
# session 22, device call 2 (prepared in session 21): the decode table at 32K for the README (this
# card, every default: budget-only, full, freekv at b1 and b4), then on an H200 the 32K prefill
# beside HF transformers (issue 14). Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 300 $B/freekv bench --shape llama-3.1-8b -d 32768 -n 32 -r 2 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
  -b 1,4 --kv-mode budget-only,full,freekv > $OUT/decode.txt 2> /dev/null; echo "decode rc $?"
grep -E "^\| llama|Memory floor" $OUT/decode.txt | cut -d'|' -f3,5,7,8,9,10,11,12,13,14,15
echo "decode done at ${SECONDS} s"
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  P="--shape llama-3.1-8b -d 32768 -b 1 -n 4 -r 3 --breakdown-steps 0 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --kv-mode budget-only --kv-fill prefill --device cuda -o json --prefill-install-ctas 2"
  timeout 80 $B/freekv bench $P > $OUT/prefill.jsonl 2> /dev/null; grep -oE '"prefill_tokens_per_s":[0-9.]*' $OUT/prefill.jsonl
  timeout 100 python3 scripts/hf_prefill_peer.py --lengths 32768 --reps 3 > $OUT/hf.jsonl 2> /dev/null; cat $OUT/hf.jsonl
fi
echo "done at ${SECONDS} s"
