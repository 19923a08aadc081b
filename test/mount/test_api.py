"""The admin API on --apisock, driven the way nydus-snapshotter drives it
(nydusd-contract.md §4.4): argv, readiness polling, a liveness connection
that never sends a byte, metrics polls, credential renewal, SIGTERM and the
mount-gone check; plus the nydus smoke-test assertions of §3.
"""
import http.client
import json
import os
import pathlib
import select
import signal
import socket
import subprocess
import time


from conftest import NYDUSD, fixture_path, mount_entry, force_unmount

V6_BOOT = fixture_path("bootstrap/rafs-v6-2.2.boot")
V6_BLOBS = fixture_path("blobs")
LIB_RS_SHA256 = "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69"


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the daemon's unix socket, with Host: unix as the Go
    client sends it."""

    def __init__(self, path, timeout=30):
        super().__init__("unix", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.socket_path))


def call(sock, method, path, body=None):
    """One request on a fresh connection: (status, parsed JSON or None, headers)."""
    conn = UnixHTTPConnection(sock)
    try:
        payload = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body or b"")
        headers = {"Content-Length": str(len(payload))} if method in ("PUT", "POST") else {}
        conn.request(method, path, body=payload or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else None), dict(resp.getheaders())
    finally:
        conn.close()


def inflight_when_idle(sock, timeout=5):
    """GET /api/v1/metrics/inflight once nothing is in flight, or its last
    answer after `timeout` s: something outside a test may stat a new mount
    (a GETATTR of its root was seen in flight under load), so an idle
    daemon's 204 is waited for rather than expected at the first poll."""
    deadline = time.monotonic() + timeout
    answer = call(sock, "GET", "/api/v1/metrics/inflight")
    while answer[0] != 204 and time.monotonic() < deadline:
        time.sleep(0.02)
        answer = call(sock, "GET", "/api/v1/metrics/inflight")
    return answer


