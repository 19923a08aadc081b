#!/usr/bin/python3
"""Container start with a real runtime (issue 14, "Benchmark"): from the
exec of `podman run` (or of nydusd, for the lazy rows) to the output of
`python3 -V` in the container. Run through examples/bench-containers.sh,
which installs what is missing, builds the binaries and the root
filesystem, then runs this file as root.

The test bed is examples/bench_p2p.py's (test/mount/p2p_harness.py): Debian's
docker-registry in a namespace whose link sends at $RATE (tc tbf, default
100mbit), nodes in namespaces of their own. The image is the Debian 12 root
filesystem with python3 that examples/bench-registry.sh makes and caches,
as a nydus image (RAFS v6, zstd, 1 MiB chunks) and as a plain OCI image
(the same tree as one tar.gz layer, pushed by skopeo). Every run starts with
the page cache dropped. podman runs as this machine allows it (runc,
cgroupfs), containers with `--network none`.

  ociv1        podman in a node's network namespace pulls the OCI image into
               empty storage (its own --root), unpacks it and runs python3
               -V: the runtime's own pull and unpack
  nydus lazy   a node without p2p, empty blob cache: nydusd mounts the image
               from the registry, then podman runs python3 -V from the mount
               (--rootfs MOUNT:O, an overlay as the writable root)
  nydus + P2P  the same on a node whose only peer (node A, which ran the
               container before) holds the data; its own blob cache and
               piece store empty, its registry link unused for data
  floor        podman runs python3 -V from the tree on local disk (--rootfs
               TREE:O): what the runtime itself costs

Environment: RUNS (3), RATE (100mbit), OUT_DIR (/tmp/bench-containers),
BENCH_DIR and ROOTFS (as bench-registry.sh), NYDUSD, NYDUS_IMAGE.
"""
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test" / "mount"))
sys.path.insert(0, str(ROOT / "examples"))
import bench_p2p as bp  # noqa: E402
import containerd_harness as ch  # noqa: E402
import p2p_harness as ph  # noqa: E402
import podman_harness as pm  # noqa: E402

RUNS = max(1, int(os.environ.get("RUNS", "3")))
RATE = os.environ.get("RATE", "100mbit")
OUT_DIR = pathlib.Path(os.environ.get("OUT_DIR", "/tmp/bench-containers"))
REPO = "bench/debian"
OCI_REPO = "bench/debian-oci"


def oci_layout(directory, layer):
    """An OCI layout with `layer` (tar.gz) as its one layer, python3 -V as its command."""
    diff = hashlib.sha256()
    with gzip.open(layer, "rb") as f:
        while block := f.read(1 << 20):
            diff.update(block)
    return ch.write_oci_layout(directory, [(layer.read_bytes(), diff.hexdigest())], ["/usr/bin/python3", "-V"])


