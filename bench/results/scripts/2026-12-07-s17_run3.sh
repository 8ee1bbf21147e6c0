#!/usr/bin/env bash
# session-17 device run 3 (issue 16): the tiled decode attention with each token's row passed from its lane (no page
# lookups in the V pass) and the fused RoPE + append + query store (rope_append): op test, decode at 32K b1/b4 (budget-only, full), ncu of the attention kernel (full b1 and
# budget-only b1), then test_cuda_model on the needle model with its whole log (run 2's timed out silently at 150 s).
# Carry .devpack/bins.tar.xz and .devpack/eval_wp_tail.txt.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,memory.total --format=csv,noheader | tee $OUT/machine.txt
timeout 100 $B/test_cuda_ops --gtest_filter='*DecodeAttention*:*RopeAppend*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|Which|rror|seq " | head -10
S="--shape llama-3.1-8b -d 32768 -n 64 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --attn-min-split-tokens 128"
timeout 120 $B/freekv bench $S -b 1,4 --kv-mode budget-only,full > $OUT/decode.md 2> $OUT/decode.log; echo "decode rc $?"
grep -E "^\| llama" $OUT/decode.md | cut -d'|' -f3,5,7,10-13 | head -6; grep -E "Host issue" $OUT/decode.md
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
for m in full budget-only; do
  timeout 150 $NCU --clock-control none -k regex:attention_pages_kernel --launch-skip 100 -c 1 --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    $B/freekv bench ${S/-n 64/-n 8} -b 1 --breakdown-steps 0 --kv-mode $m > $OUT/ncu-$m.txt 2>&1; echo "ncu $m rc $?"
  grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Grid Size|Block Limit|Stall|Warp Cycles Per Issued|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth" $OUT/ncu-$m.txt | head -30
done
FREEKV_REF_MODEL=tests/models/freekv-needle-12m FREEKV_EVAL_TEXT=.devpack/eval_wp_tail.txt timeout 280 $B/test_cuda_model > $OUT/model.log 2>&1
echo "model rc $?"; grep -E "FAIL|PASSED|Failure|Expected|Which|differ" $OUT/model.log | head; grep -E "^\[ RUN" $OUT/model.log | tail -2
grep -E "^\[       OK" $OUT/model.log | sed -E 's/.*OK \] //' | tr '\n' ';' | cut -c1-1500
