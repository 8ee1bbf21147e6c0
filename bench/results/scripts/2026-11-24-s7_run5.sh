#!/usr/bin/env bash
# session 7, run 5: is the recall's cost to the GEMMs about address translation? bench_recall_overlap
# over a cudaHostAlloc'd store, a 16 MiB window of it, and THP memory cudaHostRegister'd.
set -u
export LD_LIBRARY_PATH=$PWD/.devbin:/usr/local/cuda/lib64
B=.devbin
cat /sys/kernel/mm/transparent_hugepage/enabled 2>&1; uname -r
$B/bench_recall_overlap 1,4 24 2>&1 | tee $OUT/overlap.md
