"""Issue 11, "Must show": the embedded P2P backend, tested with real nydusd
daemons in network namespaces (p2p_harness.py): a registry (Debian's
docker-registry) behind a tc tbf link, nodes on a bridge, every node with its
own cache, piece store and `p2p` config object.

Every test checks every byte of every file it reads against the source tree
and counts origin bytes at the registry (Cluster.origin_bytes(): blob body
bytes from its log) against the image's unique bytes (the compressed sizes of
its distinct chunks: what a cluster reading everything must pull once).

Fault tests assert that the fault happened (the fault peer's own record, or a
node's log naming the peer: see assert_fault_logged(), the one place that
knows how the daemon words it) and that it cost no read and at most 10 %
extra origin bytes.

Select with `pytest test/mount -k p2p`; the harness's own tests are in
test_p2p_harness.py.
"""
import base64
import concurrent.futures
import hashlib
import http.server
import json
import signal
import subprocess
import threading
import time

import pytest

import containerd_harness as ch
import p2p_harness as ph
import registry_harness as rh

pytestmark = pytest.mark.p2p

# Origin bytes may exceed the unique bytes by this factor: all nodes cold at
# once (the issue's 1.02), and with a fault (10 % extra).
COLD_FACTOR = 1.02
FAULT_FACTOR = 1.10


@pytest.fixture(autouse=True)
def _tools():
    ph.require_cluster_tools()


def assert_fault_logged(nodes, peer, what, since):
    """The daemon noticed trouble with `peer` ("ip:port"): some node logged,
    at or after `since` (time.time() when the fault began, so start-up lines
    listing members do not count), a line that mentions p2p and the peer.
    The daemon's wording is not fixed yet; adjust here (and only here) once
    it is."""
    lines = [line for node in nodes for line in node.p2p_log_lines(peer, since=since)]
    assert lines, (f"{what}: no node logged a p2p line naming {peer}; p2p lines:\n" +
                   "\n".join(l for n in nodes for l in n.p2p_log_lines()[-20:]))
    print(f"{what}: {len(lines)} log lines, e.g. {lines[0][:200]}")
    return lines


def assert_origin_within(cluster, before, factor, what):
    got = cluster.origin_bytes() - before
    unique = cluster.unique_bytes
    names = {n.ip: f"node{n.index}" for n in cluster.nodes}
    names.update({p.ip: f"{p.mode}-peer" for p in cluster.fault_peers})
    by_client = {names.get(ip, ip): b for ip, b in sorted(cluster.origin_bytes_by_client(settle=False).items())}
    print(f"{what}: origin {got} bytes = {got / unique:.3f}x unique {unique}; by client (whole test) {by_client}")
    assert got <= factor * unique, (f"{what}: the registry served {got} blob bytes, {got / unique:.3f}x the "
                                    f"{unique} unique bytes (limit {factor}x); by client {by_client}")
    return got


def read_concurrently(nodes, orders=None):
    """Starts every node's read_all(check=False) at once; returns the futures' pool and futures."""
    pool = concurrent.futures.ThreadPoolExecutor(len(nodes))
    barrier = threading.Barrier(len(nodes))

    def one(i, node):
        barrier.wait()
        return node.read_all(check=False, order=None if orders is None else orders[i])

    return pool, [pool.submit(one, i, n) for i, n in enumerate(nodes)]


def assert_reports_ok(reports, nodes):
    bad = [r for r in reports if not r.ok]
    assert not bad, "\n".join(r.summary() for r in bad) + "\n" + "\n".join(
        f"--- node {n.index} log tail:\n{n.log()[-2500:]}" for n in nodes if any(r.node == n.index for r in bad))


# ---------------------------------------------------------------------------
# Cold reads, all nodes at once


# 4 and 8 nodes run the same daemon code paths as 2; under ASan (2-3x the
# CPU per daemon) on a 2-core CI machine they only add time, so they run on
# the release build only.
@pytest.mark.parametrize("n", [2, pytest.param(4, marks=pytest.mark.once), pytest.param(8, marks=pytest.mark.once)])
def test_p2p_cold_cluster_pulls_each_byte_once(n):
    """N nodes read the whole image at the same moment, in the same order
    (every node wants the same unit at about the same time): every file
    byte-exact on every node; the registry served <= 1.02x the unique bytes."""
    with ph.Cluster(nodes=n) as c:
        c.start_nodes()
        start = time.monotonic()
        reports = c.read_all()
        elapsed = time.monotonic() - start
        assert all(r.files == len(c.image.files) for r in reports)
        print(f"{n} nodes: {elapsed:.2f}s, slowest node {max(r.seconds for r in reports):.2f}s")
        assert_origin_within(c, 0, COLD_FACTOR, f"{n} nodes cold")


def test_p2p_hot_units_spread_as_a_tree():
    """8 nodes read the whole image at the same moment, in the same order,
    with spread_uploads 1: an owner serves a unit's first asker itself and
    sends later ones to holders of their bytes (or tells them to come back
    while there is none), holders send askers on to the nodes they served.
    Every file byte-exact on every node, the registry served <= 1.02x the
    unique bytes, and redirects and waits were sent and followed."""
    with ph.Cluster(nodes=8, p2p_extra={"spread_uploads": 1}) as c:
        c.start_nodes()
        reports = c.read_all()
        assert all(r.files == len(c.image.files) for r in reports)
        assert_origin_within(c, 0, COLD_FACTOR, "8 nodes, spread_uploads 1")
        p2p = [n.metrics()["p2p"] for n in c.nodes]
        totals = {k: sum(m[k] for m in p2p) for k in ("redirects_sent", "redirects_followed", "waits_sent",
                                                       "waits_followed", "upload_bytes")}
        uploads = sorted(m["upload_bytes"] for m in p2p)
        print(f"tree: {totals}; uploads per node {uploads}")
        assert totals["redirects_sent"] > 0 and totals["redirects_followed"] > 0, totals
        assert totals["waits_sent"] > 0 and totals["waits_followed"] > 0, totals


# ---------------------------------------------------------------------------
# Remote-peer hit and a restarted node's piece store


