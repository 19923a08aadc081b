"""Calibration of the P2P simulator (test/sim, p2p-sim) against real daemons.

The issue: "a loopback run of as many real daemons as this machine holds (at
least 32, each with its own peer port and cache) against the registry, and
the simulator run on the same N, trace and bandwidths: the origin-bytes
figure equal, completion times within 20 %".

1. Trace: one node alone (its static peers list names only itself) with
   `access_pattern` on reads FILES (a fixed list of the harness's test image,
   ~5 MiB) one after another through its FUSE mount; its backend reads
   (GET /api/v1/metrics/backend/reads) are the simulator's trace, and the
   time of that read is the real single-node time.
2. Cluster: NODES daemons on the same registry (its link shaped to
   REGISTRY_RATE, every node's to NODE_RATE), each with its own peer port,
   cache and piece store, static peers; all read FILES at the same moment
   (one thread each, a barrier); per-node completion times, origin bytes at
   the registry (its log).
3. The simulator's parameters are measured, not guessed: the registry's
   time to first byte for small ranged blob GETs on one connection from a
   node's namespace (less one hop, which the simulator adds), and the
   one-way latency between two nodes (TCP connect / 2), idle and during the
   read (the simulator is run with both); the link rates are the tbf rates,
   both directions of every node's link shaped (the simulator's node_gbit
   is each node's uplink and downlink).
4. Real vs simulated: origin bytes (within ORIGIN_TOLERANCE), p50 and p99
   completion and the single-node time (within TIME_TOLERANCE). Every figure
   is printed as a table, and written as JSON to $SIM_CALIBRATION_OUT when set.

A measurement, not a gate: it compares times on a 2-core machine, so it
runs only with SIM_CALIBRATION=1 (examples/bench-sim-calibration.sh), not
in the CI suite, where other tests share the CPUs.

What it found (20mbit registry, 10mbit nodes, 1 MiB units, 82 files = 83
backend reads, 3.58 MB raw): the first runs showed the real cluster's p50
at 1.8-3x the simulator's, its busiest owner uploading its units to all 31
peers: a node keeps only bytes it verified (the chunks it read, not the
rest of their first and last 4 KiB granules), so the holders an owner
redirected askers to never held the granule-aligned range asked, and every
asker came back to the owner. Fixed in the daemon (holders are asked for
the whole granules inside the chunks the asker needs; the owner sends the
edges; a holder not holding yet means "ask the owner again shortly"): p50
within 12-15 % of the simulator's, busiest upload 2.6-2.9x the mean against
the simulator's 2.3-3.0x, origin bytes 1.6-5 % above the simulator's (a few
peer requests time out and go to the origin). The p99 is still 2.2-2.7x
the simulator's: a few nodes finish late (22-33 s against 12-16 s for the
rest), which the simulator, without packet loss, does not have (the tbf
queues are drop-tail; 31 askers converging on an owner overflow them; a
deeper queue (NODE_QUEUE 2 s) made it worse: first bytes then wait longer
than the peer timeout). The single-node time agrees within 5-11 %.

Binaries: $NYDUSD, $NYDUS_IMAGE (as the other P2P tests) and $P2P_SIM
(default build/test/sim/p2p-sim).
"""
import csv
import concurrent.futures
import hashlib
import io
import json
import math
import os
import pathlib
import random
import re
import resource
import statistics
import subprocess
import threading
import time

import pytest

import p2p_harness as ph

pytestmark = [pytest.mark.p2p, pytest.mark.skipif(
    os.environ.get("SIM_CALIBRATION") != "1",
    reason="a timing measurement: run with SIM_CALIBRATION=1 (examples/bench-sim-calibration.sh)")]

P2P_SIM = pathlib.Path(os.environ.get("P2P_SIM", ph.ROOT / "build" / "test" / "sim" / "p2p-sim"))

