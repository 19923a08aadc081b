"""Self-tests of p2p_harness.py: the parts of the P2P test bed that work
without the daemon's P2P backend. Nodes here run WITHOUT the `p2p` object.

  - the image: unique_bytes from the chunk table, the blob pushed under its
    sha256 through the registry API;
  - the registry link: nodes in their namespaces read every file byte-exact
    from the registry through the shaped veth, at about the tbf rate;
    origin bytes are counted exactly (a curl range of n bytes adds n; two
    plain nodes pull 2x unique bytes; the link counter agrees within header
    overhead);
  - cut_registry() makes reads of that node fail at once (EIO), other nodes
    unaffected, restore_registry() makes them work again;
  - stop / kill / restart with the same dirs: the restarted node serves from
    its blob cache with 0 origin bytes;
  - dnsmasq answers nodes.p2p.test inside a node namespace, and changes
    answer on set();
  - the byzantine peer serves ~1 % flipped bits with correct ranges, the
    stalling peer accepts and never answers;
  - a Cluster of a SIGKILLed process is cleaned up by the next Cluster.
"""
import errno
import hashlib
import os
import pathlib
import signal
import subprocess
import time

import pytest

import p2p_harness as ph

pytestmark = pytest.mark.p2p


@pytest.fixture(autouse=True)
def _tools():
    ph.require_cluster_tools()


def curl(ns, *args, timeout=20):
    return subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", *args], capture_output=True,
                          timeout=timeout)


def test_image_is_pushed_under_its_sha256_and_unique_bytes_come_from_the_chunk_table():
    image = ph.build_test_image()
    assert 200 <= len(image.files) <= 600, len(image.files)
    assert 20 << 20 <= image.total_file_bytes <= 28 << 20, image.total_file_bytes
    sizes = sorted(image.sizes.values())
    assert sizes[0] <= 2048 and sizes[-1] >= 1 << 20
    # Chunks are stored once and back to back: their sizes sum to the data
    # part of the blob, before the chunk-info table.
    assert image.chunks[0][0] == 0
    for (off, size), (next_off, _) in zip(image.chunks, image.chunks[1:]):
        assert off + size == next_off
    assert image.unique_bytes < image.blob_size < image.unique_bytes + (1 << 20)
    # Compressible files compress; duplicates are stored once.
    assert image.unique_bytes < 0.9 * image.total_file_bytes
    assert image.digest == hashlib.sha256(image.blob_path.read_bytes()).hexdigest()
    with ph.Cluster(nodes=1, p2p=False) as c:
        assert c.origin_bytes() == 0  # the push and the harness's own check are not origin bytes
        r = curl(c.nodes[0].ns, "-r", "1000-1999", "-o", "-", f"{c.registry_url}/v2/{c.repo}/blobs/sha256:{image.digest}")
        assert r.returncode == 0 and r.stdout == image.blob_path.read_bytes()[1000:2000]
        assert c.origin_bytes() == 1000


def test_plain_nodes_read_byte_exact_through_the_shaped_link():
    """Two nodes without P2P, reading at the same moment: byte-exact; the
    registry served each chunk once per node (2x unique bytes, plus the few
    KiB of blob metadata a node may read); the registry's link carried that
    plus header overhead; and it took about as long as the tbf rate says."""
    with ph.Cluster(nodes=2, p2p=False, rate="100mbit") as c:
        c.start_nodes()
        assert all("p2p" not in n.config() for n in c.nodes)
        link0 = c.link_tx_bytes()
        start = time.monotonic()
        reports = c.read_all()
        elapsed = time.monotonic() - start
        origin = c.origin_bytes()
        link = c.link_tx_bytes() - link0
        print(f"2 plain nodes: {elapsed:.2f}s, origin {origin} = {origin / c.unique_bytes:.4f}x unique, "
              f"link {link} = {link / origin:.4f}x origin")
        assert all(r.files == len(c.image.files) for r in reports)
        assert 2 * c.unique_bytes <= origin <= 2 * c.unique_bytes + (256 << 10), (origin, c.unique_bytes)
        assert origin <= link <= 1.10 * origin, (origin, link)
        floor = origin / ph._rate_bytes("100mbit")
        assert elapsed >= 0.9 * floor, (elapsed, floor)
        m = c.nodes[0].metrics()
        assert isinstance(m, dict) and m, m