def test_p2p_remote_peer_hit_needs_no_origin():
    """A reads the image; then B, cut off from the registry, reads it all
    from its peer: every file byte-exact, 0 origin bytes during B's read.
    A's P2P counters read the same in the metrics JSON and in Prometheus."""
    with ph.Cluster(nodes=2) as c:
        a, b = c.start_nodes()
        a.read_all()
        before = c.origin_bytes()
        b.cut_registry()
        b.read_all()
        assert c.origin_bytes() - before == 0
        p2p = a.metrics()["p2p"]
        status, text = a.api("/api/v1/metrics/prometheus")
        assert status == 200, text
        prom = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("nydusd_p2p_"))
        assert p2p["upload_bytes"] > 0
        for key in ("upload_bytes", "upload_requests", "owner_hits", "owner_misses", "origin_bytes"):
            assert int(prom[f"nydusd_p2p_{key}_total"]) == p2p[key], (key, prom, p2p)


def test_p2p_restarted_node_serves_its_piece_store():
    """A reads the image (the pieces end up in A's and B's piece stores: each
    node fetches what it owns). A is stopped, its blob cache dropped (so
    nothing but the piece store can answer for it) and started again; then
    both are cut off from the registry and B reads everything: byte-exact,
    0 origin bytes. B's own store cannot hold A's units, so A served them
    from the store it kept across the restart."""
    with ph.Cluster(nodes=2) as c:
        a, b = c.start_nodes()
        a.read_all()
        assert a.stop() == 0
        a.drop_blob_cache()
        a.start()
        before = c.origin_bytes()
        a.cut_registry()
        b.cut_registry()
        b.read_all()
        assert c.origin_bytes() - before == 0
        # And A itself, restarted with an empty blob cache, reads from its store and B.
        a.read_all()
        assert c.origin_bytes() - before == 0


def test_p2p_late_owner_sends_askers_to_the_next_owner():
    """Nodes start at different moments (a rollout, a restart): node 3 is a
    member but not running while node 0 reads the image, so node 0 finds its
    port closed and node 3's units are fetched by their next owners. Node 3
    then starts and node 1 reads everything: node 3, asked for units it
    neither holds nor fetches, sends node 1 to the next owner first (it has
    just started), so the cluster pulls nothing from the origin again."""
    with ph.Cluster(nodes=4) as c:
        n0, n1, n2, n3 = c.nodes
        c.start_nodes([n0, n1, n2])
        n0.read_all()
        assert n0.p2p_log_lines(n3.address), "node 0 never found node 3's port closed"
        n3.start()
        before = c.origin_bytes()
        n1.read_all()
        got = c.origin_bytes() - before
        redirects = n3.metrics()["p2p"]["fallback_redirects"]
        print(f"late owner: {redirects} askers sent to the next owner; origin bytes after its start {got}")
        assert redirects > 0
        assert got == 0, f"node 1's read pulled {got} bytes from the origin again"


@pytest.mark.once  # no code of its own for ASan: the Authorization is a string handed along
def test_p2p_private_repository_is_shared():
    """The registry wants Basic auth for everything (a private repository).
    Two nodes read the image at once: an asking node passes the
    Authorization it uses for the origin, so each owner fetches its units
    for the other one: origin bytes <= 1.02x the unique bytes, no peer
    request failed, both nodes uploaded. (Whether a node may serve held
    bytes of a private repository to an asker without credentials is issue
    12's guard.)"""
    with ph.Cluster(nodes=2, basic_auth=("p2p", "not-a-secret")) as c:
        c.start_nodes()
        c.read_all()
        assert_origin_within(c, 0, COLD_FACTOR, "private repository")
        for n in c.nodes:
            p2p = n.metrics()["p2p"]
            assert p2p["peer_failures"] == 0, f"node {n.index}: {p2p}"
            assert p2p["upload_bytes"] > 0, f"node {n.index} uploaded nothing: {p2p}"


def test_p2p_shared_daemon_runs_one_node_for_all_its_mounts():
    """A shared-mode daemon (no image at start, the `p2p` object from its
    --p2p-config file, instance configs without one, as nydus-snapshotter
    runs it) has one peer server and one piece store for all its mounts.
    Node 0 runs shared with the image mounted at /a; node 1 runs the image
    directly. Both read everything (node 1 from node 0's units through its
    peer server); then node 0 mounts the image again at /b with a blob cache
    of its own and reads it with the registry cut off: its bytes come from
    the piece store the two mounts share (and node 1), none from the origin."""
    with ph.Cluster(nodes=2) as c:
        shared, plain = c.nodes
        shared.start(shared=True)
        plain.start()
        shared.mount_instance("a")
        shared.read_all(subdir="a")
        plain.read_all()
        assert_origin_within(c, 0, COLD_FACTOR, "shared daemon and a plain one")
        listening = [l for l in shared.p2p_log_lines() if "peer server listening" in l]
        assert len(listening) == 1, listening
        store_hits = shared.metrics("/a")["p2p"]["store_hits"]
        shared.mount_instance("b", cache_dir=shared.dir / "cache-b")
        shared.cut_registry()
        before = c.origin_bytes()
        shared.read_all(subdir="b")
        assert c.origin_bytes() == before
        assert shared.metrics("/b")["p2p"]["store_hits"] > store_hits
        p2p = plain.metrics()["p2p"]
        assert p2p["peer_failures"] == 0 and p2p["upload_bytes"] > 0, p2p
        assert [l for l in shared.p2p_log_lines() if "peer server listening" in l] == listening


# ---------------------------------------------------------------------------
# Faults


