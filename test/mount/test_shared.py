"""Shared mode: one nydusd, one FUSE mount at R/mnt, each image attached at
R/mnt/<sid> through the admin API, driven as nydus-snapshotter drives it
(nydusd-contract.md §4.2 shared argv, §4.4 B, C, D, E; §5 for failover).
"""
import errno
import hashlib
import json
import os
import socket
import subprocess
import threading
import time

from conftest import NYDUSD, fixture_path, mount_entry, mounted, sha256_file, walk_tree
from test_api import (LIB_RS_SHA256, V6_BLOBS, V6_BOOT, SnapshotterLikeDaemon, call, dedicated_config,
                      inflight_when_idle)
from test_failover import Supervisor, crash_failover, send_states, wait_state

V5_BOOT = fixture_path("repeatable/sha256-nocompress-repeatable")
V5_BLOBS = fixture_path("repeatable/blobs")
SYNC_IO_SHA256 = "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96"


def instance_config(sid, blob_dir, work_dir, prefetch=False):
    """The per-instance config of §4.3 (device.id "/<sid>"), localfs backend."""
    config = dedicated_config(work_dir)
    config["device"]["id"] = f"/{sid}"
    config["device"]["backend"]["config"]["dir"] = str(blob_dir)
    config["fs_prefetch"].update(enable=prefetch, threads_count=2)
    return config


def post_mount(d, sid, bootstrap, blob_dir, prefetch_files=None, prefetch=False, work_dir=None):
    """§4.4 B.2: write the instance config, POST it as a string."""
    config = instance_config(sid, blob_dir, work_dir or d.root / "cache", prefetch=prefetch)
    path = d.root / f"config/{d.id}/{sid}/config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    body = {"fs_type": "rafs", "source": str(bootstrap), "config": path.read_text()}
    if prefetch_files is not None:
        body["prefetch_files"] = prefetch_files
    return call(d.sock, "POST", f"/api/v1/mount?mountpoint=%2F{sid}", body)


def tree_digests(root):
    """{relative path: (mode, size, sha256 or link target)} of everything under root."""
    out = {}
    for rel, st in walk_tree(root).items():
        full = os.path.join(root, rel)
        if os.path.islink(full):
            content = os.readlink(full)
        elif os.path.isfile(full):
            content = sha256_file(full)
        else:
            content = None
        out[rel] = (st.st_mode, st.st_size, content)
    return out


def dedicated_tree(bootstrap, blob_dir):
    """The same image served by a dedicated daemon: the reference."""
    with mounted(bootstrap, blob_dir=blob_dir) as d:
        return tree_digests(d.mountpoint)


