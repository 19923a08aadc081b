#!/usr/bin/env python3
"""Runs the p2p-sim sweeps of issue "Scale past one machine" and writes, per
sweep, a CSV (every column p2p-sim prints) and PNG charts (gnuplot), plus
summary.md with the tables p2p/README.md quotes.

    test/sim/sweep.py --sim build/test/sim/p2p-sim --out /tmp/sim [--quick]

--quick leaves out the 10,000-node runs (the CI smoke run)."""
import argparse
import csv
import io
import os
import subprocess
import sys
import tempfile


def run(sim, args):
    out = subprocess.run([sim] + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    if len(rows) != 1:
        raise SystemExit(f"p2p-sim {' '.join(map(str, args))}: exit {out.returncode}\n{out.stdout}{out.stderr}")
    return rows[0]


def write_csv(path, rows, extra_keys):
    keys = extra_keys + [k for k in rows[0] if k not in extra_keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot(png, title, xlabel, series, logx=False, logy=False, labels=None):
    """A gnuplot chart (the tool examples/bench-p2p.sh plots with): one line
    per (name, xs, ys) series; `labels`: category names for x = 0, 1, ..."""
    with tempfile.TemporaryDirectory() as tmp:
        plots = []
        for i, (name, xs, ys) in enumerate(series):
            data = os.path.join(tmp, f"s{i}.dat")
            with open(data, "w") as f:
                f.writelines(f"{x} {y}\n" for x, y in zip(xs, ys))
            style = "boxes fill solid 0.5" if labels else "linespoints pt 7"
            plots.append(f"'{data}' using 1:2 with {style} " + ("notitle" if labels else f"title '{name}'"))
        script = [f"set terminal pngcairo size 900,480 font ',10' noenhanced", f"set output '{png}'",
                  f"set title '{title}'", f"set xlabel '{xlabel}'", "set grid", "set key left top",
                  "set bmargin 9" if labels else "set bmargin 4", "set rmargin 8"]
        if logx:
            script.append("set logscale x")
        if logy:
            script.append("set logscale y")
        if labels:
            script += ["set boxwidth 0.6", "set yrange [0:*]", "set xtics rotate by -35",
                       # xtic labels are formats: a literal % is %%
                       "set xtics (" + ", ".join(f"'{n.replace('%', '%%')}' {i}" for i, n in enumerate(labels)) + ")"]
        script.append("plot " + ", ".join(plots))
        gp = os.path.join(tmp, "chart.gp")
        with open(gp, "w") as f:
            f.write("\n".join(script) + "\n")
        out = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"gnuplot failed for {png}: {out.stderr}")


def table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in columns) + " |")
    return "\n".join(lines)


