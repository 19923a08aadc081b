"""A cluster of real nydusd daemons in network namespaces, for the P2P tests.

    host namespace                      bridge nb-<run>  (10.A.B.1/24)
       |-- veth --> [np2p-<run>-reg]   docker-registry  10.A.B.2:5000
       |                               egress shaped by tc tbf (`rate`)
       |-- veth --> [np2p-<run>-dns]   dnsmasq          10.A.B.3:53 (Cluster.dns())
       |-- veth --> [np2p-<run>-n0]    nydusd           10.A.B.10  (peer port 65002)
       |-- veth --> [np2p-<run>-n1]    nydusd           10.A.B.11
       |   ...
       `-- veth --> [np2p-<run>-f0]    a fault peer     10.A.B.200 (ByzantinePeer, StallingPeer)

<run> is this process's pid in base 36 plus a per-process counter; A.B is
picked per Cluster so that two clusters (and other users of 10/8 on the
host) never share a subnet. The nodes' links are unshaped unless
`node_rate` is given; the registry's link sends at `rate` (default 100mbit).

API (everything a test starts is stopped by Cluster.close(), also on failure;
a Cluster first removes what a killed earlier run left: namespaces, links,
/etc/netns entries, processes inside them, work directories):

  TestImage / build_test_image(seed)
      A deterministic tree (a few hundred files, 1 KiB to 3 MiB, some
      compressible, some duplicated; ~24 MiB) built by $NYDUS_IMAGE as RAFS
      v6, zstd, 1 MiB chunks, then `merge --blob-digests` so that the blob id
      is the sha256 of the blob file. Built once per seed and process.
      .source (the tree), .files {relative path: sha256}, .bootstrap,
      .blob_path, .digest, .chunks [(compressed offset, size)], .unique_bytes.
  build_image(source, work, files=None, sizes=None) -> TestImage
      Any tree (e.g. a root filesystem) built the same way (for Cluster(image=)).
  blob_chunk_table(blob_path, blob_info)  (offset, size) by chunk index
  Cluster(nodes=0, rate="100mbit", node_rate=None, p2p=True, peers="static",
          p2p_extra=None, image=None, repo="p2p/test", basic_auth=None, token_server=None)
      .registry_ip, .registry_host ("ip:5000"), .host_ip, .subnet, .repo,
      .image, .nodes, .extra_peers, .secret / .secret_path (every node's
      p2p.secret_file: peer requests are signed, unless signed=False)
      tls=True: .pki (PeerPki), every node has p2p.tls_cert/tls_key/tls_ca
      (Node.tls_files()): the peer port speaks mutual TLS
      peer_auth(method, path, range_value="", t=None, nonce=None, secret=None)
                                         an X-Nydus-P2P-Auth value, computed in Python
      add_node() -> Node                 (namespace only; Node.start() runs nydusd)
      start_nodes(nodes=None)            start several, in parallel
      peer_addresses()                   "ip:65002" of every node, started or not
      read_all(nodes, check=True)        every node reads every file at once; reports
      origin_bytes(settle=True), origin_requests(), link_tx_bytes(), unique_bytes
      bearer(repo)                       with token_server: a token for that repository only
      dns(nodes) -> Dns                  dnsmasq answering NODES_NAME
      byzantine_peer(corrupt="flip"), stalling_peer() -> FaultPeer
                                         (added to every node's static peers list)
  Node
      .index, .ns, .ip, .address, .dir, .cache_dir, .store_dir, .mountpoint,
      .apisock, .log_path, .config_path, .pid, .running
      start(wait=20, poll=0.01, shared=False, need_api=True, snapshotter_argv=False),
      stop() (SIGTERM) -> rc, kill() (SIGKILL), restart()
      mount_instance(name, cache_dir=None, config=None)  POST /api/v1/mount on a shared daemon
      .p2p_override                      a whole `p2p` object instead of the harness's
      tls_files() -> (cert, key)         this node's certificate of the cluster CA (tls=True)
      read_all(check=True, order=None) -> ReadReport, read_file(rel) -> bytes
      run_in_mount(args)                 args chrooted into the mount (e.g. python3 -V)
      (MIRROR_URL: a node's mirror endpoint, reached from inside its namespace)
      stock_nydusd(config) -> StockNydusd  a nydusd without p2p in this node's namespace
                                         with the given config (a stock client of the mirror):
                                         .root, read_all(), log(), stop()
      cut_registry(), restore_registry()   this node only; failures are immediate
      origin_rx_bytes()                  live bytes received on its registry connections
      metrics() -> GET /api/v1/metrics/backend (dict), api(path)
      log(), p2p_log_lines(peer=None, since=None)
      drop_blob_cache()                  empty the blob cache, keep the piece store
      drop_piece_store()                 empty the piece store, keep the blob cache
  PeerPki(directory, name): .ca_path, issue(name, ip, cert_path, key_path)
  Dns: set(nodes_or_ips), queries(since=0) -> [(client ip, name)]
  FaultPeer: .address, .ip, .events(), .served_bytes(), .connections(), stop()

Where the FUSE mount lives: nydusd runs under `ip netns exec`, which gives it
a mount namespace of its own (needed for /etc/netns/<ns>/resolv.conf), so
its mount is not in the host's mount table. Readers reach it through
/proc/<nydusd pid>/root<mountpoint>, i.e. through nydusd's own mount
namespace; when nydusd dies, the namespace and the mount go with it.
"""
import atexit
import base64
import calendar
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import hmac
import ipaddress
import http.client
import json
import os
import pathlib
import random
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import pytest

import registry_harness as rh
from conftest import sha256_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
NYDUSD = pathlib.Path(os.environ.get("NYDUSD", ROOT / "build" / "daemon" / "nydusd"))
NYDUS_IMAGE = pathlib.Path(os.environ.get("NYDUS_IMAGE", ROOT / "build" / "builder" / "nydus-image"))
FAULT_PEER = pathlib.Path(__file__).resolve().parent / "p2p_fault_peer.py"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
DNSMASQ = "/usr/sbin/dnsmasq"

PEER_PORT = 65002
MIRROR_URL = "http://127.0.0.1:65001"  # every node's mirror endpoint, inside its namespace (the default mirror_listen)
PEER_AUTH_HEADER = "X-Nydus-P2P-Auth"
REGISTRY_PORT = 5000
NODES_NAME = "nodes.p2p.test"
PREFIX = "np2p"            # netns names: np2p-<run>-reg / -n<i> / -f<j>
LINK_PREFIXES = ("nb-", "nv-", "nq-")  # bridge, host-side veth, peer-side veth (renamed eth0 inside)
HARNESS_UA = "np2p-harness"  # the harness's own registry requests; origin_bytes() leaves them out
# docker-registry's send buffer in its namespace (tcp_wmem max): bytes a
# killed client leaves unsent but already counted as written (see origin_bytes).
REGISTRY_WMEM_MAX = 256 * 1024

_REQUIRED = ("ip", "tc", "ss", "curl", "docker-registry", "getent")