NODES = 32
# Low enough that the network, not the 2-core machine's CPU, sets the pace:
# 32 daemons decompress, and 32 readers hash, ~5 MiB each (the test prints
# the CPU use of the run to show it).
REGISTRY_RATE = "20mbit"
NODE_RATE = "10mbit"
FILES_BYTES = 5 << 20       # the file list's size (file bytes, before compression)
FILES_SEED = 20261206       # which files, in which order
ORIGIN_TOLERANCE = 0.02     # the issue: "equal"
TIME_TOLERANCE = 0.20       # the issue: "within 20 %"
# The nodes' p2p.peer_timeout_ms (the harness's is 250), passed to the
# simulator too. The tbf queues are drop-tail (this kernel has no fq or
# fq_codel to put under tbf): with 31 askers at an owner, both directions
# drop packets (2000-4000 a run), and a lost SYN or header waits for a
# retransmission (200 ms and more), so at 250 ms owners that are merely
# congested time out, askers go to the next owner or the origin, and the
# origin served 1.4-2.8x the unique bytes in runs here. The simulator has no
# packet loss (a live peer never times out), so that cannot be compared;
# 2000 ms (the daemon's peer_stall_ms) leaves only congestion.
# SIM_CALIBRATION_PEER_TIMEOUT_MS=250 shows the other case.
PEER_TIMEOUT_MS = int(os.environ.get("SIM_CALIBRATION_PEER_TIMEOUT_MS", "2000"))
SAMPLES = 20                # latency samples (median)


@pytest.fixture(autouse=True)
def _tools():
    ph.require_cluster_tools()
    if not os.access(P2P_SIM, os.X_OK):
        message = f"the calibration test needs {P2P_SIM} (P2P_SIM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def file_list(image):
    """A fixed list of the image's files, ~FILES_BYTES in all, in a fixed
    (shuffled) order; always one multi-chunk (> 1 MiB) file among them."""
    names = sorted(image.files)
    random.Random(FILES_SEED).shuffle(names)
    big = next(n for n in names if image.sizes[n] > 1 << 20)
    out, total = [big], image.sizes[big]
    for name in names:
        if total >= FILES_BYTES:
            break
        if name != big and not name.startswith("dup"):
            out.append(name)
            total += image.sizes[name]
    return out


def read_files(node, files, image):
    """Reads `files` in order through the node's mount, each checked
    against the source tree: (seconds from the first open to the last
    byte, bytes read)."""
    root = node.root
    start = time.monotonic()
    total = 0
    for rel in files:
        h = hashlib.sha256()
        with open(root / rel, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                total += len(block)
        assert h.hexdigest() == image.files[rel], f"node {node.index}: {rel} has the wrong bytes"
    return time.monotonic() - start, total


def cpu_ticks():
    """(busy, total) jiffies of the whole machine (/proc/stat)."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def median_ttfb(cluster, node, samples=SAMPLES):
    """Ranged 4 KiB blob GETs from the node's namespace, one curl on one
    connection as the daemon's pooled handles reuse theirs: (median connect
    s of the first, median request-to-first-byte s of the others), the latter
    being the registry's answer time plus one round trip."""
    url = f"{cluster.registry_url}/v2/{cluster.repo}/blobs/sha256:{cluster.image.digest}"
    args = ["curl", "-sS"]
    for i in range(samples + 1):
        offset = (i * 37 * 4096) % max(4096, cluster.image.blob_size - 4096)
        args += (["--next"] if i else []) + [
            "-o", "/dev/null", "-H", f"User-Agent: {ph.HARNESS_UA}", "-r", f"{offset}-{offset + 4095}",
            "-w", "%{http_code} %{time_connect} %{time_pretransfer} %{time_starttransfer}\\n", url]
    lines = [line.split() for line in ph._run(args, ns=node.ns).stdout.splitlines()]
    assert len(lines) == samples + 1 and all(line[0] == "206" for line in lines), lines
    first = [float(line[3]) - float(line[2]) for line in lines[1:]]
    return float(lines[0][1]), statistics.median(first)


