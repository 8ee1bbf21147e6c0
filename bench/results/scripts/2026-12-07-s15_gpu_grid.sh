#!/usr/bin/env bash
# session-15 GPU needle grid (issue 15), for the next device call: the CPU grid's command on the GPU engine in f32 and
# bf16 (tests/models/freekv-needle-12m travels with the tree; carry .devpack/bins.tar.xz and .devpack/eval_wp_tail.txt)
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
G="--haystack .devpack/eval_wp_tail.txt --task passkey,kv --lengths 2048,4096,8000 --depths 0,10,20,30,40,50,60,70,80,90,100 --trials ${TRIALS:-1}
   --kv-mode full,freekv,freekv:corr-off,freekv:no-spec,quest,arkvale,budget-only,streaming --kv-budget 1024 --kv-sink 128 --kv-recent 128
   --kv-page-size 32 --device cuda --no-progress"
for dt in f32 bf16; do
  timeout 250 $B/freekv needle -m tests/models/freekv-needle-12m $G --gpu-dtype $dt --json $OUT/gpu-grid-$dt.jsonl > $OUT/gpu-grid-$dt.md 2> $OUT/gpu-grid-$dt.log
  echo "$dt rc $?"; grep -A12 "every kv mode" $OUT/gpu-grid-$dt.md
done