def require_cluster_tools(dns=False):
    """Skips (fails under CI) when something a Cluster needs is missing."""
    missing = [p for p in _REQUIRED if shutil.which(p) is None]
    if dns and not os.path.exists(DNSMASQ):
        missing.append("dnsmasq (dnsmasq-base)")
    for binary in (NYDUSD, NYDUS_IMAGE):
        if not os.access(binary, os.X_OK):
            missing.append(str(binary))
    if os.geteuid() != 0:
        missing.append("root")
    if missing:
        message = "P2P cluster tests need " + ", ".join(missing) + " (test/install-deps.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _run(args, ns=None, check=True, timeout=30, **kwargs):
    args = [str(a) for a in args]
    if ns is not None:
        args = ["ip", "netns", "exec", ns] + args
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _base36(n):
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _pid_of_run(run):
    """The pid a run tag (<base36 pid>-<counter>) was made by, or None."""
    try:
        return int(run.split("-")[0], 36)
    except ValueError:
        return None


def _run_alive(run):
    pid = _pid_of_run(run)
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"python" in cmdline


# ---------------------------------------------------------------------------
# The test image


@dataclasses.dataclass
class TestImage:
    __test__ = False  # not a pytest class
    work: pathlib.Path
    source: pathlib.Path
    files: dict          # relative path -> sha256 hex
    sizes: dict          # relative path -> size
    bootstrap: pathlib.Path
    blob_path: pathlib.Path   # named by the builder's id, not by .digest
    digest: str               # sha256 hex of the blob file = its id in the bootstrap
    blob_size: int
    chunks: list              # distinct (compressed offset, compressed size) of the blob's chunks
    unique_bytes: int         # sum of their sizes: what a cluster reading every file must pull once

    @property
    def total_file_bytes(self):
        return sum(self.sizes.values())


_IMAGES = {}
_IMAGES_LOCK = threading.Lock()