def first_line_time(args, t0):
    """Runs `args`; (first stdout line, seconds from t0 to it, exit status)."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    t = time.monotonic() - t0
    p.stdout.read()
    err = p.stderr.read()
    rc = p.wait()
    if rc != 0:
        raise SystemExit(f"{args[0]} exited {rc}: {err[-2000:]}")
    return line, t


def main():
    if os.geteuid() != 0:
        raise SystemExit("run as root (examples/bench-containers.sh)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="nydus-bench-containers-"))
    rows = {"ociv1": [], "nydus_lazy": [], "nydus_p2p": [], "local_dir": []}
    extra = {"ociv1_origin": [], "nydus_lazy_mount": [], "nydus_lazy_origin": [], "nydus_p2p_mount": [],
             "nydus_p2p_origin": []}
    try:
        layer = bp.ensure_layer()
        version = bp.chroot_python(bp.TREE)
        (work / "image").mkdir()
        image = ph.build_image(bp.TREE, work / "image")
        oci = oci_layout(work / "oci", layer)
        bp.say(f"tree {bp.TREE}: {version}; OCI layer {layer.stat().st_size / 2**20:.1f} MiB; nydus blob "
               f"{image.blob_size / 2**20:.1f} MiB")
        with ph.Cluster(nodes=0, rate=RATE, image=image, repo=REPO) as c:
            ch.skopeo_copy(oci, f"{c.registry_host}/{OCI_REPO}:v1")
            plain = c.add_node(p2p=False)
            a = c.add_node(p2p_extra={"peer_timeout_ms": 500})
            b = c.add_node(p2p_extra={"peer_timeout_ms": 500})
            a.p2p_extra["peers"] = [a.address]   # A alone is a member
            b.p2p_extra["peers"] = [a.address]   # B owns nothing: all its data comes from A
            a.start()
            out, _ = pm.python_version_in(a)      # A holds what the container reads
            assert out == version, (out, version)
            for run in range(1, RUNS + 1):
                bp.say(f"run {run}/{RUNS}: OCIv1 (podman pull + unpack + run) ...")
                storage = work / f"podman-{run}"
                bp.drop_caches()
                o0 = c.origin_bytes()
                t0 = time.monotonic()
                out, t = first_line_time(
                    ["nsenter", f"--net=/run/netns/{plain.ns}"] + pm.PODMAN +
                    ["--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver",
                     "overlay", "run", "--rm", "--tls-verify=false", "--network", "none", "--ulimit",
                     "nofile=1024:1024", "--ulimit", "nproc=1024:1024", f"{c.registry_host}/{OCI_REPO}:v1"], t0)
                assert out == version, (out, version)
                rows["ociv1"].append(t)
                extra["ociv1_origin"].append(c.origin_bytes() - o0)
                subprocess.run(pm.PODMAN + ["--root", str(storage / "root"), "--runroot", str(storage / "run"),
                                            "rmi", "-a", "-f"], capture_output=True)
                shutil.rmtree(storage, ignore_errors=True)

                bp.say(f"run {run}/{RUNS}: the tree on local disk (podman's own floor) ...")
                bp.drop_caches()
                t0 = time.monotonic()
                out, t = first_line_time(pm.PODMAN + ["run", "--rm", "--network", "none", "--ulimit",
                                                      "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--rootfs",
                                                      f"{bp.TREE}:O", "/usr/bin/python3", "-V"], t0)
                assert out == version, (out, version)
                rows["local_dir"].append(t)

                for key, node in (("nydus_lazy", plain), ("nydus_p2p", b)):
                    bp.say(f"run {run}/{RUNS}: {key} ...")
                    if node.running:
                        node.stop()
                    node.drop_blob_cache()
                    if node.p2p:
                        node.drop_piece_store()
                    bp.drop_caches()
                    o0 = c.origin_bytes()
                    t0 = time.monotonic()
                    node.start(wait=60, poll=0.05, need_api=False)
                    tm = time.monotonic() - t0
                    enter = pm.enter_mount_namespace(node.pid)
                    out, t = first_line_time(
                        enter + pm.PODMAN + ["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                                             "--ulimit", "nproc=1024:1024", "--rootfs", f"{node.mountpoint}:O",
                                             "/usr/bin/python3", "-V"], t0)
                    assert out == version, (key, out, version)
                    rows[key].append(t)
                    extra[key + "_mount"].append(tm)
                    extra[key + "_origin"].append(c.origin_bytes() - o0)
                    node.stop()
        report(rows, extra, version, image, layer)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows, extra, version, image, layer):
    med = {k: bp.median(v) for k, v in rows.items()}
    base = med["ociv1"]
    lines = [
        f"container start to python3 -V output ({version}; registry link {RATE}; median of {RUNS})",
        f"image: OCI layer {layer.stat().st_size / 2**20:.1f} MiB tar.gz, nydus blob {image.blob_size / 2**20:.1f} MiB",
        "",
        f"{'row':<44} {'seconds':>8} {'ratio':>7}  origin MiB",
    ]
    names = {"ociv1": "OCIv1: podman pull + unpack + run",
             "nydus_lazy": "nydus lazy mount + podman run",
             "nydus_p2p": "nydus + P2P, data on another node",
             "local_dir": "(floor) the tree on local disk + podman run"}
    for key in ("ociv1", "nydus_lazy", "nydus_p2p", "local_dir"):
        origin = bp.median(extra[key + "_origin"]) / 2**20 if key + "_origin" in extra else 0.0
        lines.append(f"{names[key]:<44} {med[key]:8.3f} {med[key] / base:6.3f}x  {origin:8.1f}")
    for key in ("nydus_lazy", "nydus_p2p"):
        lines.append(f"  {key}: exec nydusd -> mount {bp.median(extra[key + '_mount']):.3f} s")
    lines.append("")
    lines.append("all runs: " + json.dumps({k: [round(x, 3) for x in v] for k, v in rows.items()}))
    text = "\n".join(lines)
    print(text)
    (OUT_DIR / "table.txt").write_text(text + "\n")
    (OUT_DIR / "results.json").write_text(json.dumps({"rows": rows, "extra": extra}, indent=1))


if __name__ == "__main__":
    main()