def one_way_latency(a, b, samples=SAMPLES):
    """Half the median TCP connect time (SYN to SYN-ACK: one round trip)
    from node a's namespace to node b's peer port (seconds)."""
    connect = []
    for _ in range(samples):
        out = ph._run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_connect}",
                       f"http://{b.address}/server/ping"], ns=a.ns).stdout.split()
        assert out[0] == "200", out
        connect.append(float(out[1]))
    return statistics.median(connect) / 2


class LoadedLatency:
    """During the cluster's read, the round trip a control message sees:
    TCP connects (SYN out through one node's link queues, SYN-ACK back
    through the other's) from node to node, over and over, in a thread."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        k = 0
        while not self._stop.is_set():
            a = self.nodes[k % len(self.nodes)]
            b = self.nodes[(k * 7 + 3) % len(self.nodes)]
            k += 1
            if a is b:
                continue
            out = ph._run(["curl", "-sS", "-o", "/dev/null", "--max-time", "5", "-w", "%{http_code} %{time_connect}",
                           f"http://{b.address}/server/ping"], ns=a.ns, check=False).stdout.split()
            if len(out) == 2 and out[0] == "200":
                self.samples.append(float(out[1]))
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def one_way(self):
        return statistics.median(self.samples) / 2


def peer_ttfb(cluster, asker_ns, holder, rows, samples=SAMPLES):
    """Median request-to-first-byte (seconds) of signed peer requests, as a
    node sends them, from namespace `asker_ns` to `holder` for ranges it
    holds (the trace's reads, granule-aligned, at most 64 KiB): the peer
    server's own time plus one round trip."""
    path = f"/v2/{cluster.repo}/blobs/sha256:{cluster.image.digest}"
    first = []
    for i in range(samples):
        row = rows[i % len(rows)]
        begin = int(row["offset"]) // 4096 * 4096
        end = min(int(row["blob_size"]), begin + min(65536, int(row["length"]) + 4096)) - 1
        rng = f"bytes={begin}-{end}"
        out = ph._run(["curl", "-sS", "-o", "/dev/null", "-r", f"{begin}-{end}",
                       "-H", f"{ph.PEER_AUTH_HEADER}: {cluster.peer_auth('GET', path, rng)}",
                       "-H", f"X-Dragonfly-Registry: {cluster.registry_url}",
                       "-H", f"X-Nydus-Blob-Size: {cluster.image.blob_size}",
                       "-w", "%{http_code} %{time_connect} %{time_starttransfer}",
                       f"http://{holder.address}{path}"], ns=asker_ns).stdout.split()
        assert out[0] == "206", out
        first.append(float(out[2]) - float(out[1]))
    return statistics.median(first)


def run_sim(trace_path, nodes, registry_rate, node_rate, registry_latency_s, hop_latency_s, p2p):
    args = [str(P2P_SIM), "--trace", str(trace_path), "--nodes", str(nodes),
            "--registry-gbit", f"{ph._rate_bytes(registry_rate) * 8 / 1e9:g}",
            "--node-gbit", f"{ph._rate_bytes(node_rate) * 8 / 1e9:g}",
            "--registry-latency-ms", f"{registry_latency_s * 1000:.4f}",
            "--hop-latency-ms", f"{hop_latency_s * 1000:.4f}",
            "--unit-size", str(p2p["unit_size"]), "--peer-timeout-ms", str(p2p["peer_timeout_ms"])]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    [row] = list(csv.DictReader(io.StringIO(proc.stdout)))
    print("sim:", " ".join(args[1:]))
    print("sim row:", proc.stdout.strip().splitlines()[-1])
    return row


def pct(sorted_values, p):
    """The simulator's percentile: the ceil(p*n)-th smallest value."""
    k = math.ceil(p * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(k, 1)) - 1]


def host_veth(cluster, node):
    return f"nv-{cluster.run}-n{node.index}"


