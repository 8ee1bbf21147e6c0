#!/usr/bin/env bash
# session-17 device run 5 (issue 16): ncu of the bf16 whole-tile decode attention at full KV, 32K, batch 1: where its
# time goes (memory tables: sectors per request, L1/L2 traffic; warp stalls; source counters).
# Carry .devpack/bins.tar.xz.
B=/tmp/b; mkdir -p $B && tar -xJf .devpack/bins.tar.xz -C $B
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/machine.txt
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
S="--shape llama-3.1-8b -d 32768 -n 4 -r 1 --kv-budget 2048 --kv-sink 512 --kv-recent 512 --device cuda --breakdown-steps 0 -b 1 --kv-mode full"
timeout 200 $NCU --clock-control none -k regex:attention_pages_bf16 --launch-skip 40 -c 1 --section SpeedOfLight --section Occupancy \
  --section WarpStateStats --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section SourceCounters \
  $B/freekv bench $S > $OUT/ncu-full.txt 2>&1; echo "ncu rc $?"
grep -E "Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|sectors|Sectors|uncoalesced|excessive" $OUT/ncu-full.txt | cut -c1-200 | head -40
