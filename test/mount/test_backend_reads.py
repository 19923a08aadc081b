"""GET /api/v1/metrics/backend/reads: the backend read trace a daemon keeps
when its config has access_pattern (backend/read_trace.h), as CSV.

The V6 fixture (one zstd blob, two 1-chunk files) is mounted as the
snapshotter mounts it; each file read must add exactly the backend fetch of
that file's chunk: the row names the blob and its size, and its offset and
length are the chunk's place in the raw blob, proven by decompressing those
raw bytes back into the file. Reads from the blob cache add nothing.
"""
import csv
import io
import json
import os
import subprocess

from p2p_harness import NYDUS_IMAGE, blob_chunk_table
from test_api import V6_BLOBS, V6_BOOT, SnapshotterLikeDaemon, UnixHTTPConnection, call, dedicated_config

HEADER = ["t_us", "blob", "blob_size", "offset", "length", "chunks"]


def get_reads(sock, query=""):
    """(status, content type, rows as dicts with int fields, raw text)."""
    conn = UnixHTTPConnection(sock)
    try:
        conn.request("GET", "/api/v1/metrics/backend/reads" + query)
        resp = conn.getresponse()
        text = resp.read().decode()
        status, ctype = resp.status, resp.getheader("Content-Type")
    finally:
        conn.close()
    if status != 200:
        return status, ctype, None, text
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == HEADER, text
    rows = []
    for line in lines[1:]:
        row = dict(zip(HEADER, line))
        for k in HEADER:
            if k != "blob":
                row[k] = int(row[k])
        rows.append(row)
    return status, ctype, rows, text


def fixture_blob():
    info = json.loads(subprocess.run([str(NYDUS_IMAGE), "inspect", str(V6_BOOT), "--request", "blobs"],
                                     capture_output=True, text=True, check=True).stdout)
    assert len(info) == 1
    return info[0]


def unzstd(raw):
    return subprocess.run(["zstd", "-d", "-c", "-q"], input=raw, capture_output=True, check=True).stdout


def test_each_backend_fetch_is_a_row_naming_the_blob_and_the_chunk_of_the_file_read(tmp_path):
    blob = fixture_blob()
    blob_path = V6_BLOBS / blob["id"]
    raw_blob = blob_path.read_bytes()
    assert blob["compressed_size"] == len(raw_blob)
    chunks = set(blob_chunk_table(blob_path, blob))
    assert len(chunks) == 2

    d = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"))
    try:
        d.wait_socket()
        status, ctype, rows, _ = get_reads(d.sock)
        assert status == 200 and ctype.startswith("text/csv")
        assert [r for r in rows if r["chunks"] > 0] == []

        seen = []
        for name in ("lib.rs", "sync_io.rs"):
            data = (d.mountpoint / name).read_bytes()
            status, _, rows, text = get_reads(d.sock, "?id=%2F")
            assert status == 200
            fetches = [r for r in rows if r["chunks"] > 0]
            # The reads before this file's stay as they were; this file adds one.
            assert fetches[:len(seen)] == seen, text
            assert len(fetches) == len(seen) + 1, text
            row = fetches[-1]
            assert row["blob"] == blob["id"] and row["blob_size"] == len(raw_blob), text
            assert row["chunks"] == 1
            assert (row["offset"], row["length"]) in chunks, text
            assert unzstd(raw_blob[row["offset"]:row["offset"] + row["length"]]) == data, name
            seen = fetches

        # Times start at 0 and never decrease.
        times = [r["t_us"] for r in rows]
        assert times[0] == 0 and times == sorted(times)
        # The two files are the blob's two chunks.
        assert {(r["offset"], r["length"]) for r in seen} == chunks
        # Every raw byte the backend read is in the trace, metadata rows
        # (chunks 0) included.
        status, backend, _ = call(d.sock, "GET", "/api/v1/metrics/backend")
        assert sum(r["length"] for r in rows) == backend["read_amount_total"]
        assert len(rows) == backend["read_count"]

        # Cache hits fetch nothing.
        (d.mountpoint / "lib.rs").read_bytes()
        (d.mountpoint / "sync_io.rs").read_bytes()
        assert get_reads(d.sock)[2] == rows

        # An unknown instance: 404 as the other metrics endpoints.
        status, _, _, text = get_reads(d.sock, "?id=poison")
        assert status == 404 and "BackendReads(Metrics(Stats(NoCounter)))" in json.loads(text)["message"]
        assert d.stop() == 0
    finally:
        d.stop()
    assert "backend read trace: %d requests recorded" % len(rows) in d.log()


def test_without_access_pattern_the_trace_is_the_header_alone(tmp_path):
    config = dedicated_config(tmp_path / "cache")
    config["access_pattern"] = False
    d = SnapshotterLikeDaemon(tmp_path, config)
    try:
        d.wait_socket()
        assert (d.mountpoint / "lib.rs").read_bytes()
        status, ctype, rows, text = get_reads(d.sock)
        assert status == 200 and ctype.startswith("text/csv")
        assert rows == [] and text == ",".join(HEADER) + "\n"
        # As the pattern endpoint answers when it is off.
        assert call(d.sock, "GET", "/api/v1/metrics/pattern")[:2] == (200, [])
        status, backend, _ = call(d.sock, "GET", "/api/v1/metrics/backend")
        assert backend["read_count"] >= 1
    finally:
        d.stop()