def test_p2p_owner_sigkilled_mid_transfer():
    """Four nodes read at once; once the registry has sent ~15 % of the
    unique bytes, the node that is pulling the most from the origin at that
    moment (an owner fetching a unit the others wait for) is SIGKILLed. The
    three others read everything byte-exact, no read fails, <= 10 % extra
    origin bytes; they noticed the dead owner.

    Units of 256 KiB (about 72 for this image) so that the victim still owns
    units nobody has fetched when it dies: with 1 MiB units a victim owning one
    or two units could finish them before the kill and never be asked again."""
    with ph.Cluster(nodes=4, p2p_extra={"unit_size": 256 << 10}) as c:
        c.start_nodes()
        link0 = c.link_tx_bytes()
        pool, futures = read_concurrently(c.nodes)
        deadline = time.monotonic() + 60
        before = {n.index: n.origin_rx_bytes() for n in c.nodes}
        victim = None
        while victim is None:
            assert time.monotonic() < deadline, "no node pulled from the origin"
            assert not all(f.done() for f in futures), "reads ended before an owner could be killed"
            time.sleep(0.01)
            now = {n.index: n.origin_rx_bytes() for n in c.nodes}
            if c.link_tx_bytes() - link0 >= 0.15 * c.unique_bytes:
                pulling = [n for n in c.nodes if now[n.index] > before[n.index]]
                if pulling:
                    victim = max(pulling, key=lambda n: now[n.index] - before[n.index])
            before = now
        killed_at = time.time()
        victim.kill()
        survivors = [n for n in c.nodes if n is not victim]
        print(f"killed node {victim.index} after {c.link_tx_bytes() - link0} link bytes")
        reports = [f.result(timeout=180) for n, f in zip(c.nodes, futures) if n is not victim]
        futures[victim.index].result(timeout=60)  # the victim's own reader: errors expected, not checked
        pool.shutdown()
        assert_reports_ok(reports, survivors)
        assert_origin_within(c, 0, FAULT_FACTOR, "owner killed")
        assert_fault_logged(survivors, victim.address, "owner SIGKILLed", killed_at)


def test_p2p_owner_port_closed():
    """Four nodes in every peers list, one of them stopped (its port refuses
    connections): the three others read byte-exact, <= 10 % extra origin."""
    with ph.Cluster(nodes=4) as c:
        c.start_nodes()
        closed = c.nodes[3]
        closed_at = time.time()
        assert closed.stop() == 0
        r = subprocess.run(["ip", "netns", "exec", c.nodes[0].ns, "curl", "-sS", "-m", "2", "-o", "/dev/null",
                            f"http://{closed.address}/server/ping"], capture_output=True)
        assert r.returncode == 7, r  # connection refused
        c.read_all(c.nodes[:3])
        assert_origin_within(c, 0, FAULT_FACTOR, "owner port closed")
        assert_fault_logged(c.nodes[:3], closed.address, "owner port closed", closed_at)


@pytest.mark.parametrize("corrupt", ["flip", "wrong"])
def test_p2p_byzantine_peer(corrupt):
    """A peer in every peers list serves wrong bytes of the right length
    (1 % of bits flipped, or another blob): it was asked, and what it served
    never reached a reader: byte-exact, <= 10 % extra origin bytes."""
    with ph.Cluster(nodes=3) as c:
        byz = c.byzantine_peer(corrupt=corrupt)
        c.start_nodes()
        started = time.time()
        c.read_all()
        assert byz.served_bytes() > 0, "the byzantine peer was never asked"
        assert_origin_within(c, 0, FAULT_FACTOR, f"byzantine peer ({corrupt})")
        assert_fault_logged(c.nodes, byz.address, "byzantine peer", started)


def test_p2p_mirror_cuts_a_whole_blob_that_fails_its_digest():
    """Issue 12: a stock client (curl) pulls a whole blob (no Range) through
    a node's mirror while a byzantine peer owns some of its units. The blob
    is hashed on the way out and its last bytes are withheld on a mismatch:
    the first pull is cut short (curl fails, never a complete wrong blob),
    the peer is demoted, and the retry is the right blob."""
    with ph.Cluster(nodes=1) as c:
        byz = c.byzantine_peer(corrupt="flip")
        (a,) = c.start_nodes()
        blob = c.image.blob_path.read_bytes()
        url = f"{ph.MIRROR_URL}/v2/{c.repo}/blobs/sha256:{c.image.digest}"
        started = time.time()

        def pull():
            return subprocess.run(["ip", "netns", "exec", a.ns, "curl", "-sS", "-o", "-", "-H",
                                   f"X-Dragonfly-Registry: {c.registry_url}", url], capture_output=True, timeout=60)

        first = pull()
        assert byz.served_bytes() > 0, "the byzantine peer was never asked"
        assert first.returncode != 0, "a wrong blob was handed out whole"
        assert len(first.stdout) < len(blob), len(first.stdout)
        assert a.metrics()["p2p"]["verify_failures"] >= 1
        assert_fault_logged([a], byz.address, "byzantine peer, whole blob", started)
        second = pull()
        assert second.returncode == 0, second.stderr
        assert hashlib.sha256(second.stdout).hexdigest() == c.image.digest


