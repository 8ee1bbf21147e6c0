#!/usr/bin/env bash
# session-16 device run 4 (for the next session, after run 2 or 3): the rest of the GPU checks of session 16's unrun code:
# memcheck and racecheck on the new GEMV kernels, the whole test_cuda_ops, test_cuda_engine, and test_cuda_model on the
# needle model (every test; the sparse-mode bounds were set on freekv-ref-28m). Carry .devpack/bins.tar.xz and
# .devpack/eval_wp_tail.txt.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader > $OUT/machine.txt
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck; do
  timeout 120 $SAN --tool $tool --error-exitcode 3 $B/test_cuda_ops --gtest_filter='*Gemv*' > $OUT/san-$tool.log 2>&1; echo "$tool rc $?"; tail -2 $OUT/san-$tool.log
done
timeout 120 $B/test_cuda_ops > $OUT/ops.log 2>&1; echo "ops rc $?"; grep -E "FAIL|PASSED|Failure" $OUT/ops.log | head
timeout 60 $B/test_cuda_engine > $OUT/engine.log 2>&1; echo "engine rc $?"; grep -E "FAIL|PASSED|Failure" $OUT/engine.log | head
FREEKV_REF_MODEL=tests/models/freekv-needle-12m FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 240 $B/test_cuda_model > $OUT/model.log 2>&1
echo "model rc $?"; grep -E "OK|FAIL|PASSED|Failure|Expected|Which|differ" $OUT/model.log | head -40