class InstanceReaders:
    """One thread per instance reading its lib.rs (page cache dropped first,
    so every read reaches the daemon) and checking the sha256."""

    def __init__(self, mountpoint, sids):
        self.errors = []
        self.reads = 0
        self.longest = 0.0  # seconds, the slowest open+read
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(mountpoint / sid / "lib.rs",), daemon=True)
                         for sid in sids]

    def _run(self, path):
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    data = os.read(fd, 1 << 20)
                finally:
                    os.close(fd)
                if hashlib.sha256(data).hexdigest() != LIB_RS_SHA256:
                    self.errors.append(f"{path}: wrong bytes")
                self.reads += 1
            except OSError as error:
                self.errors.append(f"{path}: {error!r}")
            self.longest = max(self.longest, time.monotonic() - start)

    def start(self):
        for t in self._threads:
            t.start()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_shared_mode_snapshotter_sequence(tmp_path):
    v5_reference = dedicated_tree(V5_BOOT, V5_BLOBS)
    supervisor = Supervisor(tmp_path / "supervisor" / "cq1fk6f5ntt0000abcde.sock")
    d = SnapshotterLikeDaemon(tmp_path, None)
    try:
        # §4.4 B.1: the shared daemon starts empty and RUNNING.
        d.wait_socket()
        liveness = socket.socket(socket.AF_UNIX)
        liveness.connect(str(d.sock))
        wait_state(d.sock, "RUNNING", timeout=2)
        status, info, _ = call(d.sock, "GET", "/api/v1/daemon")
        assert status == 200 and info["backend_collection"] == {}
        assert mount_entry(d.mountpoint)["source"] == "rafs"
        assert os.listdir(d.mountpoint) == []
        # No instance: metrics without an id have nobody to answer.
        assert call(d.sock, "GET", "/api/v1/metrics")[0] == 404

        # §4.4 B.2 for three snapshots: two of the same image, one other.
        images = {"42": (V6_BOOT, V6_BLOBS), "43": (V6_BOOT, V6_BLOBS), "44": (V5_BOOT, V5_BLOBS)}
        for sid, (boot, blobs) in images.items():
            status, body, _ = post_mount(d, sid, boot, blobs)
            assert status == 204, body
            wait_state(d.sock, "RUNNING")
            send_states(d, supervisor)
            # WaitUntilReady: blobcache by device.id.
            status, cache, _ = call(d.sock, "GET", f"/api/v1/metrics/blobcache?id=%2F{sid}")
            assert status == 200
            assert all(name.endswith(".blob.data") for name in cache["underlying_files"])
        assert sorted(os.listdir(d.mountpoint)) == ["42", "43", "44"]
        status, info, _ = call(d.sock, "GET", "/api/v1/daemon")
        assert sorted(info["backend_collection"]) == ["/42", "/43", "/44"]
        assert info["backend_collection"]["/44"]["config"]["backend"]["type"] == "localfs"

        # The images are served at R/mnt/<sid>, each its own tree.
        for sid in ("42", "43"):
            assert sha256_file(d.mountpoint / sid / "lib.rs") == LIB_RS_SHA256
            assert sha256_file(d.mountpoint / sid / "sync_io.rs") == SYNC_IO_SHA256
        assert tree_digests(d.mountpoint / "44") == v5_reference
        # Distinct inodes per instance, as the kernel sees them.
        st42, st43 = os.stat(d.mountpoint / "42" / "lib.rs"), os.stat(d.mountpoint / "43" / "lib.rs")
        assert st42.st_ino != st43.st_ino and st42.st_dev == st43.st_dev

        # A second POST of a mounted path: 500 AlreadyExists (the hot-upgrade
        # re-POST relies on exactly this), and nothing changes.
        status, body, _ = post_mount(d, "42", V6_BOOT, V6_BLOBS)
        assert status == 500 and "already exists" in body["message"], body
        # A bad config or bootstrap: 500 naming the problem, no mount left.
        bad = call(d.sock, "POST", "/api/v1/mount?mountpoint=%2F45",
                   {"fs_type": "rafs", "source": str(V6_BOOT), "config": "{not json"})
        assert bad[0] == 500 and "config" in bad[1]["message"], bad
        bad = call(d.sock, "POST", "/api/v1/mount?mountpoint=%2F45",
                   {"fs_type": "rafs", "source": str(tmp_path / "missing.boot"),
                    "config": json.dumps(instance_config("45", V6_BLOBS, tmp_path / "cache"))})
        assert bad[0] == 500 and "missing.boot" in bad[1]["message"], bad
        assert not (d.mountpoint / "45").exists()

        # §4.4 D: metrics per instance (?id=/<sid>); without an id there are
        # several instances, so no answer; a read of n bytes adds n.
        size = os.path.getsize(d.mountpoint / "43" / "sync_io.rs")
        # The page cache is dropped before the read; on a loaded machine the
        # kernel may keep the pages once (the read then never reaches the
        # daemon and adds 0): try again, but a read that reaches it must add
        # exactly its bytes.
        for attempt in range(5):
            status, before, _ = call(d.sock, "GET", "/api/v1/metrics?id=%2F43")
            assert status == 200 and before["id"] == "/43"
            fd = os.open(d.mountpoint / "43" / "sync_io.rs", os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                assert len(os.read(fd, size + 100)) == size
            finally:
                os.close(fd)
            status, after, _ = call(d.sock, "GET", "/api/v1/metrics?id=%2F43")
            added = after["data_read"] - before["data_read"]
            assert added in (0, size), (attempt, added, size)
            if added:
                break
            time.sleep(0.2)
        assert after["data_read"] - before["data_read"] == size, "the page cache was never dropped"
        assert after["fop_hits"][4] > before["fop_hits"][4]
        status, other, _ = call(d.sock, "GET", "/api/v1/metrics?id=%2F42")
        assert status == 200 and other["data_read"] < after["data_read"] + 1
        assert call(d.sock, "GET", "/api/v1/metrics")[0] == 404
        assert call(d.sock, "GET", "/api/v1/metrics/files?id=%2F44")[0] == 200
        assert call(d.sock, "GET", "/api/v1/metrics/backend?id=%2F44")[0] == 200
        status, pattern, _ = call(d.sock, "GET", "/api/v1/metrics/pattern?id=%2F44")
        assert status == 200 and pattern
        # Hung-IO poll: nothing in flight now.
        idle = inflight_when_idle(d.sock)
        assert idle[0] == 204, idle

        # §4.4 E: credential renewal for one instance (localfs has none: 500
        # saying so, not a crash); an unknown id is 500 too.
        status, body, _ = call(d.sock, "PUT", "/api/v1/config?id=%2F42", {"registry_auth": "dXNlcjpwYXNz"})
        assert status == 500 and "credentials" in body["message"]

        # §4.4 C.1: DELETE, then SendStates. The path disappears, the others stay.
        held = open(d.mountpoint / "42" / "lib.rs", "rb")  # an open file survives the umount
        status, body, _ = call(d.sock, "DELETE", "/api/v1/mount?mountpoint=%2F42")
        assert status == 204, body
        send_states(d, supervisor)
        assert sorted(os.listdir(d.mountpoint)) == ["43", "44"]
        assert not (d.mountpoint / "42").exists()
        assert call(d.sock, "GET", "/api/v1/metrics?id=%2F42")[0] == 404
        assert sha256_file(d.mountpoint / "43" / "lib.rs") == LIB_RS_SHA256
        assert hashlib.sha256(held.read()).hexdigest() == LIB_RS_SHA256
        held.close()
        status, body, _ = call(d.sock, "DELETE", "/api/v1/mount?mountpoint=%2F42")
        assert status == 500 and "doesn't exist" in body["message"], body
        # The same path again, with another image: a fresh instance.
        status, body, _ = post_mount(d, "42", V5_BOOT, V5_BLOBS)
        assert status == 204, body
        assert tree_digests(d.mountpoint / "42") == v5_reference

        # PUT: remount /43 with another image; the path stays, the tree is the new one.
        config = instance_config("43", V5_BLOBS, d.root / "cache")
        status, body, _ = call(d.sock, "PUT", "/api/v1/mount?mountpoint=%2F43",
                               {"fs_type": "rafs", "source": str(V5_BOOT), "config": json.dumps(config)})
        assert status == 204, body
        assert tree_digests(d.mountpoint / "43") == v5_reference
        status, body, _ = call(d.sock, "PUT", "/api/v1/mount?mountpoint=%2F49",
                               {"fs_type": "rafs", "source": str(V5_BOOT), "config": json.dumps(config)})
        assert status == 500 and "doesn't exist" in body["message"], body

        # Smoke test: prefetch_files ["/"] fills the cache (prefetch_data_amount
        # > 0). A cache of its own: the shared one already holds every chunk.
        (tmp_path / "cache46").mkdir()
        status, body, _ = post_mount(d, "46", V6_BOOT, V6_BLOBS, prefetch_files=["/"], prefetch=True,
                                     work_dir=tmp_path / "cache46")
        assert status == 204, body
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, cache, _ = call(d.sock, "GET", "/api/v1/metrics/blobcache?id=%2F46")
            if cache["prefetch_data_amount"] > 0:
                break
            time.sleep(0.05)
        assert cache["prefetch_data_amount"] > 0
        # Relative prefetch paths are refused.
        status, body, _ = post_mount(d, "47", V6_BOOT, V6_BLOBS, prefetch_files=["etc"], prefetch=True)
        assert status == 500 and "prefetch" in body["message"], body

        # §4.4 C.2: destroy: SIGTERM, wait, the mount is gone, the socket too.
        liveness.close()
        assert d.stop() == 0
        assert mount_entry(d.mountpoint) is None
        assert not d.sock.exists()
    finally:
        d.stop()
        supervisor.close()


def test_shared_mode_crash_failover_restores_every_mount(tmp_path):
    """§5 with a shared daemon: mounts restored at their VFS indexes from the
    saved state; readers of every instance see no error; the kernel's
    inodes keep their meaning; the snapshotter's re-POST gets AlreadyExists."""
    supervisor = Supervisor(tmp_path / "supervisor" / "cq1fk6f5ntt0000abcde.sock")
    d = SnapshotterLikeDaemon(tmp_path, None)
    successor = None
    try:
        d.wait_socket()
        wait_state(d.sock, "RUNNING")
        for sid in ("42", "43", "44"):
            assert post_mount(d, sid, V6_BOOT, V6_BLOBS)[0] == 204
        # Index 1 freed, so the restore must not simply renumber in order.
        assert call(d.sock, "DELETE", "/api/v1/mount?mountpoint=%2F42")[0] == 204
        assert post_mount(d, "45", V5_BOOT, V5_BLOBS)[0] == 204
        v5_tree = tree_digests(d.mountpoint / "45")
        send_states(d, supervisor)
        inodes = {sid: os.stat(d.mountpoint / sid / "lib.rs").st_ino for sid in ("43", "44")}

        readers = InstanceReaders(d.mountpoint, ("43", "44"))
        readers.start()
        time.sleep(0.3)
        successor, switched = crash_failover(d, supervisor, lambda: SnapshotterLikeDaemon(tmp_path, None))
        time.sleep(0.5)
        readers.stop()
        print(f"shared failover (3 mounts): new daemon RUNNING {switched * 1000:.0f} ms after the kill; "
              f"longest read {readers.longest * 1000:.0f} ms")
        assert readers.errors == [], readers.errors[:5]
        assert readers.reads > 10

        status, info, _ = call(successor.sock, "GET", "/api/v1/daemon")
        assert sorted(info["backend_collection"]) == ["/43", "/44", "/45"]
        assert sorted(os.listdir(d.mountpoint)) == ["43", "44", "45"]
        assert {sid: os.stat(d.mountpoint / sid / "lib.rs").st_ino for sid in ("43", "44")} == inodes
        assert tree_digests(d.mountpoint / "45") == v5_tree
        # §5 hot-upgrade step 6 behaviour: the re-POST of a restored mount.
        status, body, _ = post_mount(successor, "43", V6_BOOT, V6_BLOBS)
        assert status == 500 and "already exists" in body["message"]
        # The restored daemon manages its mounts as before.
        assert call(successor.sock, "DELETE", "/api/v1/mount?mountpoint=%2F44")[0] == 204
        assert sorted(os.listdir(d.mountpoint)) == ["43", "45"]
        send_states(successor, supervisor)
        assert successor.stop() == 0
        assert mount_entry(d.mountpoint) is None
    finally:
        if successor is not None:
            successor.stop()
        d.stop()
        supervisor.close()


def test_shared_daemon_refuses_what_it_cannot_serve(tmp_path):
    """Without --bootstrap and without --apisock nothing could ever be
    mounted: a clear error instead of an idle daemon."""
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run([str(NYDUSD), "fuse", "--mountpoint", str(tmp_path / "mnt"), "--log-level", "info"],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode != 0
    assert "--apisock" in proc.stderr + proc.stdout
    assert mount_entry(tmp_path / "mnt") is None


def test_shared_mode_hot_upgrade(tmp_path):
    """§5 hot upgrade of a shared daemon: a second binary with --upgrade and
    api1.sock takes over every mount; the old one exits through the API; the
    snapshotter's re-POST of each mount answers 500 AlreadyExists and the
    daemon keeps serving."""
    supervisor = Supervisor(tmp_path / "supervisor" / "cq1fk6f5ntt0000abcde.sock")
    new_binary = tmp_path / "nydusd-new"
    new_binary.write_bytes(NYDUSD.read_bytes())
    new_binary.chmod(0o755)
    old = SnapshotterLikeDaemon(tmp_path, None)
    new = None
    try:
        old.wait_socket()
        wait_state(old.sock, "RUNNING")
        for sid in ("42", "43"):
            assert post_mount(old, sid, V6_BOOT, V6_BLOBS)[0] == 204
        send_states(old, supervisor)
        readers = InstanceReaders(old.mountpoint, ("42", "43"))
        readers.start()
        time.sleep(0.2)
        sender = supervisor.send_in_background()
        new = SnapshotterLikeDaemon(tmp_path, None, binary=new_binary, apisock_name="api1.sock", extra=["--upgrade"])
        new.wait_socket()
        wait_state(new.sock, "INIT")
        assert call(new.sock, "PUT", "/api/v1/daemon/fuse/takeover")[0] == 204
        sender.join(5)
        wait_state(new.sock, "READY")
        assert call(old.sock, "PUT", "/api/v1/daemon/exit")[0] == 204
        assert old.proc.wait(10) == 0
        assert call(new.sock, "PUT", "/api/v1/daemon/start")[0] == 204
        wait_state(new.sock, "RUNNING")
        for sid in ("42", "43"):
            status, body, _ = post_mount(new, sid, V6_BOOT, V6_BLOBS)
            assert status == 500 and "already exists" in body["message"]
        time.sleep(0.3)
        readers.stop()
        assert readers.errors == [], readers.errors[:5]
        assert readers.reads > 10
        status, info, _ = call(new.sock, "GET", "/api/v1/daemon")
        assert sorted(info["backend_collection"]) == ["/42", "/43"]
        assert new.stop() == 0
        assert mount_entry(old.mountpoint) is None
    finally:
        if new is not None:
            new.stop()
        old.stop()
        supervisor.close()


def test_xattrs_disabled_on_one_instance_do_not_hide_another_instances_xattrs(tmp_path):
    """ENOSYS for getxattr switches xattrs off for the whole FUSE mount: an
    instance with enable_xattr false must answer 'no such attribute'
    instead, or every other image in the shared daemon loses its xattrs."""
    from test_builder import NYDUS_IMAGE
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"with an xattr\n")
    os.setxattr(src / "file", b"user.comment", b"hello")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    boot = tmp_path / "image.boot"
    subprocess.run([str(NYDUS_IMAGE), "create", "--bootstrap", str(boot), "--blob-dir", str(blobs), str(src)],
                   check=True, capture_output=True)
    d = SnapshotterLikeDaemon(tmp_path / "R", None)
    try:
        d.wait_socket()
        wait_state(d.sock, "RUNNING")
        for sid, enable in (("off", False), ("on", True)):
            config = instance_config(sid, blobs, d.root / "cache")
            config["enable_xattr"] = enable
            status, body, _ = call(d.sock, "POST", f"/api/v1/mount?mountpoint=%2F{sid}",
                                   {"fs_type": "rafs", "source": str(boot), "config": json.dumps(config)})
            assert status == 204, body
        try:
            os.getxattr(d.mountpoint / "off" / "file", "user.comment")
            raise AssertionError("xattrs are disabled on /off")
        except OSError as error:
            assert error.errno == errno.ENODATA, error
        assert os.listxattr(d.mountpoint / "off" / "file") == []
        assert os.getxattr(d.mountpoint / "on" / "file", "user.comment") == b"hello"
        assert os.listxattr(d.mountpoint / "on" / "file") == ["user.comment"]
        assert d.stop() == 0
    finally:
        d.stop()


def test_shared_mode_restart_policy_remounts_by_re_posting(tmp_path):
    """§4.4 F with recover_policy=restart: after the daemon dies the
    snapshotter unmounts, deletes api.sock, execs the same argv and re-POSTs
    every instance in creation order; the images are back at their paths."""
    d = SnapshotterLikeDaemon(tmp_path, None)
    successor = None
    try:
        d.wait_socket()
        wait_state(d.sock, "RUNNING")
        for sid, boot, blobs in (("42", V6_BOOT, V6_BLOBS), ("43", V5_BOOT, V5_BLOBS)):
            assert post_mount(d, sid, boot, blobs)[0] == 204
        v5_tree = tree_digests(d.mountpoint / "43")
        d.proc.kill()
        d.proc.wait()
        subprocess.run(["umount", "-l", str(d.mountpoint)], check=True)
        d.sock.unlink()
        successor = SnapshotterLikeDaemon(tmp_path, None)
        successor.wait_socket()
        wait_state(successor.sock, "RUNNING")  # a normal start: nothing to take over
        assert os.listdir(successor.mountpoint) == []
        for sid, boot, blobs in (("42", V6_BOOT, V6_BLOBS), ("43", V5_BOOT, V5_BLOBS)):
            assert post_mount(successor, sid, boot, blobs)[0] == 204
        assert sha256_file(successor.mountpoint / "42" / "lib.rs") == LIB_RS_SHA256
        assert tree_digests(successor.mountpoint / "43") == v5_tree
        assert successor.stop() == 0
    finally:
        if successor is not None:
            successor.stop()
        d.stop()


def test_two_mounts_of_one_image_share_the_cache_and_both_see_it_complete(tmp_path):
    """Two instances of one image share its blob cache files: what one
    caches the other serves without fetching, and both report
    data_all_ready once every chunk is in, whichever fetched it."""
    d = SnapshotterLikeDaemon(tmp_path, None)
    try:
        d.wait_socket()
        wait_state(d.sock, "RUNNING")
        (tmp_path / "fresh-cache").mkdir()
        for sid in ("a", "b"):
            status, body, _ = post_mount(d, sid, V6_BOOT, V6_BLOBS, work_dir=tmp_path / "fresh-cache")
            assert status == 204, body
        status, cache, _ = call(d.sock, "GET", "/api/v1/metrics/blobcache?id=%2Fb")
        assert cache["data_all_ready"] is False
        # Each file is one chunk: each instance caches one, neither both.
        assert sha256_file(d.mountpoint / "a" / "lib.rs") == LIB_RS_SHA256
        assert sha256_file(d.mountpoint / "b" / "sync_io.rs") == SYNC_IO_SHA256
        for sid in ("a", "b"):
            status, cache, _ = call(d.sock, "GET", f"/api/v1/metrics/blobcache?id=%2F{sid}")
            assert status == 200 and cache["data_all_ready"] is True, (sid, cache)
        status, backend_b, _ = call(d.sock, "GET", "/api/v1/metrics/backend?id=%2Fb")
        assert sha256_file(d.mountpoint / "b" / "lib.rs") == LIB_RS_SHA256  # cached by /a
        status, backend_b_after, _ = call(d.sock, "GET", "/api/v1/metrics/backend?id=%2Fb")
        assert backend_b_after["read_count"] == backend_b["read_count"]  # served from the shared cache
        assert d.stop() == 0
    finally:
        d.stop()