@pytest.mark.once
def test_p2p_upload_rate_limits_hold():
    """Issue 12, fair sharing: upload_rate 2.4 MiB/s in all and
    upload_rate_per_peer 1.5 MiB/s. One client alone pulls the whole blob
    at the per-client rate; then two clients (two addresses) at once get
    half the total each. Every pull lasts more than 10 s and its rate is
    within 10 % of the limit that binds it. max_uploads 2: a third request
    while those two run gets 503 at once, counted as refused_busy. An
    on-demand range passes two low-priority pulls (prefetch, a stock
    client's whole blob) that fill the total, and is admitted while they
    hold both upload slots (a third low-priority one is not)."""
    per_peer, total = 1.5 * 2**20, 2.4 * 2**20
    with ph.Cluster(nodes=3) as c:
        a, b, d = c.nodes
        a.p2p_extra.update({"peers": [a.address], "upload_rate": int(total), "upload_rate_per_peer": int(per_peer),
                            "max_uploads": 2})
        c.start_nodes([a])
        a.read_all()  # the only member: it owns and holds every unit
        path = f"/v2/{c.repo}/blobs/sha256:{c.image.digest}"
        size = c.image.blob_path.stat().st_size

        def pull(ns):
            rng = f"bytes=0-{size - 1}"
            r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "-f", "-o", "/dev/null", "-w",
                                "%{size_download} %{time_total}", "-H", f"Range: {rng}", "-H",
                                f"X-Dragonfly-Registry: {c.registry_url}", "-H",
                                f"{ph.PEER_AUTH_HEADER}: {c.peer_auth('GET', path, rng)}", f"http://{a.address}{path}"],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            got, seconds = r.stdout.split()
            assert int(got) == size
            return size / float(seconds), float(seconds)

        alone, seconds = pull(b.ns)
        print(f"one client: {alone / 2**20:.3f} MiB/s over {seconds:.1f} s (limit {per_peer / 2**20} per client)")
        assert seconds > 10 and abs(alone / per_peer - 1) <= 0.10, (alone, seconds)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            pulls = [pool.submit(pull, ns) for ns in (b.ns, d.ns)]
            time.sleep(2)
            busy_before = a.metrics()["p2p"]["refused_busy"]
            r = subprocess.run(["ip", "netns", "exec", a.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                "-H", "Range: bytes=0-4095", "-H", f"X-Dragonfly-Registry: {c.registry_url}", "-H",
                                f"{ph.PEER_AUTH_HEADER}: {c.peer_auth('GET', path, 'bytes=0-4095')}",
                                f"http://{a.address}{path}"], capture_output=True, text=True, timeout=10)
            assert r.stdout == "503", r
            assert a.metrics()["p2p"]["refused_busy"] == busy_before + 1
            both = [f.result() for f in pulls]
        print("two clients: " + ", ".join(f"{r / 2**20:.3f} MiB/s over {t:.1f} s" for r, t in both) +
              f" (limit {total / 2**20} in all)")
        for rate, seconds in both:
            assert seconds > 10 and abs(rate / (total / 2) - 1) <= 0.10, both

        # Priorities: two low-priority pulls fill the total (a stock client's
        # whole blob through the mirror, a peer's prefetch); an on-demand
        # 1 MiB range from a third address still goes at its per-client rate
        # instead of a share of what is left.
        def low_pull(ns, url, headers):
            return subprocess.Popen(["ip", "netns", "exec", ns, "curl", "-sS", "-o", "/dev/null", "-m", "60",
                                     *[a for h in headers for a in ("-H", h)], url])

        rng = "bytes=0-1048575"
        lows = [low_pull(a.ns, f"{ph.MIRROR_URL}{path}", [f"X-Dragonfly-Registry: {c.registry_url}"]),
                low_pull(d.ns, f"http://{a.address}{path}",
                         [f"Range: bytes=0-{size - 1}", "X-Nydus-Priority: low", f"X-Dragonfly-Registry: {c.registry_url}",
                          f"{ph.PEER_AUTH_HEADER}: {c.peer_auth('GET', path, f'bytes=0-{size - 1}')}"])]
        try:
            time.sleep(2)
            r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-f", "-o", "/dev/null", "-w",
                                "%{time_total}", "-H", f"Range: {rng}", "-H", f"X-Dragonfly-Registry: {c.registry_url}",
                                "-H", f"{ph.PEER_AUTH_HEADER}: {c.peer_auth('GET', path, rng)}",
                                f"http://{a.address}{path}"], capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            seconds = float(r.stdout)
            print(f"on-demand 1 MiB beside two low-priority pulls: {seconds:.2f} s "
                  f"(per-client rate alone: {2**20 / per_peer:.2f} s)")
            assert seconds < 1.15 * 2**20 / per_peer, seconds
            # max_uploads 2 is full of low-priority pulls: another one is refused.
            r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                "-H", "Range: bytes=0-4095", "-H", "X-Nydus-Priority: low", "-H",
                                f"X-Dragonfly-Registry: {c.registry_url}", "-H",
                                f"{ph.PEER_AUTH_HEADER}: {c.peer_auth('GET', path, 'bytes=0-4095')}",
                                f"http://{a.address}{path}"], capture_output=True, text=True, timeout=10)
            assert r.stdout == "503", r
        finally:
            for low in lows:
                low.kill()
                low.wait()


