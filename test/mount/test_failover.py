"""Crash failover and hot upgrade of a dedicated-mode daemon, driven as
nydus-snapshotter does it (nydusd-contract.md §5): a supervisor socket
holds the state and the /dev/fuse fd; after SIGKILL the same argv is
started again, finds the mount and a dead API socket, waits in INIT, and
PUT takeover + PUT start bring it back. A reader loop runs throughout and
must see no error and no wrong byte; the mount stays the same.
"""
import hashlib
import os
import socket
import threading
import time

from conftest import NYDUSD, mount_entry
from test_api import SnapshotterLikeDaemon, call, dedicated_config, LIB_RS_SHA256


class Supervisor:
    """nydus-snapshotter's supervisor (pkg/supervisor): listen, accept one
    connection, read the state and the fd it carries; later listen again and
    send them back with SCM_RIGHTS."""

    def __init__(self, path):
        self.path = str(path)
        self.state = b""
        self.fd = None

    def _listen(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        server.listen(1)
        server.settimeout(10)
        return server

    def receive_in_background(self):
        server = self._listen()

        def run():
            conn, _ = server.accept()
            with conn:
                data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 16)
                chunks = [data]
                while True:
                    more = conn.recv(1 << 20)
                    if not more:
                        break
                    chunks.append(more)
            server.close()
            if self.fd is not None:
                os.close(self.fd)
            self.state, self.fd = b"".join(chunks), fds[0]
            for extra in fds[1:]:
                os.close(extra)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def send_in_background(self):
        server = self._listen()

        def run():
            conn, _ = server.accept()
            with conn:
                socket.send_fds(conn, [self.state], [self.fd])
            server.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def wait_state(sock, wanted, timeout=10):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            status, info, _ = call(sock, "GET", "/api/v1/daemon")
            last = info["state"] if status == 200 else status
            if last == wanted:
                return
        except OSError as error:
            last = error
        time.sleep(0.05)
    raise AssertionError(f"daemon never reached {wanted}, last {last}")


def send_states(d, supervisor):
    """SendStates (§5 Save): the supervisor listens, then PUT sendfd."""
    receiver = supervisor.receive_in_background()
    status, body, _ = call(d.sock, "PUT", "/api/v1/daemon/fuse/sendfd")
    assert status == 204, body
    receiver.join(5)
    assert supervisor.fd is not None and supervisor.state


def crash_failover(d, supervisor, restart):
    """§5 crash failover as the snapshotter runs it: SIGKILL `d`, the
    supervisor listens, restart() execs the same argv (returns the new
    SnapshotterLikeDaemon), which finds the mount and a dead socket and waits
    in INIT; takeover, READY, start, RUNNING. Returns the successor and the
    seconds from the kill to RUNNING."""
    d.proc.kill()  # SIGKILL: no chance to clean up
    d.proc.wait()
    killed_at = time.monotonic()
    sender = supervisor.send_in_background()
    successor = restart()
    try:
        successor.wait_socket()
        wait_state(successor.sock, "INIT")
        status, body, _ = call(successor.sock, "PUT", "/api/v1/daemon/fuse/takeover")
        assert status == 204, body
        sender.join(5)
        wait_state(successor.sock, "READY")
        status, body, _ = call(successor.sock, "PUT", "/api/v1/daemon/start")
        assert status == 204, body
        wait_state(successor.sock, "RUNNING")
    except BaseException:
        successor.stop()
        raise
    return successor, time.monotonic() - killed_at


class ReaderLoop:
    """Reads lib.rs (dropping its page cache first, so every read reaches the
    daemon) and statfs()es the mount until stopped; records every failure
    and the longest time one iteration took."""

    def __init__(self, mountpoint):
        self.path = os.path.join(mountpoint, "lib.rs")
        self.mountpoint = str(mountpoint)
        self.errors = []
        self.reads = 0
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    data = os.read(fd, 1 << 20)
                finally:
                    os.close(fd)
                os.statvfs(self.mountpoint)
                if hashlib.sha256(data).hexdigest() != LIB_RS_SHA256:
                    self.errors.append("wrong bytes")
                self.reads += 1
            except OSError as error:
                self.errors.append(repr(error))
            self.longest = max(self.longest, time.monotonic() - start)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def test_crash_failover_under_a_read_loop(tmp_path):
    supervisor = Supervisor(tmp_path / "supervisor" / "cq1fk6f5ntt0000abcde.sock")
    d = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"))
    successor = None
    try:
        d.wait_socket()
        wait_state(d.sock, "RUNNING")
        send_states(d, supervisor)
        before = os.stat(d.mountpoint)
        with ReaderLoop(d.mountpoint) as reader:
            time.sleep(0.3)
            successor, switched = crash_failover(
                d, supervisor, lambda: SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache")))
            time.sleep(0.5)
        assert reader.errors == [], reader.errors[:5]
        assert reader.reads > 10
        after = os.stat(d.mountpoint)
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        assert mount_entry(d.mountpoint)["source"] == "rafs"
        print(f"failover: new daemon RUNNING {switched * 1000:.0f} ms after the kill; "
              f"longest read {reader.longest * 1000:.0f} ms")
        # The successor hands its state over too, then stops cleanly.
        send_states(successor, supervisor)
        assert successor.stop() == 0
        assert mount_entry(d.mountpoint) is None
    finally:
        if successor is not None:
            successor.stop()
        d.stop()
        supervisor.close()


def test_hot_upgrade_with_a_second_binary(tmp_path):
    """§5 hot upgrade: the new binary (a copy at another path) starts with
    --upgrade and api1.sock, takes over, the old daemon exits through the
    API without unmounting, the new one starts."""
    supervisor = Supervisor(tmp_path / "supervisor" / "cq1fk6f5ntt0000abcde.sock")
    new_binary = tmp_path / "nydusd-new"
    new_binary.write_bytes(NYDUSD.read_bytes())
    new_binary.chmod(0o755)
    old = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"))
    new = None
    try:
        old.wait_socket()
        wait_state(old.sock, "RUNNING")
        send_states(old, supervisor)
        with ReaderLoop(old.mountpoint) as reader:
            time.sleep(0.2)
            sender = supervisor.send_in_background()
            new = SnapshotterLikeDaemon(tmp_path, dedicated_config(tmp_path / "cache"), binary=new_binary,
                                        apisock_name="api1.sock", extra=["--upgrade"])
            new.wait_socket()
            wait_state(new.sock, "INIT")
            assert call(new.sock, "PUT", "/api/v1/daemon/fuse/takeover")[0] == 204
            sender.join(5)
            wait_state(new.sock, "READY")
            assert call(old.sock, "PUT", "/api/v1/daemon/exit")[0] == 204
            assert old.proc.wait(10) == 0
            assert mount_entry(old.mountpoint) is not None  # exit does not unmount
            assert call(new.sock, "PUT", "/api/v1/daemon/start")[0] == 204
            wait_state(new.sock, "RUNNING")
            time.sleep(0.5)
        assert reader.errors == [], reader.errors[:5]
        assert reader.reads > 10
        assert new.stop() == 0
        assert mount_entry(old.mountpoint) is None
    finally:
        if new is not None:
            new.stop()
        old.stop()
        supervisor.close()