def test_cut_registry_fails_reads_at_once_for_that_node_only():
    """With keep-alive connections to the registry open (the node has read
    half the image), cut_registry() makes the next uncached read fail with
    EIO at once (the backend's timeout is 10 s: no waiting for it), while
    another node reads the same file; restore_registry() brings it back."""
    with ph.Cluster(nodes=2, p2p=False, rate="1gbit") as c:
        a, b = c.start_nodes()
        names = sorted(c.image.files)
        first, rest = names[::2], names[1::2]
        a.read_all(files=first)
        a.cut_registry()
        big = max(rest, key=lambda n: c.image.sizes[n])
        start = time.monotonic()
        with pytest.raises(OSError) as error:
            a.read_file(big)
        assert error.value.errno == errno.EIO
        assert time.monotonic() - start < 3
        r = subprocess.run(["ip", "netns", "exec", a.ns, "curl", "-sS", "-m", "3", "-o", "/dev/null",
                            f"{c.registry_url}/v2/"], capture_output=True)
        assert r.returncode == 7, r  # 7: could not connect
        assert hashlib.sha256(b.read_file(big)).hexdigest() == c.image.files[big]
        a.restore_registry()
        a.read_all()


def test_restart_and_kill_keep_the_node_dirs():
    with ph.Cluster(nodes=1, p2p=False, rate="1gbit") as c:
        [n] = c.start_nodes()
        n.read_all()
        first = c.origin_bytes()
        assert first >= c.unique_bytes
        assert n.stop() == 0
        n.start()
        n.read_all()
        assert c.origin_bytes() == first  # from the blob cache
        pid = n.pid
        assert n.kill() == -signal.SIGKILL
        assert not pathlib.Path(f"/proc/{pid}").exists()
        n.start()
        assert n.pid != pid
        n.read_all(order=7)
        assert c.origin_bytes() == first


