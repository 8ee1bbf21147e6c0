#!/usr/bin/env bash
# session 19's script for the next session's first device call: which build breaks the GPU engine tests
# under PDL. Run 1 of session 19 (H100) saw test_cuda_engine fail with PDL on (CudaGraphsReplayTheSameLogits
# variants 2-4: every logit differs from direct launches; ChunkedPrefillMatchesTheWholePrompt: NMSE 0.04-0.27
# at some decode steps) and freekv at b4 recall 725 pages/step where every earlier run recalled ~22,780, in a
# build with session 18's unrun changes (7798e81) plus the fused q|k|v and gate|up rows (branch
# s19-fused-gemv-rows). Three builds side by side, the same machine:
#   a80 = a80e71a (session 18 run 3: the engine tests passed), main = 7798e81's sources (main after the
#   revert), fused = 4509974 (branch s19-fused-gemv-rows; on main: git revert 8b16bf9).
# Each: the two failing engine tests with PDL (their default) and freekv's b4 recall volume; then the staged
# attention kernel's stall reasons at 2K x 4 (Nsight Compute) and main's GPU tests whole. Carry .devpack/bins.tar.xz (main, scripts/pack_device_bins.sh)
# and .devpack/bisect.tar.xz (test_cuda_engine_{a80,fused}, freekv_{a80,fused}); to remake the latter:
#   git worktree prune; git worktree add /work/wt-a80 a80e71a; git worktree add /work/wt-fused 4509974; in each:
#   cmake --preset cuda-release && cmake --build --preset cuda-release --target freekv test_cuda_engine; then strip
#   them into one folder as test_cuda_engine_{a80,fused} and freekv_{a80,fused} and tar -cJf .devpack/bisect.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/bisect.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# The test binaries find tests/fixtures under the source directory they were built in.
for w in wt-a80 wt-fused; do [ -e /work/$w ] || ln -s "$PWD" /work/$w; done
cp $B/test_cuda_engine $B/test_cuda_engine_main; cp $B/freekv $B/freekv_main
for v in a80 main fused; do
  echo "== $v"
  timeout 60 $B/test_cuda_engine_$v --gtest_filter='*CudaGraphs*:*ChunkedPrefill*' 2>&1 | grep -E "^\[  (PASSED|FAILED) |variant|NMSE|nmse" | head -6
  timeout 60 $B/freekv_$v bench --shape llama-3.1-8b -d 32768 -n 8 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
    -b 4 --kv-mode freekv 2> /dev/null | grep -E "^\| llama" | cut -d'|' -f3,5,7,10-15
done
echo "== fused, --no-pdl (freekv steps have no graphs: PDL is the only difference)"
timeout 60 $B/freekv_fused bench --shape llama-3.1-8b -d 32768 -n 8 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda \
  -b 4 --kv-mode freekv --no-pdl 2> /dev/null | grep -E "^\| llama" | cut -d'|' -f3,5,7,10-15
echo "bisect done at ${SECONDS} s"
# Whichever build fails: out-of-bounds or uninitialized reads in its engine test (a latent overrun would
# land in whatever buffer lies next, and PDL's overlap decides when), kernels serialized by the tool.
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck initcheck; do
  timeout 120 $CS --tool $tool --print-limit 5 $B/test_cuda_engine_fused --gtest_filter='*CudaGraphs*' 2>&1 | \
    grep -E "ERROR SUMMARY|Invalid|Uninitialized|at 0x|by thread|PASSED|FAILED" | head -10
done
echo "sanitizers done at ${SECONDS} s"
# Why a 2K list at b4 takes 25.4 us of attention for 10.8 us of K/V (session 19's profile): one staged launch
# at 2048 tokens x 4 rows, its stall reasons and memory throughput.
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
timeout 90 $NCU --clock-control none -k regex:staged --launch-skip 3 --launch-count 1 --section SpeedOfLight \
  --section WarpStateStats --section Occupancy --section LaunchStats $B/bench_decode_attention 2048 4 3 2>&1 | \
  grep -E "Duration|DRAM Throughput|Memory Throughput|Stall|Achieved Occupancy|Registers|Block Limit|Warp Cycles" | head -30
timeout 90 $B/test_cuda_engine 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|differ" | head -8
timeout 90 $B/test_cuda_ops 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which" | head -8
echo "done at ${SECONDS} s"
