# Sums ncu's gpu__time_duration per kernel name from a --csv --page raw report (argv[1]); argv[2] = layers covered.
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
hdr_i = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
hdr = rows[hdr_i]
ki, mi = hdr.index("Kernel Name"), hdr.index("gpu__time_duration.sum")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[hdr_i + 1:]:
    if len(r) <= mi or not r[mi].replace('.', '').replace(',', '').isdigit(): continue
    name = r[ki].split("(")[0][:70]
    tot[name] += float(r[mi].replace(',', '')); cnt[name] += 1
all_ = sum(tot.values())
print(f"| kernel | launches | total ms | share |\n|---|---|---|---|")
for k, v in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"| {k} | {cnt[k]} | {v/1e6:.2f} | {100*v/all_:.1f}% |")
print(f"| all | {sum(cnt.values())} | {all_/1e6:.2f} | |")
