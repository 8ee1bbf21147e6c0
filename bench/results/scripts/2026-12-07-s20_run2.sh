#!/usr/bin/env bash
# session 20, device call 2 (about 100 s of device time left): the PDL bisect's core only: the CUDA
# graphs test (PDL variants) of a80e71a, main (39230de) and the fused rows (4509974), then the GPU
# tensor-parallel tests if time is left. Carry .devpack/bins.tar.xz and .devpack/bisect.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/bisect.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for w in wt-a80 wt-fused; do [ -e /work/$w ] || ln -s "$PWD" /work/$w; done
cp $B/test_cuda_engine $B/test_cuda_engine_main
for v in a80 main fused; do
  echo "== $v"; timeout 25 $B/test_cuda_engine_$v --gtest_filter='*CudaGraphs*' 2>&1 | grep -E "^\[  (PASSED|FAILED) |variant" | head -4
done
echo "bisect done at ${SECONDS} s"
timeout 40 $B/test_cuda_tensor_parallel --gtest_filter='*RanksSharing*' 2>&1 | grep -E "^\[  |Failure|Expected|Which|actual" | head -12
echo "done at ${SECONDS} s"