def _make_tree(root, seed, target=24 << 20):
    """A few hundred files over nested directories: mostly small (1 KiB to
    256 KiB, log-uniform), five large (1-2.5 MiB); half random bytes, a quarter
    text-like (compresses ~4x), a quarter half-and-half; three exact
    duplicates (one chunk set stored once). Deterministic for a seed."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(400)]

    def content(size):
        kind = rng.random()
        if kind < 0.5:
            return rng.randbytes(size)
        text = bytearray()
        while len(text) < size:
            text += rng.choice(words) + (b"\n" if rng.random() < 0.1 else b" ")
        text = bytes(text[:size])
        if kind < 0.75:
            return text
        return rng.randbytes(size // 2) + text[:size - size // 2]

    dirs = [pathlib.Path(".")]
    for i in range(14):
        dirs.append(rng.choice(dirs) / f"d{i:02d}")
    sizes = [rng.randint(1 << 20, 5 << 19) for _ in range(5)]  # 1-2.5 MiB: multi-chunk files
    total = sum(sizes)
    while total < target:
        size = min(int(1024 * (256 ** rng.random())), max(1024, target - total))  # 1 KiB-256 KiB
        sizes.append(size)
        total += size
    rng.shuffle(sizes)
    files = {}
    for i, size in enumerate(sizes):
        rel = dirs[rng.randrange(len(dirs))] / f"f{i:03d}.bin"
        files[str(rel)] = content(size)
    names = sorted(files)
    for n, dup in enumerate(names[:3]):
        files[f"dup{n}.bin"] = files[dup]
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1_600_000_000, 1_600_000_000))
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}, \
        {rel: len(data) for rel, data in files.items()}


def _blob_chunks(blob_path, blob_info):
    """Distinct (compressed offset, compressed size) of the chunks, from the
    blob's chunk-info array (blob.meta, at meta_ci_offset; v1 16-byte or v2
    24-byte entries as in bootstrap/blob_meta.cc)."""
    return sorted(set(blob_chunk_table(blob_path, blob_info)))


def blob_chunk_table(blob_path, blob_info):
    """(compressed offset, compressed size) of every chunk of the blob, by
    chunk index (the index of the blob cache's chunk_map bits)."""
    offset = blob_info["meta_ci_offset"]
    with open(blob_path, "rb") as f:
        f.seek(offset)
        raw = f.read(blob_info["meta_ci_compressed_size"])
    if blob_info["meta_ci_compressor"] == "zstd":
        raw = subprocess.run(["zstd", "-d", "-c", "-q"], input=raw, capture_output=True, check=True).stdout
    size = blob_info["meta_ci_uncompressed_size"]
    count = blob_info["chunk_count"]
    entry = size // count if count else 16
    if entry not in (16, 24):
        raise AssertionError(f"chunk-info entries of {entry} bytes")
    chunks = []
    for i in range(count):
        u, c = struct.unpack_from("<QQ", raw, i * entry)
        c_off = c & 0xFFFFFFFFFF
        if entry == 16:
            c_size = ((c >> 44) | ((c & 0xF0000000000) >> 20)) + 1
        else:
            c_size = c >> 40
        chunks.append((c_off, c_size))
    return chunks


def build_test_image(seed=1):
    """The session's test image for `seed` (built on first use, deleted at exit)."""
    with _IMAGES_LOCK:
        if seed in _IMAGES:
            return _IMAGES[seed]
        work = pathlib.Path(tempfile.mkdtemp(prefix=f"{PREFIX}-image-{_base36(os.getpid())}-"))
        os.chmod(work, 0o755)
        atexit.register(shutil.rmtree, work, True)
        source = work / "src"
        files, sizes = _make_tree(source, seed)
        image = build_image(source, work, files, sizes)
        _IMAGES[seed] = image
        return image


def build_image(source, work, files=None, sizes=None):
    """Any tree `source` as a TestImage, built in `work` (which must exist
    and is the caller's to remove) as build_test_image() builds its own
    tree: RAFS v6, zstd, 1 MiB chunks, merged with --blob-digests so that
    the blob id is the blob's sha256 (pushable through the registry API).
    `files`/`sizes` ({relative path: sha256 / size}) are what read_all()
    checks; empty by default (e.g. a root filesystem one only runs from)."""
    work = pathlib.Path(work)
    blobs = work / "blobs"
    blobs.mkdir()
    layer = work / "layer.boot"
    build = subprocess.run([str(NYDUS_IMAGE), "create", "--fs-version", "6", "--compressor", "zstd",
                            "--chunk-size", "0x100000", "--bootstrap", str(layer), "--blob-dir", str(blobs),
                            "--log-level", "warn", str(source)], capture_output=True, text=True)
    if build.returncode != 0:
        raise AssertionError(f"nydus-image create: {build.stderr}")
    [blob_path] = list(blobs.iterdir())
    digest = sha256_file(blob_path)
    bootstrap = work / "image.boot"
    merge = subprocess.run([str(NYDUS_IMAGE), "merge", "--bootstrap", str(bootstrap), "--blob-digests",
                            f"sha256:{digest}", str(layer)], capture_output=True, text=True)
    if merge.returncode != 0:
        raise AssertionError(f"nydus-image merge --blob-digests: {merge.stderr}")
    [info] = json.loads(subprocess.run([str(NYDUS_IMAGE), "inspect", str(bootstrap), "--request", "blobs"],
                                       capture_output=True, check=True).stdout)
    if info["id"] != digest:
        raise AssertionError(f"merged blob id {info['id']} is not the blob's sha256 {digest}")
    chunks = _blob_chunks(blob_path, info)
    return TestImage(work, pathlib.Path(source), dict(files or {}), dict(sizes or {}), bootstrap, blob_path,
                     digest, blob_path.stat().st_size, chunks, sum(size for _, size in chunks))


# ---------------------------------------------------------------------------
# Leftovers of killed runs


def _netns_names():
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names():
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            names.append(parts[1].strip().split("@")[0])
    return names


def _kill_netns_processes(ns):
    pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
                alive.append(pid)
        if not alive:
            return
        deadline = time.monotonic() + (2 if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(pathlib.Path(f"/proc/{p}").exists() for p in alive):
            time.sleep(0.02)
        pids = [p for p in alive if pathlib.Path(f"/proc/{p}").exists()]


def _delete_netns(ns):
    _kill_netns_processes(ns)
    _run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def clean_leftovers():
    """Removes what Clusters of dead processes left behind: processes in
    their namespaces, the namespaces, /etc/netns entries, bridges and veths,
    work directories. Runs of live processes (this one included) are left
    alone. Returns the names removed."""
    removed = []
    for ns in _netns_names():
        if ns.startswith(PREFIX + "-"):
            run = "-".join(ns.split("-")[1:3])
            if not _run_alive(run):
                _delete_netns(ns)
                removed.append(ns)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir("/etc/netns"):
            if entry.startswith(PREFIX + "-") and not _run_alive("-".join(entry.split("-")[1:3])):
                shutil.rmtree(f"/etc/netns/{entry}", ignore_errors=True)
    for link in _link_names():
        if link.startswith(LINK_PREFIXES):
            run = "-".join(link.split("-")[1:3])
            if not _run_alive(run):
                _run(["ip", "link", "del", link], check=False)
                removed.append(link)
    tmp = pathlib.Path(tempfile.gettempdir())
    for path in tmp.glob(f"{PREFIX}-*"):
        parts = path.name.split("-")  # np2p-<pid>-<n>-<random> or np2p-image-<pid>-<random>
        if len(parts) < 3:
            continue
        run = parts[2] if parts[1] == "image" else parts[1]
        if not _run_alive(run):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


_RUN_COUNTER = 0
_RUN_LOCK = threading.Lock()


def _next_run():
    global _RUN_COUNTER
    with _RUN_LOCK:
        _RUN_COUNTER += 1
        return f"{_base36(os.getpid())}-{_base36(_RUN_COUNTER % 1296)}"


def _pick_subnet(run_counter):
    """10.A.B.0/24 with A in 160..223, unused by any address or route of the host."""
    used = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout + \
        _run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
    rng = random.Random(os.getpid() * 7919 + run_counter)
    for _ in range(200):
        a, b = rng.randint(160, 223), rng.randint(0, 255)
        prefix = f"10.{a}.{b}."
        if prefix not in used and f"10.{a}.0.0/16" not in used and f"10.{a}.{b}.0/24" not in used:
            return a, b
    raise AssertionError("no free 10.x.y.0/24 subnet")


def _rate_bytes(rate):
    m = re.fullmatch(r"([0-9.]+)\s*(gbit|mbit|kbit|bit)?", rate.strip().lower())
    if not m:
        raise ValueError(f"rate must look like 100mbit, not {rate!r}")
    scale = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1, None: 1}[m.group(2)]
    return float(m.group(1)) * scale / 8


def _tbf(ns, dev, rate, latency="100ms"):
    """tbf as examples/bench-registry.sh shapes its registry: burst 4 ms at
    the rate (at least 64 KiB, a GSO packet), `latency` of queue."""
    burst = max(int(_rate_bytes(rate) * 0.004), 65536)
    _run(["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "tbf", "rate", rate, "burst", str(burst),
          "latency", latency], ns=ns)


# ---------------------------------------------------------------------------
# Reading


OriginRequest = collections.namedtuple("OriginRequest", "method uri status written client agent")


@dataclasses.dataclass
class ReadReport:
    node: int
    files: int = 0            # read and compared
    bytes: int = 0
    seconds: float = 0.0
    errors: list = dataclasses.field(default_factory=list)      # (relative path, "EIO: ...")
    mismatches: list = dataclasses.field(default_factory=list)  # relative paths with wrong bytes

    @property
    def ok(self):
        return not self.errors and not self.mismatches

    def summary(self):
        return (f"node {self.node}: {self.files} files, {self.bytes} bytes in {self.seconds:.2f}s, "
                f"{len(self.errors)} errors {self.errors[:5]}, {len(self.mismatches)} mismatches "
                f"{self.mismatches[:5]}")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


# ---------------------------------------------------------------------------
# Node


def read_log(path):
    """A log file's text so far; "" before the process created it."""
    try:
        return pathlib.Path(path).read_text(errors="replace")
    except OSError:
        return ""


def stop_process(proc, timeout):
    """SIGTERM to `proc` if it still runs, SIGKILL after `timeout` seconds;
    returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def read_tree(root, image, index, order=None, files=None):
    """Reads every file of `image` (or `files`) under `root` (any mount of
    it) and compares its sha256 with the source tree: a ReadReport for node
    `index`. `order`: None (sorted), "reverse", or an int seed for a
    shuffled order. An OSError is recorded and reading goes on."""
    names = sorted(files if files is not None else image.files)
    if order == "reverse":
        names.reverse()
    elif isinstance(order, int):
        random.Random(order).shuffle(names)
    report = ReadReport(index)
    root = pathlib.Path(root)
    start = time.monotonic()
    for rel in names:
        try:
            h = hashlib.sha256()
            with open(root / rel, "rb") as f:
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    h.update(block)
                    report.bytes += len(block)
            report.files += 1
            if h.hexdigest() != image.files[rel]:
                report.mismatches.append(rel)
        except OSError as error:
            report.errors.append((rel, f"{errno.errorcode.get(error.errno, error.errno)}: {error}"))
    report.seconds = time.monotonic() - start
    return report


def mounted_in(pid, mountpoint):
    """True when process `pid` sees a FUSE mount at `mountpoint`."""
    try:
        text = pathlib.Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and fields[4] == str(mountpoint) and right.startswith("fuse"):
            return True
    return False


class StockNydusd:
    """A nydusd without p2p, started in a node's namespace with a config of
    the test's choosing (Node.stock_nydusd): a stock client of the node's
    mirror. .root (its mount, through its mount namespace), read_all(),
    log(), stop()."""

    def __init__(self, node, config, directory):
        self.node = node
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mountpoint = self.dir / "mnt"
        self.mountpoint.mkdir(exist_ok=True)
        self.config_path = self.dir / "config.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = self.dir / "nydusd.log"
        self.proc = None

    def start(self, wait=20):
        args = ["ip", "netns", "exec", self.node.ns, str(NYDUSD), "fuse", "--bootstrap",
                str(self.node.cluster.image.bootstrap), "--config", str(self.config_path), "--mountpoint",
                str(self.mountpoint), "--apisock", str(self.dir / "api.sock"), "--log-file", str(self.log_path),
                "--log-level", "info"]
        self.proc = subprocess.Popen(args, stdout=open(self.dir / "stdout.log", "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        with MountTableWatch(self.proc.pid) as mount_table:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"stock nydusd exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
                if mounted_in(self.proc.pid, self.mountpoint):
                    return self
                mount_table.wait(0.05)
        stop_process(self.proc, 5)
        raise AssertionError(f"stock nydusd did not mount within {wait}s:\n{self.log()[-3000:]}")

    @property
    def root(self):
        return pathlib.Path(f"/proc/{self.proc.pid}/root{self.mountpoint}")

    def read_all(self, check=True):
        report = read_tree(self.root, self.node.cluster.image, self.node.index)
        if check:
            assert report.ok, report.summary() + "\n" + self.log()[-3000:]
        return report

    def log(self):
        return read_log(self.log_path)

    def stop(self):
        return stop_process(self.proc, 10) if self.proc is not None else None


class MountTableWatch:
    """Sleeps until a process's mount table changes: /proc/PID/mountinfo
    reports POLLPRI on every mount or unmount in that process's namespace
    (proc(5)), so a waiter wakes the moment nydusd mounts instead of
    spinning on short sleeps (8 spinning waiters cost a 2-CPU machine
    measurably in the P2P benchmark). The file is bound to the namespace
    the process is in when it is opened, and `ip netns exec` unshares its
    own only after it starts: until then (or if the process is gone) wait()
    sleeps a millisecond at a time."""

    def __init__(self, pid):
        self._pid = pid
        self._file = None
        self._poller = select.poll()
        self._own_namespace = os.readlink("/proc/self/ns/mnt")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.close()

    def wait(self, timeout):
        if self._file is None:
            try:
                if os.readlink(f"/proc/{self._pid}/ns/mnt") == self._own_namespace:
                    time.sleep(min(timeout, 0.001))
                    return
                self._file = open(f"/proc/{self._pid}/mountinfo", "rb")
                self._file.read()  # the first change is reported against what was read
                self._poller.register(self._file, select.POLLPRI | select.POLLERR)
                return  # the caller looks again: a mount made before the read is not reported
            except OSError:
                time.sleep(min(timeout, 0.001))
                return
        if self._poller.poll(timeout * 1000):
            self._file.seek(0)
            self._file.read()


class Node:
    """One nydusd in its own network namespace, with its own cache, piece
    store, mountpoint, API socket and log under `dir`. Created by
    Cluster.add_node(); start() runs nydusd, stop()/kill()/restart() as named."""

    def __init__(self, cluster, index, p2p, peers, p2p_extra):
        self.cluster = cluster
        self.index = index
        self.ns = f"{PREFIX}-{cluster.run}-n{index}"
        self.ip = cluster.address(10 + index)
        self.address = f"{self.ip}:{PEER_PORT}"
        self.p2p = p2p
        self.peers = peers
        self.p2p_extra = dict(p2p_extra or {})
        self.dir = cluster.dir / f"node{index}"
        self.cache_dir = self.dir / "cache"
        self.store_dir = self.dir / "pieces"
        self.mountpoint = self.dir / "mnt"
        self.apisock = self.dir / "api.sock"
        self.log_path = self.dir / "nydusd.log"
        self.config_path = self.dir / "nydusd.json"
        self.proc = None
        self.starts = 0
        self.stock_starts = 0
        # A whole `p2p` object to use instead of the harness's (e.g. a
        # deployment's file with this node's paths filled in).
        self.p2p_override = None
        for d in (self.cache_dir, self.store_dir, self.mountpoint):
            d.mkdir(parents=True, exist_ok=True)
        cluster._add_namespace(self.ns, f"n{index}", self.ip)
        resolv = pathlib.Path("/etc/netns") / self.ns
        resolv.mkdir(parents=True, exist_ok=True)
        (resolv / "resolv.conf").write_text(f"nameserver {cluster.dns_ip}\noptions timeout:1 attempts:2\n")
        if cluster.node_rate:
            _tbf(self.ns, "eth0", cluster.node_rate)

    def __repr__(self):
        return f"Node({self.index}, {self.address}, pid={self.pid})"

    # config

    def config(self):
        """The v1 JSON config: registry backend, blobcache, and the `p2p`
        object unless p2p is off."""
        c = self.cluster
        config = {
            "device": {
                "backend": {"type": "registry", "config": {
                    "scheme": "http", "host": c.registry_host, "repo": c.repo,
                    "timeout": 10, "connect_timeout": 2, "retry_limit": 2,
                    **({"auth": c.auth_b64} if c.basic_auth else {})}},
                "cache": {"type": "blobcache", "config": {"work_dir": str(self.cache_dir)}},
            },
            "mode": "direct",
            "digest_validate": False,
            "enable_xattr": False,
            "iostats_files": False,
        }
        if self.p2p:
            p2p = {
                "listen": self.address,
                "advertise": self.address,
                **({"secret_file": str(c.secret_path)} if c.signed else {}),
                **(self.tls_config() if c.pki else {}),
                "store_dir": str(self.store_dir),
                "store_size": 1 << 30,
                "unit_size": 1 << 20,
                # The daemon's default is 100 ms. Eight daemons (ASan ones
                # among them) and the registry on a 2-core CI machine can
                # take longer to answer, and each false timeout costs an
                # extra origin fetch, which the ratio assertions count.
                "peer_timeout_ms": 250,
            }
            if self.peers == "dns":
                p2p["peers_dns"] = f"{NODES_NAME}:{PEER_PORT}"
            else:
                p2p["peers"] = c.peer_addresses() + list(c.extra_peers)
            p2p.update(self.p2p_extra)
            config["p2p"] = p2p
        if self.p2p and self.p2p_override is not None:
            config["p2p"] = dict(self.p2p_override)
        return config

    def tls_files(self):
        """(certificate, key) of this node, issued by the cluster CA (with tls=True)."""
        cert, key = self.dir / "peer.crt", self.dir / "peer.key"
        if not cert.exists():
            self.cluster.pki.issue(f"node{self.index}", self.ip, cert, key)
        return cert, key

    def tls_config(self):
        cert, key = self.tls_files()
        return {"tls_cert": str(cert), "tls_key": str(key), "tls_ca": str(self.cluster.pki.ca_path)}

    # lifecycle

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self):
        return self.pid is not None

    @property
    def root(self):
        """The mount as this process sees it: through nydusd's mount namespace."""
        if self.pid is None:
            raise AssertionError(f"node {self.index} is not running")
        return pathlib.Path(f"/proc/{self.pid}/root{self.mountpoint}")

    def _mounted(self):
        return mounted_in(self.proc.pid, self.mountpoint)

    def start(self, wait=20, poll=0.01, shared=False, need_api=True, snapshotter_argv=False):
        """Writes the config and starts nydusd; returns once its FUSE mount
        (and, with need_api, its API socket) is up. The mount is noticed the
        moment it appears (poll(2) on nydusd's mountinfo, which signals
        every mount table change), the socket every `poll` seconds. shared=True:
        a shared-mode daemon as nydus-snapshotter starts one (no image; the
        `p2p` object from a daemon-level --p2p-config file); mount images
        with mount_instance(). snapshotter_argv=True (with shared): the exact
        argv nydus-snapshotter execs for its shared daemon (nydusd-contract.md
        §4.2), the P2P file found through $NYDUS_P2P_CONFIG as a deployment's
        /etc/nydus/p2p.json would be."""
        if self.running:
            raise AssertionError(f"node {self.index} is running already")
        config = self.config()
        self.config_path.write_text(json.dumps(config, indent=1))
        with contextlib.suppress(FileNotFoundError):
            self.apisock.unlink()
        self.starts += 1
        out = open(self.dir / f"stdout-{self.starts}.log", "wb")
        env_args = []
        if shared:
            p2p_path = self.dir / "p2p.json"
            p2p_path.write_text(json.dumps({"p2p": config.get("p2p", {})}, indent=1))
            image_args = ["--p2p-config", str(p2p_path)]
            if snapshotter_argv:
                image_args = []
                env_args = ["env", f"NYDUS_P2P_CONFIG={p2p_path}"]
        else:
            image_args = ["--bootstrap", str(self.cluster.image.bootstrap), "--config", str(self.config_path)]
        args = ["ip", "netns", "exec", self.ns, *env_args, str(NYDUSD), "fuse", *image_args, "--mountpoint",
                str(self.mountpoint), "--apisock", str(self.apisock), "--log-level", "info", "--log-file",
                str(self.log_path)]
        if snapshotter_argv:
            args += ["--failover-policy", "resend"]
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + wait
        with MountTableWatch(self.proc.pid) as mount_table:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"nydusd of node {self.index} exited with {self.proc.returncode}:\n"
                                         f"{self.log()[-3000:]}\n{self.stdout()[-2000:]}")
                if self._mounted() and (not need_api or self.apisock.exists()):
                    return self
                mount_table.wait(poll)
        self.kill()
        raise AssertionError(f"nydusd of node {self.index} did not mount within {wait}s:\n{self.log()[-3000:]}")

    def stop(self, timeout=10):
        """SIGTERM; returns the exit code (SIGKILL after `timeout`, then -9)."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout)

    def kill(self):
        """SIGKILL, like a crashed node; the mount goes with nydusd's mount namespace."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return self.proc.returncode

    def restart(self, kill=False):
        self.kill() if kill else self.stop()
        return self.start()

    def run_in_mount(self, args, timeout=120):
        """Runs `args` (e.g. ["python3", "-V"]) chrooted into this node's
        mount (through nydusd's mount namespace, see `root`) with a clean
        environment; returns the CompletedProcess (stdout and stderr merged,
        text)."""
        return subprocess.run(["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                               "chroot", str(self.root)] + [str(a) for a in args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def drop_piece_store(self):
        """Empties the P2P piece store (the node must be stopped); the blob cache stays."""
        if self.running:
            raise AssertionError("stop the node before dropping its piece store")
        shutil.rmtree(self.store_dir, ignore_errors=True)
        self.store_dir.mkdir()

    def drop_blob_cache(self):
        """Empties the blob cache work_dir (the node must be stopped); the piece store stays."""
        if self.running:
            raise AssertionError("stop the node before dropping its blob cache")
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.cache_dir.mkdir()

    # reading

    def read_file(self, rel):
        return (self.root / rel).read_bytes()

    def read_all(self, check=True, order=None, files=None, subdir=None):
        """Reads every file of the image (or `files`) and compares its sha256
        with the source tree. `order`: None (sorted), "reverse", or an int
        seed for a shuffled order. An OSError (EIO, ENOTCONN, ...) is recorded
        and reading goes on. With check=True any error or mismatch fails.
        `subdir`: a shared daemon's instance (mount_instance)."""
        report = read_tree(self.root / subdir if subdir else self.root, self.cluster.image, self.index, order, files)
        if check:
            assert report.ok, report.summary() + "\n" + self.log()[-3000:]
        return report

    def stock_nydusd(self, config):
        """Starts a nydusd without p2p in this node's namespace with `config`
        (a dict: e.g. the Dragonfly guide's config pointing at 127.0.0.1:65001,
        this node's mirror); returns the StockNydusd once it has mounted."""
        self.stock_starts += 1
        return StockNydusd(self, config, self.dir / f"stock-{self.stock_starts}").start()

    # the registry link

    def cut_registry(self):
        """Makes the registry unreachable from this node only: an unreachable
        route (new connections fail at once with EHOSTUNREACH) and every open
        TCP connection to it destroyed (ss -K), so nothing waits for a timeout."""
        ip = self.cluster.registry_ip
        _run(["ip", "route", "replace", "unreachable", f"{ip}/32"], ns=self.ns)
        _run(["ss", "-K", "dst", ip], ns=self.ns, check=False)

    def origin_rx_bytes(self):
        """Bytes this node's open TCP connections to the registry have
        received so far (tcp_info bytes_received, from `ss -ti`; headers
        included, closed connections drop out): a live view of which node is
        pulling from the origin right now."""
        out = _run(["ss", "-tinH", "dst", self.cluster.registry_ip], ns=self.ns, check=False).stdout
        return sum(int(m) for m in re.findall(r"bytes_received:(\d+)", out))

    def restore_registry(self):
        _run(["ip", "route", "del", "unreachable", f"{self.cluster.registry_ip}/32"], ns=self.ns, check=False)

    # API and logs

    def api(self, path, method="GET", body=None):
        """(status, parsed JSON or text) of one API request over the unix
        socket; `body` (a dict) goes as JSON."""
        conn = _UnixHTTPConnection(self.apisock)
        try:
            if body is None:
                conn.request(method, path)
            else:
                conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body.decode(errors="replace")

    def mount_instance(self, name, cache_dir=None, config=None):
        """Mounts the image at <mountpoint>/<name> of a shared daemon through
        POST /api/v1/mount, with this node's config minus the `p2p` object
        (nydus-snapshotter's instance configs carry none), or `config`; read
        it with read_all(subdir=name)."""
        if config is None:
            config = {k: v for k, v in self.config().items() if k != "p2p"}
        if cache_dir is not None:
            config["device"]["cache"]["config"]["work_dir"] = str(cache_dir)
        status, body = self.api(f"/api/v1/mount?mountpoint=%2F{name}", "POST",
                                {"fs_type": "rafs", "source": str(self.cluster.image.bootstrap),
                                 "config": json.dumps(config)})
        if status != 204:
            raise AssertionError(f"mounting /{name} on node {self.index}: {status} {body}")

    def metrics(self, instance=None):
        """GET /api/v1/metrics/backend (dict); a shared daemon needs the
        `instance` ("/a") whose backend to show (its `p2p` part is the node's)."""
        query = f"?id={urllib.parse.quote(instance, safe='')}" if instance else ""
        status, body = self.api("/api/v1/metrics/backend" + query)
        if status != 200:
            raise AssertionError(f"metrics/backend of node {self.index}: {status} {body}")
        return body

    def log(self):
        return read_log(self.log_path)

    def stdout(self):
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("stdout-*.log")))

    def p2p_log_lines(self, peer=None, since=None):
        """Log lines (nydusd log and stdout) that mention p2p (any case) and,
        if given, the peer ("ip:port"; its bare ip matches too). With `since`
        (a time.time() value) only lines stamped at or after it (the log's
        leading UTC timestamp; lines without one are kept)."""
        lines = (self.log() + "\n" + self.stdout()).splitlines()
        out = [l for l in lines if "p2p" in l.lower()]
        if peer is not None:
            ip = peer.rsplit(":", 1)[0]
            out = [l for l in out if peer in l or re.search(rf"(?<![\d.]){re.escape(ip)}(?![\d])", l)]
        if since is not None:
            out = [l for l in out if _log_time(l) is None or _log_time(l) >= since - 0.001]
        return out


