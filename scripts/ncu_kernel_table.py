#!/usr/bin/env python3
"""ncu_kernel_table.py: Nsight Compute's --csv report (metrics gpu__time_duration.sum and, optionally,
launch__grid_size; the default page, a row per launch and metric, or --page raw, a row per launch)
as a markdown table of kernels by total
device time: launches, mean and summed microseconds, grid. Used by scripts/run_gpu_tests.sh (profile,
prefill-profile) on the GPU machine. Usage: ncu_kernel_table.py REPORT.csv
"""
import collections
import csv
import re
import sys


def main():
    lines = open(sys.argv[1]).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    time, grid = collections.defaultdict(list), {}
    scale_of = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
    rows = list(csv.DictReader(lines[start:]))
    if rows and "Metric Name" not in rows[0]:  # --page raw: one row per launch, a row of units first
        units = rows[0]
        for r in rows[1:]:
            name = re.sub(r"\(.*", "", r["Kernel Name"])
            time[name].append(float(r["gpu__time_duration.sum"].replace(",", "")) *
                              scale_of.get(units["gpu__time_duration.sum"], 1e-3))
            if "launch__grid_size" in r:
                grid[name] = r["launch__grid_size"]
        rows = []
    for r in rows:  # the default page: one row per launch and metric
        name = re.sub(r"\(.*", "", r["Kernel Name"])
        if r["Metric Name"] == "gpu__time_duration.sum":
            time[name].append(float(r["Metric Value"].replace(",", "")) * scale_of.get(r["Metric Unit"], 1e-3))
        elif r["Metric Name"] == "launch__grid_size":
            grid[name] = r["Metric Value"]
    total = sum(sum(v) for v in time.values())
    print("| kernel | launches | mean us | sum us | share | grid |")
    print("|---|---|---|---|---|---|")
    for name, v in sorted(time.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {name} | {len(v)} | {sum(v) / len(v):.1f} | {sum(v):.0f} | {100 * sum(v) / total:.1f}% | {grid.get(name, '')} |")
    print(f"| all | {sum(len(v) for v in time.values())} | | {total:.0f} | | |")


if __name__ == "__main__":
    main()