def test_p2p_sigterm_drains_the_node_and_ready_follows_it():
    """Issue 14, what a Kubernetes pod needs: /ready on the health port
    answers 200 while the daemon runs, /metrics there has the daemon's
    Prometheus text; on SIGTERM the node drains: /ready
    answers 503, a new peer request gets 503 (an asker moves on to the next
    owner), an upload already in flight (paced to take about 2 s) finishes
    byte-exact, and then nydusd exits 0."""
    rate = 2 << 20
    with ph.Cluster(nodes=2, p2p_extra={"upload_rate_per_peer": rate, "drain_timeout_ms": 8000}) as c:
        a, b = c.start_nodes()
        a.read_all()
        blob = c.image.blob_path.read_bytes()
        path = f"/v2/{c.repo}/blobs/sha256:{c.image.digest}"

        def ready():
            r = subprocess.run(["ip", "netns", "exec", a.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                "http://127.0.0.1:40901/ready"], capture_output=True, text=True, timeout=10)
            return r.stdout

        def peer_get(first, last):
            rng = f"bytes={first}-{last}"
            r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-o", "-", "-w", "\n%{http_code}",
                                "-H", f"Range: {rng}", "-H", f"X-Dragonfly-Registry: {c.registry_url}", "-H",
                                f"{ph.PEER_AUTH_HEADER}: {c.peer_auth('GET', path, rng)}", f"http://{a.address}{path}"],
                               capture_output=True, timeout=60)
            body, _, code = r.stdout.rpartition(b"\n")
            return int(code or 0), body

        assert ready() == "200"
        # The scrape target the DaemonSet annotates: the daemon's whole Prometheus text.
        r = subprocess.run(["ip", "netns", "exec", a.ns, "curl", "-sS", "-f", "http://127.0.0.1:40901/metrics"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0 and "nydusd_p2p_upload_bytes_total" in r.stdout, r
        assert "nydusd_backend_source_" in r.stdout or "nydusd_" in r.stdout.replace("nydusd_p2p_", ""), r.stdout[:500]
        last = 2 * rate - 1
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(peer_get, 0, last)
            time.sleep(0.5)
            a.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert a.running, "nydusd exited before its upload in flight finished:\n" + a.log()[-3000:] + a.stdout()[-3000:]
            assert ready() == "503"
            code, _ = peer_get(0, 4095)
            assert code == 503, code
            code, body = in_flight.result()
        assert code == 206 and body == blob[:last + 1], (code, len(body))
        assert a.proc.wait(timeout=20) == 0, a.log()[-2000:]
        assert any("drained in" in line for line in a.p2p_log_lines()), a.p2p_log_lines()[-10:]


def test_p2p_stalling_peer():
    """A peer in every peers list accepts connections and never answers:
    reads cost one short deadline per attempt, never fail; <= 10 % extra."""
    with ph.Cluster(nodes=3) as c:
        stall = c.stalling_peer()
        c.start_nodes()
        started = time.time()
        start = time.monotonic()
        c.read_all()
        elapsed = time.monotonic() - start
        assert stall.connections() > 0, "the stalling peer was never asked"
        print(f"stalling peer: {elapsed:.2f}s, {stall.connections()} connections held")
        assert_origin_within(c, 0, FAULT_FACTOR, "stalling peer")
        assert_fault_logged(c.nodes, stall.address, "stalling peer", started)


def test_p2p_dns_membership_changes_under_load():
    """Four nodes find their peers by DNS (peers_dns, dnsmasq answering
    nodes.p2p.test); while they all read, the answer changes every 0.8 s
    (nodes added and removed). Every read byte-exact, <= 10 % extra origin
    bytes; the nodes did re-resolve during the reads (dnsmasq's query log)."""
    ph.require_cluster_tools(dns=True)
    # 4x the nodes' re-resolve interval, so each answer is seen by every node
    # (at 0.4 s the cluster never agreed on a list; extra origin bytes ran
    # 1.02-1.12x with two such tests at once on 2 cores).
    CHANGE_EVERY = 0.8
    with ph.Cluster(nodes=4, peers="dns", rate="50mbit",
                    p2p_extra={"dns_refresh_ms": 200}) as c:
        nodes = c.nodes
        dns = c.dns(nodes[:2])
        c.start_nodes()
        answers = [nodes[:3], nodes, nodes[1:], [nodes[0], nodes[2], nodes[3]], nodes[2:], nodes]
        pool, futures = read_concurrently(nodes)
        changes = []
        i = 0
        while not all(f.done() for f in futures):
            time.sleep(CHANGE_EVERY)
            dns.set(answers[i % len(answers)])
            changes.append(time.time())
            i += 1
        reports = [f.result() for f in futures]
        pool.shutdown()
        assert_reports_ok(reports, nodes)
        print(f"{len(changes)} DNS answers changed during the reads")
        assert len(changes) >= 3, f"the reads took {len(changes) * CHANGE_EVERY:.1f}s: too short to change DNS under load"
        assert_origin_within(c, 0, FAULT_FACTOR, "DNS membership changes")
        asked = {}
        for _, client, name in dns.queries(since=changes[0]):
            if name == ph.NODES_NAME:
                asked[client] = asked.get(client, 0) + 1
        assert all(asked.get(n.ip, 0) >= 2 for n in nodes), f"queries after the first change: {asked}"


# ---------------------------------------------------------------------------
# The peer endpoint with a stock client


def test_p2p_endpoint_serves_ranges_to_curl():
    """curl, a stock client, with Range and X-Dragonfly-Registry against a
    node's mirror endpoint (127.0.0.1:65001 in its namespace, no signature)
    gets exactly the blob's bytes, and with ?ns= (a signed request to the
    peer port) too; /server/ping and /healthy answer 200."""
    with ph.Cluster(nodes=2) as c:
        a, b = c.start_nodes()
        a.read_all()
        blob = c.image.blob_path.read_bytes()
        path = f"/v2/{c.repo}/blobs/sha256:{c.image.digest}"
        for first, last in [(0, 0), (1000, 1048575 + 5000), (len(blob) - 4096, len(blob) - 1)]:
            r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-f", "-D", "/dev/stderr", "-o", "-",
                                "-r", f"{first}-{last}", "-H", f"X-Dragonfly-Registry: {c.registry_url}",
                                f"{ph.MIRROR_URL}{path}"], capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            assert r.stdout == blob[first:last + 1], (first, last, len(r.stdout))
            assert f"content-range: bytes {first}-{last}/{len(blob)}" in r.stderr.decode().lower()
        # ?ns= names an https origin, which this plain-HTTP registry is not: the
        # mirror cannot ask it whether the client may read the blob, so 502 and
        # no byte; a signed peer request (no such check) gets the held bytes.
        r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "-r", "4096-8191", f"{ph.MIRROR_URL}{path}?ns={c.registry_host}"], capture_output=True,
                           timeout=30)
        assert r.stdout == b"502", r
        r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-f", "-o", "-", "-r", "4096-8191", "-H",
                            f"{ph.PEER_AUTH_HEADER}: {c.peer_auth('GET', path, 'bytes=4096-8191')}",
                            f"http://{a.address}{path}?ns={c.registry_host}"], capture_output=True, timeout=30)
        assert r.returncode == 0 and r.stdout == blob[4096:8192], r.stderr
        for ping in ("/server/ping", "/healthy"):
            r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                f"{ph.MIRROR_URL}{ping}"], capture_output=True, timeout=10)
            assert r.stdout == b"200", (ping, r)


GUIDE_CONFIG = ph.ROOT / "examples" / "nydusd-dragonfly-mirror.json"


def guide_config(cluster, work_dir):
    """The Dragonfly + Nydus guide's nydusd-config.json (examples/) with only
    the registry host (and its scheme: the test registry is plain HTTP), the
    repository, credentials and the cache directory filled in. The mirror
    stays http://127.0.0.1:65001 and its ping_url :40901/server/ping, as the
    guide has them for dfdaemon."""
    config = json.loads(GUIDE_CONFIG.read_text())
    backend = config["device"]["backend"]["config"]
    backend["host"] = cluster.registry_host
    backend["scheme"] = "http"
    backend["repo"] = cluster.repo
    backend["mirrors"][0]["headers"]["X-Dragonfly-Registry"] = cluster.registry_url
    if cluster.basic_auth:
        backend["auth"] = cluster.auth_b64
    config["device"]["cache"]["config"]["work_dir"] = str(work_dir)
    return config