def test_dnsmasq_answers_inside_node_namespaces_and_follows_updates():
    ph.require_cluster_tools(dns=True)
    with ph.Cluster(nodes=3, p2p=False) as c:
        dns = c.dns(c.nodes[:2])

        def answer(node):
            r = subprocess.run(["ip", "netns", "exec", node.ns, "getent", "ahostsv4", ph.NODES_NAME],
                               capture_output=True, text=True, timeout=10)
            return sorted({line.split()[0] for line in r.stdout.splitlines()})

        assert answer(c.nodes[2]) == sorted([c.nodes[0].ip, c.nodes[1].ip])
        r = subprocess.run(["ip", "netns", "exec", c.nodes[2].ns, "getent", "hosts", ph.NODES_NAME],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0 and r.stdout.split()[0] in (c.nodes[0].ip, c.nodes[1].ip)
        since = time.time()
        dns.set([c.nodes[2]])
        assert answer(c.nodes[0]) == [c.nodes[2].ip]
        dns.set(c.nodes)
        assert answer(c.nodes[1]) == sorted(n.ip for n in c.nodes)
        clients = {ip for _, ip, name in dns.queries(since) if name == ph.NODES_NAME}
        assert {c.nodes[0].ip, c.nodes[1].ip} <= clients, clients


def test_fault_peers_misbehave_as_designed():
    with ph.Cluster(nodes=1, p2p=False) as c:
        byz = c.byzantine_peer()
        stall = c.stalling_peer()
        assert c.extra_peers == [byz.address, stall.address]
        ns = c.nodes[0].ns
        url = f"http://{byz.address}/v2/{c.repo}/blobs/sha256:{c.image.digest}"
        blob = c.image.blob_path.read_bytes()
        r = curl(ns, "-f", "-r", "1048576-3145727", "-D", "-", "-o", "/tmp/np2p-byz-body", url)
        try:
            body = pathlib.Path("/tmp/np2p-byz-body").read_bytes()
        finally:
            os.unlink("/tmp/np2p-byz-body")
        headers = r.stdout.decode()
        assert r.returncode == 0 and " 206 " in headers.splitlines()[0], headers
        assert f"Content-Range: bytes 1048576-3145727/{len(blob)}" in headers
        want = blob[1048576:3145728]
        assert len(body) == len(want)
        differing = sum(1 for x, y in zip(body, want) if x != y)
        assert 0.009 * len(want) <= differing <= 0.011 * len(want), differing
        assert byz.served_bytes() == len(want) and byz.flipped_bytes() == differing
        # Ranges past the end: 416; pings: 200.
        r = curl(ns, "-o", "/dev/null", "-w", "%{http_code}", "-r", f"{len(blob)}-", url)
        assert r.stdout == b"416"
        r = curl(ns, "-o", "/dev/null", "-w", "%{http_code}", f"http://{byz.address}/server/ping")
        assert r.stdout == b"200"
        # The stalling peer: connected, never answered.
        start = time.monotonic()
        r = curl(ns, "-m", "1", "-o", "/dev/null", f"http://{stall.address}/v2/{c.repo}/blobs/sha256:{c.image.digest}")
        assert r.returncode == 28 and 0.9 < time.monotonic() - start < 5, r  # 28: operation timed out
        assert stall.connections() == 1
        # Nothing of this went to the registry.
        assert c.origin_bytes() == 0


def test_p2p_config_object_has_the_issue_names():
    with ph.Cluster(nodes=2) as c:
        config = c.nodes[1].config()
        p2p = config["p2p"]
        assert p2p["listen"] == p2p["advertise"] == c.nodes[1].address
        assert p2p["peers"] == [c.nodes[0].address, c.nodes[1].address]
        assert p2p["store_dir"] == str(c.nodes[1].store_dir) and p2p["unit_size"] == 1 << 20
        assert config["device"]["backend"]["config"]["host"] == c.registry_host
        assert config["digest_validate"] is False
        dns_node = c.add_node(peers="dns")
        assert dns_node.config()["p2p"]["peers_dns"] == f"{ph.NODES_NAME}:{ph.PEER_PORT}"
        assert "peers" not in dns_node.config()["p2p"]


_KILLED_RUN = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import p2p_harness as ph
c = ph.Cluster(nodes=1, p2p=False)
c.dns(c.nodes)
c.stalling_peer()
c.nodes[0].start()
print(c.run, c.bridge, c.dir, c.nodes[0].pid, flush=True)
time.sleep(600)
"""


def test_leftovers_of_a_killed_run_are_removed_by_the_next_cluster():
    env = dict(os.environ)
    proc = subprocess.Popen([ph.PYTHON, "-c", _KILLED_RUN, str(pathlib.Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().split()
        assert len(line) == 4, line
        run, bridge, directory, nydusd_pid = line
        # (Listed while the run is alive: once it is dead, a Cluster of
        # another pytest-xdist worker may clean it up first.)
        namespaces = [ns for ns in ph._netns_names() if ns.startswith(f"{ph.PREFIX}-{run}-")]
        assert len(namespaces) == 4, namespaces  # registry, node, dnsmasq, stalling peer
        assert bridge in ph._link_names() and pathlib.Path(directory).is_dir()
    finally:
        proc.kill()
        proc.wait()
    with ph.Cluster(nodes=0, p2p=False):
        pass
    assert not [ns for ns in ph._netns_names() if ns.startswith(f"{ph.PREFIX}-{run}-")]
    assert not [l for l in ph._link_names() if run in l]
    assert not pathlib.Path(directory).exists()
    assert not list(pathlib.Path("/etc/netns").glob(f"{ph.PREFIX}-{run}-*"))
    deadline = time.monotonic() + 5
    while pathlib.Path(f"/proc/{nydusd_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pathlib.Path(f"/proc/{nydusd_pid}").exists()