# Queue of the node links' tbf (the harness's 100 ms by default): the
# simulator's links are lossless queues; here 31 askers converging on an
# owner overflow the drop-tail queue and a few nodes wait out TCP
# retransmissions (the p99 gap). 300 ms changed little; 2 s was worse
# (first bytes then wait past the peer timeout).
NODE_QUEUE = os.environ.get("SIM_CALIBRATION_NODE_QUEUE", "100ms")


def shape_downlink(cluster, node):
    """The harness shapes a node's egress (its uplink); the simulator's
    node_gbit is each node's uplink and downlink, so the node's ingress is
    shaped the same way: tbf on the host-side end of its veth (the bridge
    sends to the node through it). Both with NODE_QUEUE of queue."""
    ph._tbf(node.ns, "eth0", cluster.node_rate, latency=NODE_QUEUE)
    ph._tbf(None, host_veth(cluster, node), cluster.node_rate, latency=NODE_QUEUE)
    return node


def uploaded_bytes(cluster, node):
    """Bytes the node has sent on its link so far (the host-side veth's rx counter: headers included)."""
    return int(pathlib.Path(f"/sys/class/net/{host_veth(cluster, node)}/statistics/rx_bytes").read_text())


M64 = (1 << 64) - 1


def _fnv1a(text, h=0xcbf29ce484222325):
    for c in text.encode():
        h = ((h ^ c) * 0x100000001b3) & M64
    return h


def _splitmix64(x):
    x = (x + 0x9e3779b97f4a7c15) & M64
    x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & M64
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & M64
    return x ^ (x >> 31)


def unit_owner(members, digest, unit):
    """The unit's first owner: p2p/rendezvous.cc's highest weight, ported."""
    key = _splitmix64(_fnv1a(digest) ^ _splitmix64(unit))
    return max(members, key=lambda m: (_splitmix64(_fnv1a(m) ^ key), [-ord(ch) for ch in m]))


def owned_trace_bytes(members, rows, unit_size):
    """{member: trace bytes in the units it owns first}, busiest first."""
    out = {m: 0 for m in members}
    for r in rows:
        offset, end = int(r["offset"]), int(r["offset"]) + int(r["length"])
        while offset < end:
            unit = offset // unit_size
            piece = min(end, (unit + 1) * unit_size) - offset
            out[unit_owner(members, r["blob"], unit)] += piece
            offset += piece
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def qdisc_drops(cluster, nodes):
    """Packets the node links' tbf dropped so far (both directions)."""
    total = 0
    for n in nodes:
        for ns, dev in ((n.ns, "eth0"), (None, host_veth(cluster, n))):
            out = ph._run(["tc", "-s", "qdisc", "show", "dev", dev], ns=ns).stdout
            total += sum(int(x) for x in re.findall(r"dropped (\d+)", out.split("qdisc", 2)[1]))
    return total


def process_cpu_s(pids):
    """CPU seconds (user + system) the processes used so far, all threads."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def with_access_pattern(node):
    """The node's config gains `access_pattern` (the backend read trace)."""
    config = node.config
    node.config = lambda: {**config(), "access_pattern": True}
    return node


