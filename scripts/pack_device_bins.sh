#!/usr/bin/env bash
# pack_device_bins.sh: packs the CUDA build for a run on the GPU machine (which has the CUDA
# toolkit, PyTorch and a driver, but not this machine's Debian libraries): the stripped binaries of
# build/cuda-release (and the CPU-only freekv of build/cpu-release as freekv_cpu, when built), the
# shared libraries they need from Debian (libstdc++, libgcc_s, libfmt, libpcre2-8, libutf8proc, libcpp-httplib,
# libgomp, and the netlib reference BLAS as libopenblas.so.0: small, and nothing BLAS-bound runs
# there) into .devbin/, then .devpack/bins.tar.xz. The device run unpacks it and sets
# LD_LIBRARY_PATH to it (see bench/results/scripts/ for the runs made this way).
# Invariant: .devbin/ and .devpack/ are local scratch, never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/cuda-release
rm -rf .devbin && mkdir -p .devbin .devpack
for b in app/freekv tests/test_cuda_ops tests/test_cuda_model tests/test_cuda_engine tests/test_cuda_tensor_parallel tests/test_cli bench/bench_prefill_attention \
         bench/bench_recall bench/bench_decode_gemv bench/bench_decode_attention; do
    [ -f "$build/$b" ] && strip -o ".devbin/$(basename "$b")" "$build/$b"
done
[ -f build/cpu-release/app/freekv ] && strip -o .devbin/freekv_cpu build/cpu-release/app/freekv
lib=/usr/lib/x86_64-linux-gnu
for l in libstdc++.so.6 libgcc_s.so.1 libfmt.so.9 libpcre2-8.so.0 libutf8proc.so.2 libgomp.so.1 libcpp-httplib.so.0.11 \
         libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1 libgfortran.so.5 libquadmath.so.0; do
    cp -L "$lib/$l" .devbin/
done
cp -L "$lib/blas/libblas.so.3" .devbin/libopenblas.so.0
tar -cJf .devpack/bins.tar.xz -C .devbin .
ls -la .devpack