def _log_time(line):
    """Epoch seconds of a log line's leading "2026-12-05T14:01:30.909850Z", or None."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", line)
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)


# ---------------------------------------------------------------------------
# DNS


class Dns:
    """dnsmasq on the bridge's host address, port 53, answering NODES_NAME
    with one A record per listed node (TTL 0), nothing else. set() rewrites
    the hosts file and sends SIGHUP; queries() reads its query log."""

    def __init__(self, cluster, members):
        self.cluster = cluster
        self.dir = cluster.dir / "dns"
        self.dir.mkdir(exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.hosts = self.dir / "hosts"
        self.log_path = self.dir / "dnsmasq.log"
        self.ip = cluster.dns_ip
        # In a namespace of its own on the bridge (at the address every
        # node's resolv.conf names), so that a killed run's dnsmasq is found
        # and stopped by clean_leftovers() like everything else.
        self.ns = f"{PREFIX}-{cluster.run}-dns"
        cluster._add_namespace(self.ns, "d", self.ip)
        self._write(members)
        args = ["ip", "netns", "exec", self.ns, DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", f"--addn-hosts={self.hosts}", f"--listen-address={self.ip}", "--bind-interfaces",
                "--port=53", "--user=root", "--group=root", "--pid-file=", "--local-ttl=0", "--log-queries",
                f"--log-facility={self.log_path}", "--cache-size=0"]
        with open(self.dir / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dnsmasq exited {self.proc.returncode}: "
                                     f"{(self.dir / 'stderr.log').read_text()}")
            if dns_query(self.ip, NODES_NAME, timeout=0.2) is not None:
                return
            time.sleep(0.05)
        raise AssertionError("dnsmasq does not answer")

    def _ips(self, members):
        return [m.ip if isinstance(m, (Node, FaultPeer)) else str(m) for m in members]

    def _write(self, members):
        ips = self._ips(members)
        tmp = self.hosts.with_suffix(".tmp")
        tmp.write_text("".join(f"{ip} {NODES_NAME}\n" for ip in ips))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.hosts)
        self.members = ips

    def set(self, members):
        """New answer for NODES_NAME; returns once dnsmasq serves it."""
        self._write(members)
        self.proc.send_signal(signal.SIGHUP)
        want = sorted(self.members)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if sorted(dns_query(self.ip, NODES_NAME) or []) == want:
                return
            time.sleep(0.02)
        raise AssertionError(f"dnsmasq did not switch to {want}")

    def queries(self, since=0.0):
        """[(time, client ip, name)] of A/AAAA queries logged (since a time.time() value)."""
        out = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        year = time.localtime().tm_year
        for line in text.splitlines():
            m = re.match(r"^(\w{3} +\d+ [\d:]+) dnsmasq\[\d+\]: query\[(A|AAAA)\] (\S+) from (\S+)", line)
            if not m:
                continue
            stamp = time.mktime(time.strptime(f"{year} {m.group(1)}", "%Y %b %d %H:%M:%S"))
            if stamp + 1 >= since:
                out.append((stamp, m.group(4), m.group(3)))
        return out

    def stop(self):
        stop_process(self.proc, 5)


def dns_query(server, name, timeout=1.0):
    """The A records `server` gives for `name` (a list of ip strings), or None without an answer."""
    qid = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, (server, 53))
            data, _ = s.recvfrom(4096)
        except OSError:
            return None
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    if rid != qid:
        return None
    pos = 12 + len(question)
    ips = []
    for _ in range(an):
        # name: a pointer (2 bytes) or labels
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            ips.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += rdlen
    return ips


# ---------------------------------------------------------------------------
# Fault peers


class FaultPeer:
    """p2p_fault_peer.py in a namespace of its own on the bridge."""

    def __init__(self, cluster, index, mode, corrupt="flip"):
        self.cluster = cluster
        self.mode = mode
        self.ns = f"{PREFIX}-{cluster.run}-f{index}"
        self.ip = cluster.address(200 + index)
        self.address = f"{self.ip}:{PEER_PORT}"
        self.dir = cluster.dir / f"fault{index}"
        self.dir.mkdir()
        self.events_path = self.dir / "events.jsonl"
        cluster._add_namespace(self.ns, f"f{index}", self.ip)
        args = ["ip", "netns", "exec", self.ns, PYTHON, str(FAULT_PEER), "--mode", mode, "--listen", self.address,
                "--events", str(self.events_path), "--corrupt", corrupt, "--repo", cluster.repo,
                "--upstream", f"http://{cluster.registry_host}",
                "--blob", f"{cluster.image.digest}={cluster.image.blob_path}"]
        self.proc = subprocess.Popen(args, stdout=open(self.dir / "stdout.log", "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not any(e["event"] == "listening" for e in self.events()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"fault peer did not start: {(self.dir / 'stdout.log').read_text()}")
            time.sleep(0.02)

    def events(self):
        try:
            return [json.loads(l) for l in self.events_path.read_text().splitlines() if l.strip()]
        except FileNotFoundError:
            return []

    def requests(self, method="GET"):
        """Blob requests it answered (not pings)."""
        return [e for e in self.events() if e["event"] == "request" and e["method"] == method
                and "sha256:" in e["path"]]

    def served_bytes(self):
        return sum(e["bytes"] for e in self.requests())

    def flipped_bytes(self):
        return sum(e["flipped"] for e in self.requests())

    def connections(self):
        return sum(1 for e in self.events() if e["event"] == "accept")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ByzantinePeer(cluster, corrupt="flip"):
    return cluster.byzantine_peer(corrupt)


def StallingPeer(cluster):
    return cluster.stalling_peer()


# ---------------------------------------------------------------------------
# Cluster


class PeerPki:
    """A CA of its own and certificates it issues for the peer port's mutual
    TLS: EC P-256 keys, both TLS client and server use, the node's IP as
    subject alternative name (the daemon checks the chain only; curl, used
    by the tests, checks the name too)."""

    def __init__(self, directory, name):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        self._x509, self._hashes, self._ser, self._ec = x509, hashes, serialization, ec
        self._eku, self._oid = ExtendedKeyUsageOID, NameOID
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._build(name, self.key.public_key(), None, is_ca=True)
        self.ca_path = self.dir / "ca.crt"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _build(self, name, public_key, ip, is_ca=False):
        x509 = self._x509
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(subject if is_ca else self.cert.subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=7))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if not is_ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([self._eku.SERVER_AUTH, self._eku.CLIENT_AUTH]), critical=False)
            if ip:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        return builder.sign(self.key, self._hashes.SHA256())

    def issue(self, name, ip, cert_path, key_path):
        """Writes a certificate for `name` at `ip` and its key (PEM); returns the paths."""
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        cert = self._build(name, key.public_key(), ip)
        pathlib.Path(key_path).write_bytes(key.private_bytes(self._ser.Encoding.PEM,
                                                             self._ser.PrivateFormat.PKCS8,
                                                             self._ser.NoEncryption()))
        pathlib.Path(cert_path).write_bytes(cert.public_bytes(self._ser.Encoding.PEM))
        return pathlib.Path(cert_path), pathlib.Path(key_path)


class Cluster:
    """A registry behind a shaped link and nodes on a bridge. See the module docstring."""

    def __init__(self, nodes=0, rate="100mbit", node_rate=None, p2p=True, peers="static", p2p_extra=None,
                 image=None, repo="p2p/test", image_seed=1, basic_auth=None, token_server=None, signed=True,
                 tls=False):
        require_cluster_tools()
        # The peer port's guards: signed requests (p2p.secret_file) and/or
        # mutual TLS with a cluster CA made here (self.pki, PeerPki).
        self.signed = signed
        # (user, password): the registry wants htpasswd Basic auth for
        # everything (a private repository); nodes get it as backend `auth`.
        self.basic_auth = basic_auth
        # A registry_harness.TokenServer: the registry takes only its Bearer
        # tokens, each good for the repositories it names (bearer()). The
        # harness pushes with the server's first user; nodes get no `auth`.
        self.token_server = token_server
        self.rate = rate
        self.node_rate = node_rate
        self.repo = repo
        self.default_p2p = p2p
        self.default_peers = peers
        self.default_p2p_extra = p2p_extra
        self.nodes = []
        self.extra_peers = []
        self.fault_peers = []
        self._dns = None
        self._namespaces = []
        self._links = []
        self._registry = None
        self._closed = False
        self.run = _next_run()
        clean_leftovers()
        self.image = image or build_test_image(image_seed)
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{self.run}-"))
        os.chmod(self.dir, 0o755)
        # The cluster secret every node signs its peer requests with (p2p.secret_file).
        self.secret = secrets.token_hex(32)
        self.secret_path = self.dir / "p2p-secret"
        self.secret_path.write_text(self.secret + "\n")
        self.pki = PeerPki(self.dir / "pki", "np2p cluster CA") if tls else None
        a, b = _pick_subnet(int(self.run.split("-")[1], 36))
        self._net = (a, b)
        self.subnet = f"10.{a}.{b}.0/24"
        self.host_ip = self.address(1)
        self.registry_ip = self.address(2)
        self.dns_ip = self.address(3)
        self.registry_host = f"{self.registry_ip}:{REGISTRY_PORT}"
        self.bridge = f"nb-{self.run}"
        try:
            self._setup_bridge()
            self._start_registry()
            self._push()
            for _ in range(nodes):
                self.add_node()
        except BaseException:
            self.close()
            raise

    def address(self, host):
        return f"10.{self._net[0]}.{self._net[1]}.{host}"

    def peer_auth(self, method, path, range_value="", t=None, nonce=None, secret=None):
        """The X-Nydus-P2P-Auth value for a request, computed here (Python's
        hmac) from the protocol in p2p/peer_auth.h, not by the daemon's code."""
        t = int(time.time()) if t is None else t
        nonce = nonce or secrets.token_hex(16)
        text = f"nydus-p2p-v1\n{method}\n{path}\n{range_value}\n{t}\n{nonce}".encode()
        mac = hmac.new((secret or self.secret).encode(), text, hashlib.sha256).hexdigest()
        return f"v1 t={t} n={nonce} s={mac}"

    # network

    def _setup_bridge(self):
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._links.append(self.bridge)
        _run(["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _add_namespace(self, ns, tag, ip):
        """A namespace with eth0 = ip/24 on the bridge, lo up."""
        host_end, ns_end = f"nv-{self.run}-{tag}", f"nq-{self.run}-{tag}"
        assert len(host_end) <= 15, host_end
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end])
        self._links.append(host_end)
        _run(["ip", "link", "set", ns_end, "netns", ns])
        _run(["ip", "link", "set", host_end, "master", self.bridge])
        _run(["ip", "link", "set", host_end, "up"])
        _run(["ip", "link", "set", ns_end, "name", "eth0"], ns=ns)
        _run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], ns=ns)
        _run(["ip", "link", "set", "eth0", "up"], ns=ns)
        _run(["ip", "link", "set", "lo", "up"], ns=ns)
        return host_end

    # registry

    def _start_registry(self):
        ns = f"{PREFIX}-{self.run}-reg"
        self._registry_veth = self._add_namespace(ns, "r", self.registry_ip)
        self.registry_ns = ns
        _tbf(ns, "eth0", self.rate)
        _run(["sysctl", "-q", "-w", f"net.ipv4.tcp_wmem=4096 65536 {REGISTRY_WMEM_MAX}"], ns=ns)
        self.registry_dir = self.dir / "registry"
        (self.registry_dir / "storage").mkdir(parents=True)
        self.registry_log = self.registry_dir / "registry.log"
        config = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.registry_dir / "storage")},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.registry_host, "secret": "nydus-p2p-test"},
        }
        if self.basic_auth:
            user, password = self.basic_auth
            line = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True,
                                  text=True).stdout.strip()
            (self.registry_dir / "htpasswd").write_text(line + "\n")
            config["auth"] = {"htpasswd": {"realm": "np2p", "path": str(self.registry_dir / "htpasswd")}}
        if self.token_server:
            ts = self.token_server
            config["auth"] = {"token": {"realm": ts.realm, "service": ts.service, "issuer": ts.issuer,
                                        "rootcertbundle": str(ts.rootcertbundle)}}
        (self.registry_dir / "config.yml").write_text(json.dumps(config))
        with open(self.registry_log, "ab") as log:
            self._registry = subprocess.Popen(["ip", "netns", "exec", ns, "docker-registry", "serve",
                                               str(self.registry_dir / "config.yml")],
                                              stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._registry.poll() is not None:
                raise AssertionError(f"docker-registry exited: {self.registry_log.read_text()[-3000:]}")
            # 401 is an answer too: token auth wants a token even for /v2/.
            if self._registry_get("/v2/")[0] in (200, 401):
                return
            time.sleep(0.05)
        raise AssertionError("docker-registry does not answer")

    @property
    def registry_url(self):
        return f"http://{self.registry_host}"

    @property
    def auth_b64(self):
        """base64 of user:password with basic_auth, else None."""
        if not self.basic_auth:
            return None
        return base64.b64encode(":".join(self.basic_auth).encode()).decode()

    def bearer(self, repo, actions=("pull",)):
        """An Authorization value with token_server: a token (signed by the
        token server's key, as its realm would issue it) for `repo` only."""
        ts = self.token_server
        token = ts.issue("np2p-test", ts.service, [{"type": "repository", "name": repo, "actions": list(actions)}])
        return "Bearer " + token

    def _registry_get(self, path, headers=None, timeout=5, auth=True):
        conn = http.client.HTTPConnection(self.registry_ip, REGISTRY_PORT, timeout=timeout)
        if auth and self.basic_auth:
            headers = {"Authorization": "Basic " + self.auth_b64, **(headers or {})}
        elif auth and self.token_server and path.startswith(f"/v2/{self.repo}/"):
            headers = {"Authorization": self.bearer(self.repo), **(headers or {})}
        try:
            conn.request("GET", path, headers={"User-Agent": HARNESS_UA, **(headers or {})})
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return None, b""
        finally:
            conn.close()

    class _PushTarget:
        """What registry_harness.push_blob needs of a registry."""

        def __init__(self, url, basic_auth, auth_b64):
            self.url = url
            self.scheme = "http"
            self.username = basic_auth[0] if basic_auth else None
            self.auth_b64 = auth_b64

    def push_blob(self, source, repo=None):
        """Pushes bytes or a file to `repo` (the cluster's by default) through
        the distribution API (POST + PUT ?digest=), with the registry's
        credentials when it wants them; returns the sha256 hex digest."""
        if self.token_server:
            ts = self.token_server
            target = self._PushTarget(self.registry_url, (ts.username, ts.password),
                                      base64.b64encode(f"{ts.username}:{ts.password}".encode()).decode())
        else:
            target = self._PushTarget(self.registry_url, self.basic_auth, self.auth_b64)
        return rh.push_blob(target, repo or self.repo, source)

    def _push(self):
        digest = self.push_blob(self.image.blob_path)
        assert digest == self.image.digest
        status, body = self._registry_get(f"/v2/{self.repo}/blobs/sha256:{digest}", {"Range": "bytes=0-15"})
        assert status == 206 and body == self.image.blob_path.read_bytes()[:16], (status, body)

    # counting at the registry

    _LOG_FIELD = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')

    def _sync_registry_log(self, timeout=10, quiet=0.05):
        marker = f"np2p-sync={uuid.uuid4().hex}"
        self._registry_get(f"/v2/?{marker}")
        rh.wait_for_log_line(self.registry_log, marker, timeout, quiet)

    def origin_requests(self, settle=True):
        """OriginRequest(method, uri, status, written, client, agent) of each
        blob GET/HEAD the registry answered, oldest first, not counting the
        harness's own. `client` is the asker's ip (which node or peer)."""
        if settle and self._registry is not None and self._registry.poll() is None:
            self._sync_registry_log()
        out = []
        for line in self.registry_log.read_text(errors="replace").splitlines():
            if 'msg="response completed' not in line:
                continue
            f = {k: v.strip('"') for k, v in self._LOG_FIELD.findall(line)}
            method, uri, agent = f.get("http.request.method"), f.get("http.request.uri", ""), \
                f.get("http.request.useragent", "")
            if HARNESS_UA in agent or "/blobs/sha256:" not in uri or method not in ("GET", "HEAD"):
                continue
            out.append(OriginRequest(method, uri, int(f.get("http.response.status", 0)),
                                     int(f.get("http.response.written", 0)),
                                     f.get("http.request.remoteaddr", "").rsplit(":", 1)[0], agent))
        return out

    def origin_bytes_by_client(self, settle=True):
        """{client ip: blob body bytes} (see origin_bytes)."""
        out = {}
        for r in self.origin_requests(settle):
            if r.method == "GET" and r.status in (200, 206):
                out[r.client] = out.get(r.client, 0) + r.written
        return out

    def origin_bytes(self, settle=True):
        """Blob body bytes the registry served so far: the sum of
        `http.response.written` over its "response completed" log lines for
        GET .../blobs/sha256:... (200 and 206), leaving out the harness's own
        requests (its push check, User-Agent np2p-harness) and the byzantine
        peer's, if it ever proxies (it normally serves a local copy).

        Why the log and not the link: it counts body bytes only, exactly, so
        "origin bytes 0" means no blob byte at all and ratios to unique_bytes
        carry no TCP/IP/HTTP overhead (the veth's byte counters, see
        link_tx_bytes(), add ~5 % of headers and ACK/handshake traffic). A
        line is written when a response ends, so settle=True first syncs
        with the log (a request of the harness's own, then 50 ms of quiet);
        with settle=False, responses still in flight are not counted yet
        (use link_tx_bytes() to watch progress). A response whose client died
        mid-body counts what the registry wrote to its socket: at most the
        send buffer (tcp_wmem max, REGISTRY_WMEM_MAX = 256 KiB in the
        registry's namespace) more than left the host."""
        return sum(r.written for r in self.origin_requests(settle) if r.method == "GET" and r.status in (200, 206))

    def link_tx_bytes(self):
        """Bytes the registry sent over its link (the host-side veth's rx
        counter): headers included, cheap, live."""
        return int(pathlib.Path(f"/sys/class/net/{self._registry_veth}/statistics/rx_bytes").read_text())

    @property
    def unique_bytes(self):
        return self.image.unique_bytes

    # nodes

    def add_node(self, p2p=None, peers=None, p2p_extra=None):
        """A node namespace (nydusd not started). p2p/peers/p2p_extra default to the Cluster's."""
        node = Node(self, len(self.nodes), self.default_p2p if p2p is None else p2p,
                    peers or self.default_peers, self.default_p2p_extra if p2p_extra is None else p2p_extra)
        self.nodes.append(node)
        return node

    def peer_addresses(self):
        return [n.address for n in self.nodes]

    def start_nodes(self, nodes=None):
        nodes = self.nodes if nodes is None else nodes
        with concurrent.futures.ThreadPoolExecutor(len(nodes) or 1) as pool:
            list(pool.map(lambda n: n.start(), nodes))
        return nodes

    def read_all(self, nodes=None, check=True, orders=None):
        """Every node in `nodes` reads the whole image at the same moment
        (one thread each, started together). Returns the reports; with
        check=True any error or mismatch on any node fails."""
        nodes = self.nodes if nodes is None else nodes
        barrier = threading.Barrier(len(nodes))

        def one(i_node):
            i, node = i_node
            barrier.wait()
            return node.read_all(check=False, order=None if orders is None else orders[i])

        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            reports = list(pool.map(one, enumerate(nodes)))
        if check:
            bad = [r for r in reports if not r.ok]
            assert not bad, "\n".join(r.summary() for r in bad) + "\n" + \
                "\n".join(f"--- node {r.node} log tail:\n{nodes_by_index(nodes)[r.node].log()[-2000:]}" for r in bad)
        return reports

    # DNS and fault peers

    def dns(self, members):
        """Starts dnsmasq answering NODES_NAME with the members' addresses (once per Cluster)."""
        require_cluster_tools(dns=True)
        if self._dns is None:
            self._dns = Dns(self, members)
        else:
            self._dns.set(members)
        return self._dns

    def byzantine_peer(self, corrupt="flip", join=True):
        peer = FaultPeer(self, len(self.fault_peers), "byzantine", corrupt)
        self.fault_peers.append(peer)
        if join:
            self.extra_peers.append(peer.address)
        return peer

    def stalling_peer(self, join=True):
        peer = FaultPeer(self, len(self.fault_peers), "stall")
        self.fault_peers.append(peer)
        if join:
            self.extra_peers.append(peer.address)
        return peer

    # teardown

    def close(self):
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        for peer in self.fault_peers:
            with contextlib.suppress(Exception):
                peer.stop()
        if self._dns is not None:
            with contextlib.suppress(Exception):
                self._dns.stop()
        if self._registry is not None:
            stop_process(self._registry, 5)
        for ns in reversed(self._namespaces):
            _delete_netns(ns)
        for link in reversed(self._links):
            _run(["ip", "link", "del", link], check=False)
        if os.environ.get("NP2P_KEEP"):
            print(f"p2p_harness: kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def nodes_by_index(nodes):
    return {n.index: n for n in nodes}