def test_simulator_matches_a_real_cluster(tmp_path):
    with ph.Cluster(nodes=0, rate=REGISTRY_RATE, node_rate=NODE_RATE) as c:
        image = c.image
        files = file_list(image)
        file_bytes = sum(image.sizes[f] for f in files)
        print(f"files: {len(files)}, {file_bytes} bytes: {files}")

        # 1. The trace: one node alone (its peers list names only itself).
        lone_address = f"{c.address(10)}:{ph.PEER_PORT}"
        lone = shape_downlink(c, with_access_pattern(c.add_node(p2p_extra={"peers": [lone_address]})))
        assert lone.address == lone_address
        lone.start()
        status, before_csv = lone.api("/api/v1/metrics/backend/reads")
        assert status == 200, before_csv
        origin_before = c.origin_bytes()
        t1_real, got = read_files(lone, files, image)
        assert got == file_bytes
        status, trace_csv = lone.api("/api/v1/metrics/backend/reads")
        assert status == 200, trace_csv
        trace_path = tmp_path / "trace.csv"
        trace_path.write_text(trace_csv)
        rows = list(csv.DictReader(io.StringIO(trace_csv)))
        start_rows = len(list(csv.DictReader(io.StringIO(before_csv))))
        lone_origin = c.origin_bytes() - origin_before
        print(f"trace: {len(rows)} backend reads ({start_rows} at start-up, before the files), "
              f"{sum(int(r['length']) for r in rows)} bytes; lone read {t1_real:.3f}s, origin {lone_origin}")

        # The cluster's nodes (namespaces now, daemons later), each with its
        # own peer port, cache and piece store; static peers: the NODES.
        addresses = [f"{c.address(10 + 1 + i)}:{ph.PEER_PORT}" for i in range(NODES)]
        nodes = [shape_downlink(c, c.add_node(p2p_extra={"peers": addresses, "peer_timeout_ms": PEER_TIMEOUT_MS}))
                 for _ in range(NODES)]
        assert [n.address for n in nodes] == addresses

        # 3. Measured parameters, from a cluster node's namespace while the
        # links are idle: the registry's ranged GET, the round trip to
        # another node (TCP connect to the lone node's peer port), and a
        # peer request the lone node answers from its piece store.
        connect_s, registry_first_s = median_ttfb(c, nodes[0])
        hop_s = one_way_latency(nodes[0], lone)
        peer_first_s = peer_ttfb(c, nodes[0].ns, lone, rows)
        print(f"measured (median of {SAMPLES}): registry connect {connect_s * 1e3:.3f} ms, request to first byte "
              f"{registry_first_s * 1e3:.3f} ms; node-to-node one way {hop_s * 1e3:.3f} ms (connect / 2); "
              f"peer request to first byte {peer_first_s * 1e3:.3f} ms")
        lone.kill()

        # 2. The cluster reads the same files at the same moment.
        c.start_nodes(nodes)
        drops0 = qdisc_drops(c, nodes)
        sent0 = [uploaded_bytes(c, n) for n in nodes]
        origin_before = c.origin_bytes()
        lone_requests = len([r for r in c.origin_requests() if r.method == "GET"])
        barrier = threading.Barrier(NODES + 1)
        times = [None] * NODES

        def one(i):
            barrier.wait()
            times[i] = read_files(nodes[i], files, image)[0]

        with concurrent.futures.ThreadPoolExecutor(NODES) as pool:
            futures = [pool.submit(one, i) for i in range(NODES)]
            busy0, total0 = cpu_ticks()
            pids = [n.pid for n in nodes] + [c._registry.pid]
            own0 = process_cpu_s(pids) + sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
            with LoadedLatency(nodes) as loaded:
                barrier.wait()
                began = time.monotonic()
                for f in futures:
                    f.result()
                wall = time.monotonic() - began
            busy1, total1 = cpu_ticks()
            own = process_cpu_s(pids) + sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - own0
        cpu = (busy1 - busy0) / max(1, total1 - total0)
        origin_real = c.origin_bytes() - origin_before
        drops = qdisc_drops(c, nodes) - drops0
        sent = [uploaded_bytes(c, n) - s0 for n, s0 in zip(nodes, sent0)]
        node_bps = ph._rate_bytes(NODE_RATE)
        print(f"node links: {drops} packets dropped by tbf during the read; uploads (link bytes): busiest "
              f"{max(sent)} = {max(sent) / node_bps:.2f}s at {NODE_RATE}, mean {statistics.mean(sent):.0f}, "
              f"busiest / mean {max(sent) / statistics.mean(sent):.2f}")
        times.sort()
        real = {"single_node_s": t1_real, "p50_s": pct(times, 0.50), "p99_s": pct(times, 0.99),
                "max_s": times[-1], "origin_bytes": origin_real}
        print(f"cluster: {NODES} nodes read in {wall:.2f}s, machine CPU busy {cpu * 100:.0f} %, "
              f"the daemons, registry and readers used {own:.2f} CPU s ({own / wall / 2 * 100:.0f} % of 2 cores); "
              f"origin {origin_real} bytes; "
              f"times {[round(t, 2) for t in times]}")
        counters = {}
        uploads = []  # body bytes each node uploaded to peers
        all_metrics = [n.metrics().get("p2p", {}) for n in nodes]
        top = max(range(NODES), key=lambda i: all_metrics[i].get("upload_bytes", 0))
        by_peer = all_metrics[top].get("uploads_by_peer", {})
        print(f"the busiest uploader ({nodes[top].address}) sent {all_metrics[top].get('redirects_sent', 0)} "
              f"redirects and {all_metrics[top].get('waits_sent', 0)} waits, and uploaded to {len(by_peer)} peers: "
              f"{sorted(v['bytes'] for v in by_peer.values())} bytes each")
        for n, p2p_metrics in zip(nodes, all_metrics):
            uploads.append(p2p_metrics.get("upload_bytes", 0))
            for k, v in p2p_metrics.items():
                if isinstance(v, (int, float)):
                    counters[k] = counters.get(k, 0) + v
        print(f"p2p counters, summed over the nodes: {json.dumps(counters)}")
        by_client = c.origin_bytes_by_client()
        print(f"origin bytes by node: {sorted(by_client.values(), reverse=True)}")
        print("p2p log lines:", "\n".join(l for n in nodes[:4] for l in n.p2p_log_lines()[-15:]))

        # Placement: the simulator names its nodes 10.0.0.<i>:65002, the
        # cluster's are on the harness's subnet. Rendezvous over ~18 units
        # and 32 names is lumpy, and the busiest owner's uplink bounds the
        # completion time, so compare the busiest owner under both names.
        unit_size = nodes[0].config()["p2p"]["unit_size"]
        real_owned = owned_trace_bytes(addresses, rows, unit_size)
        sim_owned = owned_trace_bytes([f"10.0.0.{i}:{ph.PEER_PORT}" for i in range(NODES)], rows, unit_size)
        by_address = dict(zip(addresses, sent))
        busiest = max(by_address, key=by_address.get)
        print(f"placement: trace bytes owned by the busiest owner: real names {list(real_owned.values())[:4]}, "
              f"simulator's names {list(sim_owned.values())[:4]}; the real busiest uploader {busiest} "
              f"({by_address[busiest]} link bytes) owns {real_owned[busiest]} trace bytes "
              f"(rank {list(real_owned).index(busiest) + 1})")
        registry_latency_s = max(0.0, registry_first_s - hop_s)
        p2p = nodes[0].config()["p2p"]
        sim = run_sim(trace_path, NODES, REGISTRY_RATE, NODE_RATE, registry_latency_s, hop_s, p2p)
        # The simulator's links queue data only; its requests, redirects,
        # waits and 404s cross a hop in hop_latency whatever the links carry.
        # The real ones wait in the same drop-tail tbf queues as the data
        # (100 ms deep at the node rate), so the one-way latency measured
        # during the read is the hop a control message saw then.
        loaded_hop_s = loaded.one_way()
        print(f"measured during the read: node-to-node one way {loaded_hop_s * 1e3:.2f} ms "
              f"(median of {len(loaded.samples)} connects / 2; idle {hop_s * 1e3:.3f} ms)")
        sim_loaded = run_sim(trace_path, NODES, REGISTRY_RATE, NODE_RATE, registry_latency_s, loaded_hop_s, p2p)

        figures = ["single_node_s", "p50_s", "p99_s", "max_s", "origin_bytes"]
        table = {k: {"real": real[k], "sim": float(sim[k]), "sim_loaded_hop": float(sim_loaded[k])}
                 for k in figures}
        for k in figures:
            table[k]["sim/real"] = table[k]["sim"] / real[k] if real[k] else None
        # Not asserted, for the reader: how evenly uploads spread, and how
        # often a hot unit's asker was sent to a holder.
        upload_ratio = max(uploads) / statistics.mean(uploads) if statistics.mean(uploads) else 0
        diagnostics = {
            "busiest_upload/mean": (upload_ratio, float(sim["max_upload_ratio"]),
                                    float(sim_loaded["max_upload_ratio"])),
            "hot_redirects": (counters.get("redirects_sent", 0), int(sim["redirects"]), int(sim_loaded["redirects"])),
            "waits": (counters.get("waits_sent", 0), int(sim["waits"]), int(sim_loaded["waits"])),
            "origin_requests": (len([r for r in c.origin_requests() if r.method == "GET"]) - lone_requests,
                                int(sim["origin_requests"]), int(sim_loaded["origin_requests"])),
        }
        report = {
            "nodes": NODES, "registry_rate": REGISTRY_RATE, "node_rate": NODE_RATE,
            "peer_timeout_ms": p2p["peer_timeout_ms"], "files": len(files), "file_bytes": file_bytes,
            "trace_reads": len(rows), "unique_bytes": int(sim["unique_bytes"]),
            "measured": {"registry_connect_ms": connect_s * 1e3, "registry_first_byte_ms": registry_first_s * 1e3,
                         "hop_one_way_ms": hop_s * 1e3, "peer_first_byte_ms": peer_first_s * 1e3,
                         "sim_registry_latency_ms": registry_latency_s * 1e3,
                         "hop_one_way_during_read_ms": loaded_hop_s * 1e3},
            "cluster": {"wall_s": wall, "cpu_own_s": own, "machine_busy": cpu, "tbf_drops": drops,
                        "upload_max_bytes": max(sent), "upload_mean_bytes": statistics.mean(sent),
                        "times_s": times, "p2p_counters": counters},
            "owned_trace_bytes_top": {"real_names": list(real_owned.values())[:4],
                                      "sim_names": list(sim_owned.values())[:4]},
            "sim_extra": {k: sim[k] for k in ("origin_requests", "max_upload_ratio", "redirects", "waits",
                                              "peer_failures", "origin_fallbacks")},
            "figures": table,
            "diagnostics": {k: dict(zip(("real", "sim", "sim_loaded_hop"), v)) for k, v in diagnostics.items()},
        }
        lines = [f"{'figure':<16}{'real':>14}{'sim':>14}{'sim/real':>10}{'sim (loaded hop)':>22}"]
        for k in figures:
            row = table[k]
            fmt = (lambda v: f"{v:14.0f}") if k == "origin_bytes" else (lambda v: f"{v:14.3f}")
            lines.append(f"{k:<16}{fmt(row['real'])}{fmt(row['sim'])}{row['sim/real']:10.3f}"
                         f"{fmt(row['sim_loaded_hop']):>22}")
        lines.append("not asserted:")
        for k, (r, v, v_peer) in diagnostics.items():
            lines.append(f"{k:<16}{r:14.2f}{v:14.2f}{v / r if r else 0:10.3f}{v_peer:22.2f}")
        print("\nsimulator calibration, {} nodes, registry {}, nodes {}:\n{}".format(
            NODES, REGISTRY_RATE, NODE_RATE, "\n".join(lines)))
        out = os.environ.get("SIM_CALIBRATION_OUT")
        if out:
            pathlib.Path(out).write_text(json.dumps(report, indent=1))

        def within(k, tolerance):
            return abs(table[k]["sim"] - real[k]) <= tolerance * real[k]

        failed = [f"origin_bytes: real {real['origin_bytes']}, sim {sim['origin_bytes']}"
                  for _ in [0] if not within("origin_bytes", ORIGIN_TOLERANCE)]
        failed += [f"{k}: real {real[k]:.3f}s, sim {table[k]['sim']:.3f}s" for k in ("single_node_s", "p50_s", "p99_s")
                   if not within(k, TIME_TOLERANCE)]
        assert not failed, ("the simulator disagrees with the real cluster: " + "; ".join(failed) +
                            f" (origin within {ORIGIN_TOLERANCE:.0%}, times within {TIME_TOLERANCE:.0%})")