@pytest.mark.parametrize("auth_through", [False, True])
def test_p2p_stock_nydusd_reads_through_the_mirror_with_the_guides_config(auth_through):
    """Issue 12: node A reads the image; then a nydusd without p2p on node
    B, configured by the guide's config (mirror 127.0.0.1:65001, ping_url
    :40901), reads it through B's mirror, byte-exact. B's mirror serves it
    through the P2P path (B's store and A), so the registry served one pull
    across both; B counted the requests as stock nydusd's. auth_through
    false (the guide's value) sends only requests that carry credentials to
    the mirror, so that case reads a private repository (Basic auth, the
    client's credentials passed on to the origin); true sends everything
    (a public one)."""
    with ph.Cluster(nodes=2, basic_auth=("reader", "s3cret") if not auth_through else None) as c:
        a, b = c.start_nodes()
        a.read_all()
        after_a = c.origin_bytes()
        config = guide_config(c, b.dir / "stock-cache")
        config["device"]["backend"]["config"]["mirrors"][0]["auth_through"] = auth_through
        stock = b.stock_nydusd(config)
        try:
            stock.read_all()
        finally:
            assert stock.stop() == 0, stock.log()[-2000:]
        origin = c.origin_bytes()
        print(f"origin after A {after_a}, after the stock nydusd {origin}, unique {c.unique_bytes}")
        assert origin <= COLD_FACTOR * c.unique_bytes, (origin, c.unique_bytes)
        assert origin - after_a <= 0.02 * c.unique_bytes, (after_a, origin)
        m = b.metrics()["p2p"]
        assert m["requests_from_nydusd"] > 0 and m["upload_bytes"] > 0, m


def mirror_get(cluster, node, *curl_args):
    """(status, body) of a GET of the first 64 KiB of the cluster's blob
    through `node`'s mirror by curl in its namespace, with `curl_args` added."""
    url = f"{ph.MIRROR_URL}/v2/{cluster.repo}/blobs/sha256:{cluster.image.digest}"
    r = subprocess.run(["ip", "netns", "exec", node.ns, "curl", "-sS", "-o", "-", "-w", "\n%{http_code}",
                        "-r", "0-65535", "-H", f"X-Dragonfly-Registry: {cluster.registry_url}", *curl_args, url],
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code), body


def test_p2p_mirror_serves_a_token_repository_only_to_tokens_for_it():
    """Issue 12, repository-scoped credentials: a registry with token auth,
    where a token names the repositories it may pull. A client with a token
    for the image's repository reads the blob through node A's mirror (its
    bytes are then in A's store); a client without credentials, and one
    whose token is for another repository, get 401 and no byte, because the
    mirror asks the origin with each client's own token."""
    with rh.TokenServer(tls=False) as ts, ph.Cluster(nodes=1, token_server=ts) as c:
        (a,) = c.start_nodes()
        blob = c.image.blob_path.read_bytes()
        code, body = mirror_get(c, a, "-H", f"Authorization: {c.bearer(c.repo)}")
        assert code == 206 and body == blob[:65536], (code, body[:200])
        assert a.metrics()["p2p"]["origin_bytes"] >= 65536
        before = a.metrics()["p2p"]["refused_access"]
        for extra in ((), ("-H", f"Authorization: {c.bearer('p2p/another')}")):
            code, body = mirror_get(c, a, *extra)
            assert code == 401 and blob[:4096] not in body, (extra, code, body[:200])
        assert a.metrics()["p2p"]["refused_access"] - before == 2
        # The right token still reads, now from A's store.
        code, body = mirror_get(c, a, "-H", f"Authorization: {c.bearer(c.repo)}")
        assert code == 206 and body == blob[:65536]


def test_p2p_mirror_serves_a_private_repository_only_to_its_readers():
    """Issue 12: a private repository (htpasswd registry) that node A has
    read: through A's mirror, a client without credentials or with wrong
    ones gets the origin's 401 and no byte of the blob; with the right ones
    the bytes. The check is a HEAD at the origin with the client's own
    credentials (p2p/access_check.h), counted as refused_access."""
    with ph.Cluster(nodes=1, basic_auth=("reader", "s3cret")) as c:
        (a,) = c.start_nodes()
        a.read_all()
        blob = c.image.blob_path.read_bytes()
        wrong = base64.b64encode(b"reader:not-the-password").decode()

        def get(*extra):
            return mirror_get(c, a, *extra)

        before = a.metrics()["p2p"]["refused_access"]
        for extra in ((), ("-H", f"Authorization: Basic {wrong}")):
            code, body = get(*extra)
            assert code == 401 and blob[:4096] not in body, (extra, code, body[:200])
        code, body = get("-H", f"Authorization: Basic {c.auth_b64}")
        assert code == 206 and body == blob[:65536], (code, len(body))
        assert a.metrics()["p2p"]["refused_access"] - before == 2


def test_p2p_containerd_pulls_a_plain_image_through_the_mirror_then_from_peers_alone():
    """Issue 12: containerd (Debian's, one per node, its own state) pulls a
    plain OCI image that skopeo pushed, with `ctr image pull --hosts-dir`
    and a hosts.toml naming the node's mirror. On node A the blobs come
    through A's mirror and the P2P path (the registry serves each byte
    about once, and to no containerd directly); then node B, its registry
    link cut, pulls the same image: manifests through a peer that still
    reaches the origin (origin_via_peers), blobs from the nodes' piece
    stores, and every layer in B's content store matches its digest."""
    ch.require_containerd_tools()
    with ph.Cluster(nodes=2) as c:
        image = ch.build_oci_layout(c.dir / "oci", seed=12, layer_sizes=[3 << 20, (1 << 20) + 12345, 200 << 10])
        ref = f"{c.registry_host}/plain/app:v1"
        ch.skopeo_copy(image, ref)
        hosts = ch.write_hosts_dir(c.dir / "certs.d", c.registry_host, ph.MIRROR_URL)
        a, b = c.start_nodes()
        before = c.origin_bytes()
        on_a, on_b = ch.Containerd(a), ch.Containerd(b)
        try:
            on_a.pull(ref, hosts)
            pulled = c.origin_bytes() - before
            agents = {r.agent for r in c.origin_requests() if r.client in (a.ip, b.ip)}
            print(f"A's pull: origin {pulled} bytes for {image.blob_bytes} blob bytes; agents {agents}")
            assert not [g for g in agents if "containerd" in g], agents  # no pull around the mirror
            assert image.blob_bytes <= pulled <= COLD_FACTOR * image.blob_bytes, (pulled, image.blob_bytes)
            b.cut_registry()
            pull = on_b.pull(ref, hosts, check=False)
            assert pull.returncode == 0, f"{pull.stderr}\n--- p2p logs:\n" + "\n".join(b.p2p_log_lines()[-20:] + a.p2p_log_lines()[-20:])
            for digest, size in image.layers + [image.config]:
                data = on_b.content(digest)
                assert len(data) == size and hashlib.sha256(data).hexdigest() == digest, (digest, len(data))
            assert c.origin_bytes() - before == pulled
        finally:
            on_a.stop()
            on_b.stop()
        m = b.metrics()["p2p"]
        assert m["requests_from_containerd"] > 0 and m["origin_via_peers"] > 0, m
        assert a.metrics()["p2p"]["requests_from_containerd"] > 0


