#!/usr/bin/env bash
# session-13 device run 12: coded gather at 2x blocks: acceptance table 32K b1/b4 per store dtype; 128K x 8; GPU perplexity per store dtype
B=/tmp/b; mkdir -p $B /tmp/ref && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/ref.tar.xz -C /tmp/ref
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
free -g >> $OUT/machine.txt
REF=$(dirname $(find /tmp/ref -name config.json | head -1))
timeout 40 $B/test_cuda_ops --gtest_filter='*EightBit*' 2>&1 | grep -E "OK|FAIL"
S="--shape llama-3.1-8b -d 32768 -b 1,4 -n 512 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda"
timeout 220 $B/freekv bench $S --kv-mode budget-only,freekv:corr-off,freekv:corr-off:int8,freekv:corr-off:fp8,freekv,freekv:int8,freekv:fp8 > $OUT/bench32k.md 2> $OUT/bench32k.log
grep -E "^\| llama" $OUT/bench32k.md | cut -d'|' -f3,5,6,7,9,10,11,12,13,14,15,20
timeout 150 $B/freekv bench --shape llama-3.1-8b -d 130048 -b 8 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode freekv:corr-off:int8 > $OUT/bench128k_int8.md 2> $OUT/bench128k_int8.log
echo "rc $?"; grep -E "^\| llama" $OUT/bench128k_int8.md | cut -d'|' -f3,5,6,7,9,10,11,12,13,15,20,21; grep -E "plan|rror" $OUT/bench128k_int8.log | cut -c1-400 | head -5
free -g
timeout 80 $B/freekv bench --shape llama-3.1-8b -d 130048 -b 8 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode freekv:corr-off > $OUT/bench128k_native.md 2> $OUT/bench128k_native.log
echo "rc $?"; grep -E "plan|rror" $OUT/bench128k_native.log | cut -c1-500 | head -5
timeout 130 $B/freekv perplexity -m $REF -f .devpack/eval_wp_tail.txt -c 8192 --prefix 4096 --chunks 1 --kv-mode full,freekv,freekv:int8,freekv:fp8 --kv-budget 1024 --kv-sink 128 --kv-recent 128 --kv-page-size 32 --compare full --device cuda --no-progress > $OUT/ppl_gpu.md 2> $OUT/ppl_gpu.log
echo "rc $?"; cat $OUT/ppl_gpu.md; tail -3 $OUT/ppl_gpu.log
