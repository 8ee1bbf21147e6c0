#!/usr/bin/env bash
# plot_bench.sh: draws `freekv bench -o json` results with gnuplot (Debian: gnuplot-nox).
# Usage: scripts/plot_bench.sh OUT_PREFIX BENCH.jsonl [MORE.jsonl ...]
# Writes, for the rows of all the files together (one JSON object per line, as the bench prints):
#   OUT_PREFIX-depth.png  ms per decode step against context depth, one line per kv mode, one
#                         panel per batch size;
#   OUT_PREFIX-batch.png  ms per decode step against batch size, one panel per depth;
#   OUT_PREFIX.dat        the table the plots read (mode, depth, batch, ms/step, p99, vs floor).
# Rows that ran out of memory are left out of the plots and listed in the .dat file as OOM; when
# several files measure the same (mode, depth, batch), the first file's row is kept.
# Invariant: needs only gnuplot and awk; the JSON lines are flat, so fields are read by name.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 OUT_PREFIX BENCH.jsonl [MORE.jsonl ...]" >&2
    exit 2
fi
command -v gnuplot > /dev/null || { echo "$0: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 2; }
out="$1"
shift
dat="$out.dat"

awk '
function field(name,    re, s) {
    re = "\"" name "\":(\"[^\"]*\"|[^,}]*)"
    if (!match($0, re)) return ""
    s = substr($0, RSTART + length(name) + 3, RLENGTH - length(name) - 3)
    gsub(/"/, "", s)
    return s
}
/^\{/ {
    mode = field("kv_mode"); rate = field("force_corr_rate")
    if (rate != "" && rate != "null" && mode ~ /^freekv$/) mode = mode "@" rate
    if (field("oom") == "true") { printf "# %s %s %s OOM\n", mode, field("depth"), field("batch"); next }
    printf "%s %s %s %s %s %s\n", mode, field("depth"), field("batch"), field("step_ms"), field("step_ms_p99"), field("floor_ratio")
}' "$@" | awk '!seen[$1 " " $2 " " $3]++' | sort -k1,1 -k2,2n -k3,3n > "$dat"

if ! grep -qv '^#' "$dat"; then
    echo "$0: no measured rows in $*" >&2
    exit 1
fi
modes=$(grep -v '^#' "$dat" | awk '{print $1}' | sort -u)
batches=$(grep -v '^#' "$dat" | awk '{print $3}' | sort -nu)
depths=$(grep -v '^#' "$dat" | awk '{print $2}' | sort -nu)

# One panel per value of `key_col` (3: batch, 2: depth), x = `x_col`, one line per mode.
plot_panels() {
    local png="$1" key_col="$2" x_col="$3" xlabel="$4" keys="$5" title="$6" logx="$7"
    local n
    n=$(echo "$keys" | wc -w)
    {
        echo "set terminal pngcairo size $((520 * n)),420 noenhanced"
        echo "set output '$png'"
        echo "set multiplot layout 1,$n title '$title'"
        echo "set xlabel '$xlabel'; set ylabel 'ms per decode step (median)'; set grid; set key top left font ',8'"
        [ "$logx" = 1 ] && echo "set logscale x 2"
        for k in $keys; do
            if [ "$key_col" = 3 ]; then echo "set title 'batch $k'"; else echo "set title 'context $k'"; fi
            local parts=()
            for m in $modes; do
                parts+=("'< awk \"!/^#/ && \\\$1 == \\\"$m\\\" && \\\$$key_col == $k\" $dat' using $x_col:4 with linespoints title '$m'")
            done
            (IFS=,; echo "plot ${parts[*]}")
        done
        echo "unset multiplot"
    } | gnuplot 2> >(grep -v "warning: Skipping data file with no valid points" >&2)
}

plot_panels "$out-depth.png" 3 2 "context depth (tokens)" "$batches" "freekv bench: latency against context" 1
plot_panels "$out-batch.png" 2 3 "batch size" "$depths" "freekv bench: latency against batch" 1
echo "wrote $out-depth.png $out-batch.png $dat"