def test_p2p_peer_port_answers_signed_requests_only():
    """The guarded peer port (issue 12): from another namespace, requests
    without the signature, with a wrong one (another secret, or moved to
    another range), a replayed one and a stale one get 401, each counted
    under its reason and logged once per address and reason (two unsigned
    requests, one line); the same request signed right (by the test, in
    Python) gets the bytes; /server/ping stays open for probes; a signed
    request to be passed on to the origin gets 403 unless it is for the
    registry API."""
    with ph.Cluster(nodes=2) as c:
        a, b = c.start_nodes()
        a.read_all()
        blob = c.image.blob_path.read_bytes()
        path = f"/v2/{c.repo}/blobs/sha256:{c.image.digest}"
        url = f"http://{a.address}{path}"
        since = time.time()

        def get(auth=None, rng="bytes=4096-8191"):
            args = ["ip", "netns", "exec", b.ns, "curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H",
                    f"X-Dragonfly-Registry: {c.registry_url}", "-H", f"Range: {rng}"]
            if auth is not None:
                args += ["-H", f"{ph.PEER_AUTH_HEADER}: {auth}"]
            r = subprocess.run(args + [url], capture_output=True, timeout=20)
            assert r.returncode == 0, r.stderr
            body, _, code = r.stdout.rpartition(b"\n")
            return int(code), body

        before = a.metrics()["p2p"]
        assert get()[0] == 401
        assert get()[0] == 401
        assert get(c.peer_auth("GET", path, "bytes=4096-8191", secret="not-the-cluster-secret-at-all"))[0] == 401
        assert get(c.peer_auth("GET", path, "bytes=0-8191"))[0] == 401  # signed for another range
        assert get(c.peer_auth("GET", path, "bytes=4096-8191", t=int(time.time()) - 600))[0] == 401
        good = c.peer_auth("GET", path, "bytes=4096-8191")
        code, body = get(good)
        assert code == 206 and body == blob[4096:8192], (code, len(body))
        code, body = get(good)
        assert code == 401 and b"replayed" in body, (code, body)
        after = a.metrics()["p2p"]
        delta = {k: after[k] - before[k] for k in ("refused_unsigned", "refused_bad_signature", "refused_stale",
                                                   "refused_replayed")}
        assert delta == {"refused_unsigned": 2, "refused_bad_signature": 2, "refused_stale": 1,
                         "refused_replayed": 1}, delta
        lines = [l for l in a.p2p_log_lines(b.ip, since=since) if "refusing" in l]
        reasons = sorted(l.rsplit(": ", 1)[-1].split(" ")[0] for l in lines)
        assert reasons == ["bad_signature", "no_credentials", "replayed", "stale_timestamp"], lines
        r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://{a.address}/server/ping"], capture_output=True, timeout=10)
        assert r.stdout == b"200", r
        # A member may have requests passed on to the origin (X-Nydus-Via-Peer), but only the
        # registry API: a valid peer asking for anything else gets 403.
        r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "-H", "X-Nydus-Via-Peer: 1", "-H", f"X-Dragonfly-Registry: {c.registry_url}", "-H",
                            f"{ph.PEER_AUTH_HEADER}: {c.peer_auth('GET', '/debug/vars')}",
                            f"http://{a.address}/debug/vars"], capture_output=True, timeout=10)
        assert r.stdout == b"403", r


def test_p2p_peer_port_with_mutual_tls():
    """Issue 12, the other guard: every node has a certificate of the
    cluster CA (p2p.tls_cert/tls_key/tls_ca) and no secret. The cluster
    reads over HTTPS as it does over HTTP (one pull from the origin, no peer
    failure). curl from node B's namespace to A's peer port: a client
    certificate of another CA (twice) and none at all get 401, counted
    under their reasons and logged once per address and reason; plain HTTP
    gets no answer; B's own certificate gets the bytes. Then the files
    change under the running daemon (checked once a second): with the other
    CA added to the bundle, its certificate is served; A's new server
    certificate, issued by the other CA, is what a client then sees."""
    with ph.Cluster(nodes=2, signed=False, tls=True) as c:
        a, b = c.start_nodes()
        before = c.origin_bytes()
        a.read_all()
        b.read_all()
        assert_origin_within(c, before, COLD_FACTOR, "two nodes over mutual TLS")
        mb, ma = b.metrics()["p2p"], a.metrics()["p2p"]
        assert mb["peer_requests"] > 0 and mb["peer_failures"] == 0 and ma["upload_bytes"] > 0, (ma, mb)
        assert any("mutual TLS" in line for line in a.p2p_log_lines()), a.p2p_log_lines()[-10:]

        blob = c.image.blob_path.read_bytes()
        path = f"/v2/{c.repo}/blobs/sha256:{c.image.digest}"
        foreign = ph.PeerPki(c.dir / "foreign-pki", "another CA")
        intruder = foreign.issue("intruder", b.ip, c.dir / "intruder.crt", c.dir / "intruder.key")
        mine = b.tls_files()

        def get(*args, scheme="https", cacert=c.pki.ca_path):
            r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-o", "-", "-w", "\n%{http_code}",
                                "--max-time", "10", "--cacert", str(cacert), "-r", "0-4095",
                                "-H", f"X-Dragonfly-Registry: {c.registry_url}", *map(str, args),
                                f"{scheme}://{a.address}{path}"], capture_output=True, timeout=30)
            body, _, code = r.stdout.rpartition(b"\n")
            return int(code or 0), body

        since = time.time()
        for args in (("--cert", intruder[0], "--key", intruder[1]),) * 2 + ((),):
            code, body = get(*args)
            assert code == 401 and blob[:4096] not in body, (args, code, body[:200])
        code, body = get(scheme="http")
        assert code != 206 and blob[:4096] not in body, (code, body[:200])
        code, body = get("--cert", mine[0], "--key", mine[1])
        assert code == 206 and body == blob[:4096], (code, body[:200])
        m = a.metrics()["p2p"]
        assert m["refused_untrusted_certificate"] == 2 and m["refused_no_certificate"] == 1, m
        refusals = [line for line in a.p2p_log_lines(since=since) if "refusing requests from" in line]
        assert len(refusals) == 2, refusals  # one per reason, not one per request
        assert any("untrusted_client_certificate" in line for line in refusals), refusals

        # Rotation, files changed under the running daemon.
        c.pki.ca_path.write_bytes(c.pki.ca_path.read_bytes() + foreign.ca_path.read_bytes())
        deadline = time.monotonic() + 5
        while (code := get("--cert", intruder[0], "--key", intruder[1])[0]) != 206 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert code == 206, "the CA bundle was not read again"
        cert, key = a.tls_files()
        foreign.issue("node0 reissued", a.ip, cert, key)
        deadline = time.monotonic() + 5
        while (code := get("--cert", mine[0], "--key", mine[1], cacert=foreign.ca_path)[0]) != 206 and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        assert code == 206, "A's new server certificate is not in use"