RATIOS = ["origin_bytes_ratio", "p50_completion_ratio", "p99_completion_ratio", "max_upload_ratio",
          "bad_bytes_verified", "origin_fallbacks", "failed_reads"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trace", help="trace CSV (default: the python start shipped with p2p-sim)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    base = ["--trace", a.trace] if a.trace else []
    sizes = [10, 100, 1000] + ([] if a.quick else [10000])
    summary = ["# p2p-sim sweeps", "",
               "Default scenario unless a column says otherwise: python3 -V start trace, registry 1 Gbit/s "
               "(10 ms to first byte), nodes 10 Gbit/s, 0.1 ms one way between nodes, the daemon's P2P defaults.", ""]

    # 1. Scale: nodes starting together and staggered over 60 s.
    rows = []
    for start, extra in (("together", []), ("staggered 60 s", ["--stagger-s", 60])):
        for n in sizes:
            r = run(a.sim, base + ["--nodes", n] + extra)
            r["start"] = start
            rows.append(r)
    write_csv(os.path.join(a.out, "scale.csv"), rows, ["start"])
    for key, title in (("origin_bytes_ratio", "origin bytes / unique bytes"),
                       ("p99_completion_ratio", "p99 completion / single-node time"),
                       ("max_upload_ratio", "busiest node upload / mean upload")):
        series = []
        for start in ("together", "staggered 60 s"):
            sel = [r for r in rows if r["start"] == start]
            series.append((start, [r["nodes"] for r in sel], [r[key] for r in sel]))
        plot(os.path.join(a.out, f"scale-{key}.png"), title, "nodes", series, logx=True, logy=True)
    summary += ["## Scale", "", table(rows, ["start", "nodes"] + RATIOS), ""]

    # 2. Failures at 1,000 nodes.
    cases = [("none", []), ("1% die mid-pull", ["--die-fraction", 0.01]), ("10% die mid-pull", ["--die-fraction", 0.1]),
             ("1% serve bad bytes", ["--bad-fraction", 0.01]),
             ("50% stale DNS 30 s", ["--stale-fraction", 0.5, "--stale-new-fraction", 0.3]),
             ("whole image", ["--whole-image"]),
             ("whole, 10% die", ["--whole-image", "--die-fraction", 0.1]),
             ("whole, 50% stale DNS", ["--whole-image", "--stale-fraction", 0.5, "--stale-new-fraction", 0.3])]
    rows = []
    for name, extra in cases:
        r = run(a.sim, base + ["--nodes", 1000] + extra)
        r["case"] = name
        rows.append(r)
    write_csv(os.path.join(a.out, "failures.csv"), rows, ["case"])
    names = [r["case"] for r in rows]
    for key, title in (("origin_bytes_ratio", "origin bytes / unique bytes (1,000 nodes)"),
                       ("p99_completion_ratio", "p99 completion / single-node time (1,000 nodes)")):
        plot(os.path.join(a.out, f"failures-{key}.png"), title, "", [(key, range(len(rows)), [r[key] for r in rows])],
             labels=names)
    summary += ["## Failures (1,000 nodes)", "",
                "Stale DNS: half the nodes miss the newest 30% of nodes (a scale-out just before the start) in their answers for 30 s.", "", table(rows, ["case"] + RATIOS + ["died"]), ""]

    # 3. Links at 1,000 nodes.
    rows = []
    for reg in (1, 10):
        for node in (1, 10, 25):
            rows.append(run(a.sim, base + ["--nodes", 1000, "--registry-gbit", reg, "--node-gbit", node]))
    write_csv(os.path.join(a.out, "links.csv"), rows, [])
    series = []
    for reg in ("1", "10"):
        sel = [r for r in rows if r["registry_gbit"] == reg]
        series.append((f"registry {reg} Gbit/s", [r["node_gbit"] for r in sel], [r["p99_completion_ratio"] for r in sel]))
    plot(os.path.join(a.out, "links.png"), "p99 completion / single-node time (1,000 nodes)", "node link, Gbit/s",
         series)
    summary += ["## Links (1,000 nodes)", "", table(rows, ["registry_gbit", "node_gbit", "single_node_s"] + RATIOS), ""]

    # 4. The design's knob for hot units, and a whole-image read.
    rows = []
    for spread in (0, 1, 4, 16):
        r = run(a.sim, base + ["--nodes", 1000, "--spread-uploads", spread])
        rows.append(r)
    for n in (10, 100, 1000):
        rows.append(run(a.sim, base + ["--nodes", n, "--whole-image"]))
    write_csv(os.path.join(a.out, "design.csv"), rows, [])
    sel = [r for r in rows if r["trace"] != "whole-image"]
    xs = [r["spread_uploads"] for r in sel]
    plot(os.path.join(a.out, "design.png"), "hot-unit spreading, 1,000 nodes", "p2p.spread_uploads (0 = no spreading)",
         [("busiest upload / mean", xs, [r["max_upload_ratio"] for r in sel]),
          ("p99 completion / single node", xs, [r["p99_completion_ratio"] for r in sel])], logy=True)
    summary += ["## Hot-unit spreading and a whole-image read", "",
                table(rows, ["trace", "nodes", "spread_uploads"] + RATIOS), ""]

    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write("\n".join(summary) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    sys.exit(main())