class SnapshotterLikeDaemon:
    """Starts nydusd with the argv of §4.2 in an R/ layout: dedicated mode
    (the V6 fixture at R/snapshots/42/mnt) with a config, shared mode
    (config=None: no --config, no --bootstrap, mountpoint R/mnt) without."""

    def __init__(self, root, config, daemon_id="cq1fk6f5ntt0000abcde", extra=(), binary=None,
                 apisock_name="api.sock"):
        self.root = pathlib.Path(root)
        self.id = daemon_id
        self.shared = config is None
        for d in (f"config/{daemon_id}", f"socket/{daemon_id}", f"logs/{daemon_id}", "supervisor",
                  "snapshots/42/mnt", "mnt", "cache"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / f"config/{daemon_id}/config.json"
        if self.shared:
            image_args = []
            self.mountpoint = self.root / "mnt"
        else:
            self.config_path.write_text(json.dumps(config))
            image_args = ["--config", str(self.config_path), "--bootstrap", str(V6_BOOT)]
            self.mountpoint = self.root / "snapshots/42/mnt"
        self.sock = self.root / f"socket/{daemon_id}/{apisock_name}"
        self.log_path = self.root / f"logs/{daemon_id}/nydusd.log"
        self.argv = [str(binary or NYDUSD), "fuse", *extra, "--thread-num", "4", "--id", daemon_id,
                     *image_args,
                     "--mountpoint", str(self.mountpoint), "--apisock", str(self.sock),
                     "--log-level", "info", "--log-rotation-size", "100",
                     "--supervisor", str(self.root / f"supervisor/{daemon_id}.sock"),
                     "--log-file", str(self.log_path), "--failover-policy", "resend"]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_socket(self, timeout=10):
        """Sequence A.3: wait for the socket file, giving up if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.exists() and self.sock.is_socket():
                return time.monotonic()
            if self.proc.poll() is not None:
                raise AssertionError(f"nydusd exited {self.proc.returncode}: {self.log()}")
            time.sleep(0.01)
        raise AssertionError("api socket never appeared")

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        finally:
            force_unmount(self.mountpoint)


def dedicated_config(work_dir):
    # The per-instance config the snapshotter writes (§4.3), with localfs.
    return {"device": {"id": "/42",
                       "backend": {"type": "localfs", "config": {"dir": str(V6_BLOBS), "readahead": False}},
                       "cache": {"type": "blobcache", "config": {"work_dir": str(work_dir),
                                                                 "disable_indexed_map": False}}},
            "mode": "direct", "digest_validate": False, "enable_xattr": True, "amplify_io": 1048576,
            "iostats_files": True, "access_pattern": True, "latest_read_files": True,
            "fs_prefetch": {"enable": False, "prefetch_all": True, "threads_count": 8, "merging_size": 1048576}}


def test_dedicated_mode_snapshotter_sequence(tmp_path):
    d = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"))
    try:
        socket_at = d.wait_socket()
        # The liveness watch: connect, never send a byte, wait for HUP.
        liveness = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        liveness.connect(str(d.sock))
        # Readiness: RUNNING within 2 s of the socket appearing (§4.4 A).
        state = None
        while time.monotonic() - socket_at < 2:
            status, info, headers = call(d.sock, "GET", "/api/v1/daemon")
            assert status == 200
            state = info["state"]
            if state == "RUNNING":
                break
            time.sleep(0.1)
        assert state == "RUNNING"
        assert headers["Content-Type"] == "application/json" and headers["Server"] == "Nydus API"
        assert info["id"] == d.id
        version = subprocess.run([str(NYDUSD), "--version"], capture_output=True, text=True).stdout
        commit = [l.split(":", 1)[1].strip() for l in version.splitlines() if l.startswith("Git Commit:")][0]
        assert info["version"]["git_commit"] == commit
        assert info["backend_collection"]["/"]["backend_type"] == "Rafs"
        assert info["backend_collection"]["/"]["config"]["backend"]["type"] == "localfs"
        assert mount_entry(d.mountpoint)["source"] == "rafs"

        # The image is served.
        import hashlib
        data = (d.mountpoint / "lib.rs").read_bytes()
        assert hashlib.sha256(data).hexdigest() == LIB_RS_SHA256

        # Credential renewal (sequence E), dedicated: id=%2F. localfs has no
        # credentials, so the daemon says so with a 500, not a crash.
        status, body, _ = call(d.sock, "PUT", "/api/v1/config?id=%2F", {"registry_auth": "dXNlcjpwYXNz"})
        assert status == 500 and "credentials" in body["message"]

        # Start in RUNNING is an invalid event: 400 with upstream's text.
        status, body, _ = call(d.sock, "PUT", "/api/v1/daemon/start")
        assert status == 400 and body["message"] == 'Configure(DaemonAbnormal(UnexpectedEvent("Start")))'

        # The liveness connection is still open (no HUP while running).
        assert select.select([liveness], [], [], 0.2)[0] == []

        # Destroy (sequence C.2): close liveness, SIGTERM, wait, mount gone.
        liveness.close()
        assert d.stop() == 0
        for _ in range(20):
            if mount_entry(d.mountpoint) is None:
                break
            time.sleep(0.05)
        assert mount_entry(d.mountpoint) is None
        assert not d.sock.exists()
    finally:
        d.stop()


def test_liveness_connection_sees_hup_when_the_daemon_dies(tmp_path):
    d = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"))
    try:
        d.wait_socket()
        liveness = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        liveness.connect(str(d.sock))
        poller = select.poll()
        poller.register(liveness, select.POLLHUP | select.POLLERR | select.POLLIN)
        assert poller.poll(500) == []
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        events = poller.poll(2000)
        assert events and events[0][1] & (select.POLLHUP | select.POLLIN)
        assert liveness.recv(1) == b""
    finally:
        d.stop()


def test_api_exit_answers_204_then_the_process_exits(tmp_path):
    d = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"))
    try:
        d.wait_socket()
        status, body, _ = call(d.sock, "PUT", "/api/v1/daemon/exit")
        assert status == 204 and body is None
        assert d.proc.wait(timeout=5) == 0
    finally:
        d.stop()


def test_bad_requests_get_documented_answers_and_reads_go_on(tmp_path):
    d = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"))
    try:
        d.wait_socket()
        assert call(d.sock, "GET", "/api/v1/nope")[0] == 404
        status, body, _ = call(d.sock, "GET", "/api/v1/daemon/")
        assert status == 404 and body["message"] == "NoRoute"
        assert call(d.sock, "DELETE", "/api/v1/daemon")[0] == 400
        assert call(d.sock, "PUT", "/api/v1/daemon", b"{not json")[0] == 400
        assert call(d.sock, "PUT", "/api/v1/daemon", {"log_level": "verbose"})[0] == 500
        assert call(d.sock, "PUT", "/api/v1/daemon", {"log_level": "debug"})[0] == 204
        # A huge body is refused from its Content-Length, before it is read.
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(str(d.sock))
        raw.sendall(b"PUT /api/v1/daemon HTTP/1.1\r\nHost: unix\r\nContent-Length: 2097152\r\n\r\n")
        raw.settimeout(5)
        assert raw.recv(4096).startswith(b"HTTP/1.1 400")
        raw.close()
        status, body, _ = call(d.sock, "GET", "/api/v1/daemon/backend")
        assert status == 400
        status, body, _ = call(d.sock, "GET", "/api/v1/daemon/backend?mountpoint=%2F")
        assert status == 200 and body["chunk_size"] == 1048576 and body["root_nid"] > 0
        # A thousand idle connections, then a request still answers at once
        # and the image still reads.
        idle = []
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.sock))
            idle.append(s)
        start = time.monotonic()
        assert call(d.sock, "GET", "/api/v1/daemon")[0] == 200
        assert time.monotonic() - start < 1
        import hashlib
        assert hashlib.sha256((d.mountpoint / "lib.rs").read_bytes()).hexdigest() == LIB_RS_SHA256
        for s in idle:
            s.close()
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_smoke_test_metric_assertions(tmp_path):
    """nydus smoke tests (api_test.go): switches reported on, reading n
    bytes adds n to data_read and 1 to fop_hits[4], the per-file, backend
    and latest-files endpoints answer, pattern works with ?id=/, without
    an id, and ?id=poison answers 404 NoCounter."""
    d = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"))
    try:
        d.wait_socket()
        status, before, _ = call(d.sock, "GET", "/api/v1/metrics")
        assert status == 200
        assert before["files_account_enabled"] and before["measure_latency"] and before["access_pattern_enabled"]
        assert before["id"] == "/"
        size = (d.mountpoint / "lib.rs").stat().st_size
        fd = os.open(d.mountpoint / "lib.rs", os.O_RDONLY)
        try:
            data = os.read(fd, size + 4096)
        finally:
            os.close(fd)
        assert len(data) == size
        status, after, _ = call(d.sock, "GET", "/api/v1/metrics?id=%2F")
        assert status == 200
        assert after["data_read"] - before["data_read"] == size
        assert after["fop_hits"][4] - before["fop_hits"][4] == 1
        for path in ("/api/v1/metrics/files?id=/", "/api/v1/metrics/backend?id=/",
                     "/api/v1/metrics/files?latest=true", "/api/v1/metrics/pattern?id=/",
                     "/api/v1/metrics/pattern"):
            assert call(d.sock, "GET", path)[0] == 200, path
        status, body, _ = call(d.sock, "GET", "/api/v1/metrics/pattern?id=poison")
        assert status == 404 and "Pattern(Metrics(Stats(NoCounter)))" in body["message"]
        status, backend, _ = call(d.sock, "GET", "/api/v1/metrics/backend")
        assert backend["backend_type"] == "localfs" and backend["read_count"] >= 1
        # blobcache is keyed by device.id ("/42"), as the snapshotter asks.
        status, cache, _ = call(d.sock, "GET", "/api/v1/metrics/blobcache?id=%2F42")
        assert status == 200
        assert cache["underlying_files"] == [n + ".blob.data" for n in os.listdir(V6_BLOBS)]
        assert cache["store_path"] == str(tmp_path / "cache")
        assert call(d.sock, "GET", "/api/v1/metrics/blobcache?id=%2F43")[0] == 404
        # The same counters for Prometheus, in its text format.
        conn = UnixHTTPConnection(d.sock)
        conn.request("GET", "/api/v1/metrics/prometheus")
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
        read_hits = [l for l in text.splitlines() if l.startswith("nydusd_fop_hits_total{") and 'op="read"' in l]
        assert read_hits and float(read_hits[0].rsplit(" ", 1)[1]) >= 1
        # An error log line reaches /daemon/events.
        status, events, _ = call(d.sock, "GET", "/api/v1/daemon/events")
        assert status == 200 and events["max_errors"] == 500
    finally:
        d.stop()
