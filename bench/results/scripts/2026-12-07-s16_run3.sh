#!/usr/bin/env bash
# session-16 device run 3: run 2 cut to what the last minutes of device time allow: the GEMV kernel tests, then the decode
# step at 32K before (bins_base: baf6a90) and after (the measured GEMV choice + the folded residual adds), budget-only and
# full, batch 1 and 4. Carry .devpack/bins.tar.xz and .devpack/bins_base.tar.xz.
B=/tmp/b; A=/tmp/a; mkdir -p $B $A && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/bins_base.tar.xz -C $A
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
timeout 60 $B/test_cuda_ops --gtest_filter='*Gemv*' > $OUT/ops.log 2>&1; echo "ops rc $?"
grep -E "OK|FAIL|PASSED|Failure|Expected|Which|rror|rows by" $OUT/ops.log | head -30
S="--shape llama-3.1-8b -d 32768 -b 1,4 -n 48 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --kv-mode budget-only,full"
for v in new base; do
  D=$([ $v = base ] && echo $A || echo $B)
  LD_LIBRARY_PATH=$D:/usr/local/cuda/lib64 timeout 70 $D/freekv bench $S > $OUT/decode-$v.md 2> $OUT/decode-$v.log; echo "$v rc $?"
  grep -E "^\| (budget-only|full) |Host issue" $OUT/decode-$v.md | head -9; grep -E "decode GEMV|rror" $OUT/decode-$v.log | cut -c1-900
done
