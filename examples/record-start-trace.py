#!/usr/bin/python3
"""Records the backend reads of a real container start: `python3 -V` run by
podman from a lazy nydus mount, as the CSV of GET /api/v1/metrics/backend/reads
(README.md, "Admin API"), for a P2P simulator to replay.

  1. the small root filesystem that runs this machine's python3
     (test/mount/podman_harness.build_python_rootfs), built by our
     nydus-image as the container benchmark builds its image (RAFS v6, zstd,
     1 MiB chunks, blob id = the blob's sha256: p2p_harness.build_image);
  2. our nydusd mounts it with a localfs backend (the trace is about which
     raw blob bytes are asked for, not where they come from), an empty blob
     cache, `access_pattern: true` (which keeps the trace) and the
     snapshotter's amplify_io (--amplify-io, default 1 MiB);
  3. `podman run --rootfs <mount>:O /usr/bin/python3 -V` (runc, cgroupfs, as
     this machine allows, and as examples/bench_containers.py runs it);
  4. the trace is written to --out, and a summary printed: rows, unique raw
     bytes read (the union of the ranges), the blob's size.

Run as root: examples/record-start-trace.py --out examples/traces/python-start.csv
Binaries: --nydusd / --nydus-image, else $NYDUSD / $NYDUS_IMAGE, else build/.
"""
import argparse
import csv
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("unix", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.socket_path))


def api_get(sock, path):
    conn = UnixHTTPConnection(sock)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise SystemExit(f"GET {path}: {resp.status} {body}")
        return body
    finally:
        conn.close()


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def unique_bytes(rows):
    """Bytes in the union of the rows' ranges, per blob."""
    total = 0
    by_blob = {}
    for r in rows:
        by_blob.setdefault(r["blob"], []).append((int(r["offset"]), int(r["offset"]) + int(r["length"])))
    for ranges in by_blob.values():
        end = -1
        for a, b in sorted(ranges):
            if a > end:
                total += b - a
                end = b
            elif b > end:
                total += b - end
                end = b
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the CSV file to write")
    parser.add_argument("--nydusd", default=os.environ.get("NYDUSD", str(ROOT / "build/daemon/nydusd")))
    parser.add_argument("--nydus-image",
                        default=os.environ.get("NYDUS_IMAGE", str(ROOT / "build/builder/nydus-image")))
    parser.add_argument("--amplify-io", type=int, default=1 << 20,
                        help="the instance's amplify_io (merged fetch size; 0: one chunk per fetch)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (FUSE mount and podman)")
    # p2p_harness reads $NYDUS_IMAGE when imported.
    os.environ["NYDUS_IMAGE"] = str(pathlib.Path(args.nydus_image).resolve())
    sys.path.insert(0, str(ROOT / "test" / "mount"))
    import p2p_harness as ph  # noqa: E402
    import podman_harness as pm  # noqa: E402

    expected = subprocess.run(["/usr/bin/python3", "-V"], capture_output=True, text=True, check=True).stdout.strip()
    work = pathlib.Path(tempfile.mkdtemp(prefix="nydus-start-trace-"))
    os.chmod(work, 0o755)
    proc = None
    mnt = work / "mnt"
    try:
        tree = pm.build_python_rootfs(work / "rootfs")
        (work / "image").mkdir()
        image = ph.build_image(tree, work / "image")
        # localfs: blob <id> is <dir>/<id>; the builder named the file by its own id.
        blobs = work / "localfs"
        blobs.mkdir()
        os.link(image.blob_path, blobs / image.digest)
        (work / "cache").mkdir()
        mnt.mkdir()
        config = {
            "device": {"backend": {"type": "localfs", "config": {"dir": str(blobs)}},
                       "cache": {"type": "blobcache", "config": {"work_dir": str(work / "cache")}}},
            "mode": "direct", "digest_validate": False, "enable_xattr": True, "amplify_io": args.amplify_io,
            "iostats_files": False, "access_pattern": True, "latest_read_files": False,
            "fs_prefetch": {"enable": False},
        }
        (work / "config.json").write_text(json.dumps(config))
        sock = work / "api.sock"
        log = work / "nydusd.log"
        proc = subprocess.Popen([args.nydusd, "fuse", "--bootstrap", str(image.bootstrap), "--config",
                                 str(work / "config.json"), "--mountpoint", str(mnt), "--apisock", str(sock),
                                 "--log-level", "info", "--log-file", str(log)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not (is_mounted(mnt) and sock.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nydusd did not mount: {proc.stderr.read().decode() if proc.poll() is not None else ''}"
                                 f"{log.read_text(errors='replace') if log.exists() else ''}")
            time.sleep(0.02)

        run = subprocess.run(pm.PODMAN + ["run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit",
                                          "nproc=1024:1024", "--network", "none", "--rootfs", f"{mnt}:O",
                                          "/usr/bin/python3", "-V"],
                             capture_output=True, text=True, timeout=300)
        if run.returncode != 0 or run.stdout.strip() != expected:
            raise SystemExit(f"podman run: rc {run.returncode}, out {run.stdout!r}, expected {expected!r}: "
                             f"{run.stderr[-2000:]}")

        text = api_get(sock, "/api/v1/metrics/backend/reads")
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        backend = json.loads(api_get(sock, "/api/v1/metrics/backend"))

        rows = list(csv.DictReader(text.splitlines()))
        fetches = [r for r in rows if int(r["chunks"]) > 0]
        read = sum(int(r["length"]) for r in rows)
        assert read == backend["read_amount_total"], (read, backend["read_amount_total"])
        assert all(r["blob"] == image.digest and int(r["blob_size"]) == image.blob_size for r in rows)
        print(f"{run.stdout.strip()} from {mnt} (amplify_io {args.amplify_io})")
        print(f"trace: {out}: {len(rows)} rows ({len(fetches)} chunk fetches carrying "
              f"{sum(int(r['chunks']) for r in fetches)} chunks, {len(rows) - len(fetches)} metadata reads), "
              f"last at {int(rows[-1]['t_us']) / 1e6:.3f} s" if rows else f"trace: {out}: no rows")
        print(f"raw bytes read {read} ({read / 2**20:.2f} MiB), unique {unique_bytes(rows)} "
              f"({unique_bytes(rows) / 2**20:.2f} MiB)")
        print(f"blob {image.digest}: {image.blob_size} bytes ({image.blob_size / 2**20:.2f} MiB), "
              f"{len(image.chunks)} chunks, {image.unique_bytes} bytes of chunk data")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
