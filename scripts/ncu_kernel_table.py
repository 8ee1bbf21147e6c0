#!/usr/bin/env python3
"""ncu_kernel_table.py: Nsight Compute's --csv report (metrics gpu__time_duration.sum and, optionally,
launch__grid_size; the default page, a row per launch and metric, or --page raw, a row per launch)
as a markdown table of kernels by total device time, one row per kernel and grid size: launches,
mean and summed microseconds, share. Used by scripts/run_gpu_tests.sh (profile, prefill-profile)
and the bench/results scripts on the GPU machine. Usage: ncu_kernel_table.py REPORT.csv
"""
import collections
import csv
import re
import sys


def main():
    lines = open(sys.argv[1]).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    scale_of = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
    rows = list(csv.DictReader(lines[start:]))
    launches = collections.defaultdict(dict)  # launch ID -> name, us, grid
    if rows and "Metric Name" not in rows[0]:  # --page raw: one row per launch, a row of units first
        units = rows[0]
        for r in rows[1:]:
            launch = launches[r["ID"]]
            launch["name"] = re.sub(r"\(.*", "", r["Kernel Name"])
            launch["us"] = float(r["gpu__time_duration.sum"].replace(",", "")) * scale_of.get(units["gpu__time_duration.sum"], 1e-3)
            launch["grid"] = r.get("launch__grid_size", "")
    else:  # the default page: one row per launch and metric
        for r in rows:
            launch = launches[r["ID"]]
            launch["name"] = re.sub(r"\(.*", "", r["Kernel Name"])
            if r["Metric Name"] == "gpu__time_duration.sum":
                launch["us"] = float(r["Metric Value"].replace(",", "")) * scale_of.get(r["Metric Unit"], 1e-3)
            elif r["Metric Name"] == "launch__grid_size":
                launch["grid"] = r["Metric Value"]
    # One row per kernel and grid (the same GEMV kernel on matrices of different shapes has different grids).
    time = collections.defaultdict(list)
    for launch in launches.values():
        if "us" in launch:
            time[(launch["name"], launch.get("grid", ""))].append(launch["us"])
    total = sum(sum(v) for v in time.values())
    print("| kernel | launches | mean us | sum us | share | grid |")
    print("|---|---|---|---|---|---|")
    for (name, grid), v in sorted(time.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {name} | {len(v)} | {sum(v) / len(v):.1f} | {sum(v):.0f} | {100 * sum(v) / total:.1f}% | {grid} |")
    print(f"| all | {sum(len(v) for v in time.values())} | | {total:.0f} | | |")


if __name__ == "__main__":
    main()
