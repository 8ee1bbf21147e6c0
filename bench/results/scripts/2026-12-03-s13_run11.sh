#!/usr/bin/env bash
# session-13 device run 11: one-round-trip coded gather: twins, recall paths; bench per store dtype and --bg-gather-ctas; 128K x 8 int8
B=/tmp/b; mkdir -p $B /tmp/ref && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/ref.tar.xz -C /tmp/ref
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
free -g >> $OUT/machine.txt
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
REF=$(dirname $(find /tmp/ref -name config.json | head -1))
{ timeout 60 $B/test_cuda_ops --gtest_filter='*EightBit*:*PageBoundary*' 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|codes|scales|layer"
  timeout 60 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*EightBit*' 2>&1 | tail -1
  timeout 60 $SAN --tool racecheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*EightBit*' 2>&1 | tail -1
  FREEKV_REF_MODEL=$REF FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 100 $B/test_cuda_model --gtest_filter='*RecallImpls*' 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|differ"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
S="--shape llama-3.1-8b -d 32768 -b 1,4 -n 512 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda"
timeout 150 $B/freekv bench $S --kv-mode budget-only,freekv:corr-off,freekv:corr-off:int8,freekv:corr-off:fp8 > $OUT/bench32k.md 2> $OUT/bench32k.log
timeout 100 $B/freekv bench $S --bg-gather-ctas 24 --kv-mode freekv:corr-off,freekv:corr-off:int8 > $OUT/bench32k_ctas24.md 2> $OUT/bench32k_ctas24.log
grep -E "^\| llama" $OUT/bench32k.md $OUT/bench32k_ctas24.md | cut -d'|' -f3,5,6,7,9,10,11,12,13,15,20
timeout 200 $B/freekv bench --shape llama-3.1-8b -d 131072 -b 8 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode freekv:corr-off:int8 > $OUT/bench128k_int8.md 2> $OUT/bench128k_int8.log
echo "rc $?"; grep -E "^\| llama" $OUT/bench128k_int8.md | cut -d'|' -f3,5,6,7,9,10,11,12,13,15,20,21; grep -E "plan|rror" $OUT/bench128k_int8.log | head -5
timeout 60 $B/freekv bench --shape llama-3.1-8b -d 131072 -b 8 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode freekv:corr-off > $OUT/bench128k_native.md 2> $OUT/bench128k_native.log
echo "rc $?"; grep -E "plan|rror" $OUT/bench128k_native.log | cut -c1-400 | head -5
