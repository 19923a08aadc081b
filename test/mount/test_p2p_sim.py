"""p2p-sim, the P2P scale simulator (test/sim, p2p/README.md "At scale"), as
its users run it: the CLI contract (a CSV header and one row with the
columns the issue names, --help, clear errors), the 1,000-node run under a
minute, and the sweep script writing its CSVs and charts. No daemon runs
here, so only the release build runs it (`once`)."""
import csv
import io
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from conftest import NYDUSD

pytestmark = pytest.mark.once

ROOT = pathlib.Path(__file__).resolve().parents[2]
P2P_SIM = pathlib.Path(os.environ.get("P2P_SIM", NYDUSD.parent.parent / "test" / "sim" / "p2p-sim"))
REQUIRED = ["nodes", "origin_bytes_ratio", "p50_completion_ratio", "p99_completion_ratio", "max_upload_ratio",
            "failed_reads"]


def sim(*args, check=True, timeout=120):
    p = subprocess.run([str(P2P_SIM), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"p2p-sim {args}: exit {p.returncode}\n{p.stdout}{p.stderr}"
    return p


def one_row(stdout):
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert len(rows) == 1, stdout
    return rows[0]


def test_p2p_sim_default_scenario_at_1000_nodes_within_a_minute():
    start = time.monotonic()
    p = sim("--nodes", 1000)
    took = time.monotonic() - start
    row = one_row(p.stdout)
    print(f"1,000 nodes in {took:.2f}s: " + ", ".join(f"{k}={row[k]}" for k in REQUIRED))
    assert took < 60
    assert all(k in row for k in REQUIRED)
    assert row["nodes"] == "1000" and row["trace"] == "python-start"
    assert int(row["failed_reads"]) == 0
    assert int(row["completed"]) == 1000
    # Each byte from the origin about once (granule rounding only).
    assert 1.0 <= float(row["origin_bytes_ratio"]) <= 1.02


def test_p2p_sim_help_and_errors(tmp_path):
    helptext = sim("--help").stdout
    for option in ("--nodes", "--trace", "--registry-gbit", "--node-gbit", "--stagger-s", "--die-fraction",
                   "--bad-fraction", "--stale-fraction", "--whole-image", "--spread-uploads"):
        assert option in helptext, option
    bad = tmp_path / "bad.csv"
    bad.write_text("t_us,blob,blob_size,offset,length\n0," + "a" * 64 + ",100,90,20\n")
    p = sim("--trace", bad, check=False)
    assert p.returncode == 2 and "line 2" in p.stderr and "not inside the blob" in p.stderr, p.stderr
    p = sim("--trace", tmp_path / "missing.csv", check=False)
    assert p.returncode == 2 and "cannot open" in p.stderr, p.stderr
    p = sim("--nodes", 0, check=False)
    assert p.returncode != 0 and "nodes" in p.stderr, p.stderr
    p = sim("--unit-size", 1000, check=False)
    assert p.returncode == 2 and "multiple" in p.stderr, p.stderr


def test_p2p_sim_reads_a_recorded_trace_file():
    """The shipped trace given as a file gives the same row as the built-in one."""
    builtin = one_row(sim("--nodes", 50).stdout)
    from_file = one_row(sim("--nodes", 50, "--trace", ROOT / "examples" / "traces" / "python-start.csv").stdout)
    for k in REQUIRED + ["origin_bytes", "p99_s"]:
        assert builtin[k] == from_file[k], k


def test_p2p_sim_sweep_writes_csvs_and_charts(tmp_path):
    if not shutil.which("gnuplot"):
        pytest.skip("gnuplot not installed (test/install-deps.sh installs gnuplot-nox)")
    p = subprocess.run([sys.executable, str(ROOT / "test" / "sim" / "sweep.py"), "--sim", str(P2P_SIM), "--out",
                        str(tmp_path), "--quick"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("scale.csv", "failures.csv", "links.csv", "design.csv", "summary.md", "links.png", "design.png",
                 "scale-p99_completion_ratio.png", "failures-origin_bytes_ratio.png"):
        assert (tmp_path / name).stat().st_size > 100, name
    assert (tmp_path / "links.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "scale.csv")))
    assert {r["nodes"] for r in rows} == {"10", "100", "1000"}
    assert all(int(r["failed_reads"]) == 0 for r in rows)