def test_p2p_bad_tls_files_stop_the_daemon_naming_the_field():
    """Untrusted config: TLS files that cannot work (a key of another
    certificate, a certificate of another CA, a CA file without a
    certificate, a missing file) stop nydusd at start with an error naming
    the field and what is wrong, rather than a peer port nobody can use."""
    with ph.Cluster(nodes=1, signed=False, tls=True) as c:
        (a,) = c.nodes
        a.tls_files()
        _, other_key = c.pki.issue("other", a.ip, c.dir / "other.crt", c.dir / "other.key")
        foreign = ph.PeerPki(c.dir / "foreign-pki", "another CA")
        foreign_cert, foreign_key = foreign.issue("stranger", a.ip, c.dir / "stranger.crt", c.dir / "stranger.key")
        garbage = c.dir / "garbage.pem"
        garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        cases = [
            ("tls_key", {"tls_key": str(other_key)}, "does not match the certificate"),
            ("tls_cert", {"tls_cert": str(foreign_cert), "tls_key": str(foreign_key)}, "not a TLS client and server"),
            ("tls_ca", {"tls_ca": str(garbage)}, "no PEM certificate"),
            ("tls_cert", {"tls_cert": str(c.dir / "missing.crt")}, "cannot be read"),
        ]
        for field, override, words in cases:
            a.p2p_extra = override
            with pytest.raises(AssertionError) as failed:
                a.start(wait=10)
            text = str(failed.value)
            assert f"p2p.{field}" in text and words in text, (field, text[-1500:])


def test_p2p_nodes_with_another_secret_get_nothing_from_the_cluster():
    """A node whose secret differs from the cluster's: the cluster refuses
    its requests (counted), it still reads every file byte-exact (from the
    origin), and it gives the cluster nothing either."""
    with ph.Cluster(nodes=2) as c:
        a, b = c.nodes
        other = c.dir / "other-secret"
        other.write_text("an-outsider-secret-that-differs\n")
        b.p2p_extra["secret_file"] = str(other)
        c.start_nodes()
        a.read_all()
        b.read_all()
        refused = a.metrics()["p2p"]["refused_bad_signature"] + b.metrics()["p2p"]["refused_bad_signature"]
        assert refused > 0
        assert a.metrics()["p2p"]["upload_bytes"] == 0 and b.metrics()["p2p"]["upload_bytes"] == 0


def test_p2p_owner_follows_origin_redirects_without_credentials():
    """Registries answer blob requests with a redirect to their storage (a
    pre-signed URL that refuses a second Authorization). Here an origin
    redirects every blob request to /storage/..., which serves the blob file
    with Range support. A node with an empty piece store, asked through its
    peer port with credentials, gets the size (HEAD) and the bytes (GET)
    through the redirect, byte-exact, and sends the Authorization to the
    origin only, never to the storage URL."""
    seen = []  # (where, method, Authorization)
    blob = None  # the blob file's bytes, once the cluster has built it

    class Origin(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _answer(self):
            storage = self.path.startswith("/storage/")
            seen.append(("storage" if storage else "origin", self.command, self.headers.get("Authorization")))
            if not storage:
                self.send_response(307)
                self.send_header("Location", f"http://{self.headers['Host']}/storage{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, status = blob, 200
            if self.headers.get("Range"):
                first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
                last = min(last, len(blob) - 1)
                body, status = blob[first:last + 1], 206
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(blob)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer

    with ph.Cluster(nodes=2) as c:
        a, b = c.start_nodes()
        blob = c.image.blob_path.read_bytes()
        server = http.server.ThreadingHTTPServer((c.host_ip, 0), Origin)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            path = f"/v2/{c.repo}/blobs/sha256:{c.image.digest}"
            first, last = 5000, 5000 + 300000
            r = subprocess.run(["ip", "netns", "exec", b.ns, "curl", "-sS", "-f", "-o", "-", "-r", f"{first}-{last}",
                                "-H", f"X-Dragonfly-Registry: http://{c.host_ip}:{server.server_port}",
                                "-H", "Authorization: Bearer for-the-origin-only", f"{ph.MIRROR_URL}{path}"],
                               capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            assert r.stdout == blob[first:last + 1]
        finally:
            server.shutdown()
        origin = [(m, auth) for where, m, auth in seen if where == "origin"]
        storage = [(m, auth) for where, m, auth in seen if where == "storage"]
        assert {m for m, _ in origin} == {"HEAD", "GET"} and {m for m, _ in storage} == {"HEAD", "GET"}, seen
        assert all(auth == "Bearer for-the-origin-only" for _, auth in origin), seen
        assert all(auth is None for _, auth in storage), seen
