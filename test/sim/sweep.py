#!/usr/bin/env python3
"""Runs the p2p-sim sweeps of issue "Scale past one machine" and writes, per
sweep, a CSV (every column p2p-sim prints) and a PNG chart, plus summary.md
with the tables p2p/README.md quotes.

    test/sim/sweep.py --sim build/test/sim/p2p-sim --out /tmp/sim [--quick]

--quick leaves out the 10,000-node runs (the CI smoke run)."""
import argparse
import csv
import io
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for start in ("together", "staggered 60 s"):
        sel = [r for r in rows if r["start"] == start]
        xs = [int(r["nodes"]) for r in sel]
        ax[0].plot(xs, [float(r["origin_bytes_ratio"]) for r in sel], "o-", label=start)
        ax[1].plot(xs, [float(r["p99_completion_ratio"]) for r in sel], "o-", label=start + " p99")
        ax[1].plot(xs, [float(r["p50_completion_ratio"]) for r in sel], "x--", label=start + " p50")
        ax[2].plot(xs, [float(r["max_upload_ratio"]) for r in sel], "o-", label=start)
    for axis, title in zip(ax, ("origin bytes / unique bytes", "completion / single node", "busiest upload / mean")):
        axis.set_xscale("log")
        axis.set_xlabel("nodes")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    ax[1].set_yscale("log")
    ax[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "scale.png"), dpi=90)
    summary += ["## Scale", "", table(rows, ["start", "nodes"] + RATIOS), ""]

    # 2. Failures at 1,000 nodes.
    cases = [("none", []), ("1% die mid-pull", ["--die-fraction", 0.01]), ("10% die mid-pull", ["--die-fraction", 0.1]),
             ("1% serve bad bytes", ["--bad-fraction", 0.01]),
             ("50% stale DNS for 30 s (10% newest unseen)", ["--stale-fraction", 0.5]),
             ("whole image, none", ["--whole-image"]),
             ("whole image, 10% die mid-pull", ["--whole-image", "--die-fraction", 0.1]),
             ("whole image, 50% stale DNS for 30 s", ["--whole-image", "--stale-fraction", 0.5])]
    rows = []
    for name, extra in cases:
        r = run(a.sim, base + ["--nodes", 1000] + extra)
        r["case"] = name
        rows.append(r)
    write_csv(os.path.join(a.out, "failures.csv"), rows, ["case"])
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    names = [r["case"] for r in rows]
    ax[0].barh(names, [float(r["origin_bytes_ratio"]) for r in rows])
    ax[0].set_title("origin bytes / unique bytes (1,000 nodes)")
    ax[1].barh(names, [float(r["p99_completion_ratio"]) for r in rows])
    ax[1].set_title("p99 completion / single node")
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "failures.png"), dpi=90)
    summary += ["## Failures (1,000 nodes)", "", table(rows, ["case"] + RATIOS + ["died"]), ""]

    # 3. Links at 1,000 nodes.
    rows = []
    for reg in (1, 10):
        for node in (1, 10, 25):
            rows.append(run(a.sim, base + ["--nodes", 1000, "--registry-gbit", reg, "--node-gbit", node]))
    write_csv(os.path.join(a.out, "links.csv"), rows, [])
    fig, ax = plt.subplots(figsize=(6, 4))
    for reg in ("1", "10"):
        sel = [r for r in rows if r["registry_gbit"] == reg]
        ax.plot([float(r["node_gbit"]) for r in sel], [float(r["p99_completion_ratio"]) for r in sel], "o-",
                label=f"registry {reg} Gbit/s")
    ax.set_xlabel("node link, Gbit/s")
    ax.set_title("p99 completion / single node (1,000 nodes)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "links.png"), dpi=90)
    summary += ["## Links (1,000 nodes)", "", table(rows, ["registry_gbit", "node_gbit", "single_node_s"] + RATIOS), ""]

    # 4. The design's knob for hot units, and a whole-image read.
    rows = []
    for spread in (0, 1, 4, 16):
        r = run(a.sim, base + ["--nodes", 1000, "--spread-uploads", spread])
        rows.append(r)
    for n in (10, 100, 1000):
        rows.append(run(a.sim, base + ["--nodes", n, "--whole-image"]))
    write_csv(os.path.join(a.out, "design.csv"), rows, [])
    fig, ax = plt.subplots(figsize=(6, 4))
    sel = [r for r in rows if r["trace"] != "whole-image"]
    ax.plot([int(r["spread_uploads"]) for r in sel], [float(r["max_upload_ratio"]) for r in sel], "o-",
            label="busiest upload / mean")
    ax.plot([int(r["spread_uploads"]) for r in sel], [float(r["p99_completion_ratio"]) for r in sel], "x-",
            label="p99 / single node")
    ax.set_xlabel("p2p.spread_uploads (0 = no spreading)")
    ax.set_title("hot-unit spreading, 1,000 nodes")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "design.png"), dpi=90)
    summary += ["## Hot-unit spreading and a whole-image read", "",
                table(rows, ["trace", "nodes", "spread_uploads"] + RATIOS), ""]

    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write("\n".join(summary) + "\n")
    print("\n".join(summary))


if __name__ == "__main__":
    sys.exit(main())
