#!/usr/bin/env bash
# session-13 device run 10: the 8-bit store on the GPU: op twins (+ memcheck), model tests, bench 32K b1/b4 per store dtype
B=/tmp/b; mkdir -p $B /tmp/ref && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/ref.tar.xz -C /tmp/ref
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
free -g >> $OUT/machine.txt
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
REF=$(dirname $(find /tmp/ref -name config.json | head -1))
{ timeout 60 $B/test_cuda_ops 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|codes|scales|layer"
  timeout 60 $SAN --tool memcheck --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*EightBit*' 2>&1 | tail -2
  FREEKV_REF_MODEL=$REF FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 200 $B/test_cuda_model --gtest_filter='*EightBit*:*RecallImpls*' 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which|ppl|differ"
  timeout 100 $B/test_cuda_engine 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|Which"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 200 $B/freekv bench --shape llama-3.1-8b -d 32768 -b 1,4 -n 512 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
  --kv-mode budget-only,freekv:corr-off,freekv:corr-off:int8,freekv:corr-off:fp8,freekv,freekv:int8 > $OUT/bench32k.md 2> $OUT/bench32k.log
cat $OUT/bench32k.md; tail -5 $OUT/bench32k.log | cut -c1-300
