#!/usr/bin/env bash
# session 20's script for the next session's first device call (one GPU is enough): session 19's
# PDL bisect and profile (2026-12-07-s19_next.sh, unchanged: it unpacks the binaries into /tmp/b),
# then the first run of the GPU tensor-parallel ranks (test_cuda_tensor_parallel: 2 and 4 ranks
# sharing the GPU through host-staged sums against the unsplit runner; one NCCL rank, whose logits
# must be the unsplit runner's bit for bit). Carry .devpack/bins.tar.xz (scripts/pack_device_bins.sh
# after cmake --build --preset cuda-release) and .devpack/bisect.tar.xz (s19_next.sh's header).
bash bench/results/scripts/2026-12-07-s19_next.sh
B=/tmp/b
# NCCL is opened at run time: the toolkit's copy, else PyTorch's wheel's.
NCCL=$(ls /usr/local/cuda/lib64/libnccl.so.2 2>/dev/null || find / -name libnccl.so.2 -not -path '*/proc/*' 2>/dev/null | head -1)
echo "nccl: ${NCCL:-none found}"
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64${NCCL:+:$(dirname "$NCCL")}
timeout 240 $B/test_cuda_tensor_parallel 2>&1 | grep -E "^\[  |Failure|Expected|Which|actual|Skipped|nccl|NCCL" | head -40
echo "tensor parallel done at ${SECONDS} s"
