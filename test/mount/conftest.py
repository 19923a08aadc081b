"""Shared helpers for the mount tests: run the real nydusd binary against
real images over a real FUSE mount, and always clean up.

Environment:
  NYDUSD          path of the nydusd binary (default: build/daemon/nydusd)
  NYDUS_FIXTURES  upstream-made images (default: ../shared/fixtures/nydus)
"""
import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NYDUSD = pathlib.Path(os.environ.get("NYDUSD", ROOT / "build" / "daemon" / "nydusd"))
FIXTURES = pathlib.Path(os.environ.get("NYDUS_FIXTURES", ROOT.parent / "shared" / "fixtures" / "nydus"))


def fixture_path(relative):
    return FIXTURES / relative


def mount_entry(mountpoint):
    """The /proc/self/mountinfo entry for `mountpoint` as a dict, or None."""
    mountpoint = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields = left.split()
            if fields[4] != mountpoint:
                continue
            fstype, source, super_opts = right.split()[:3]
            return {"fstype": fstype, "source": source, "mount_opts": fields[5].split(","),
                    "super_opts": super_opts.split(",")}
    return None


# Log directories made by start_daemon(); removed when the test session ends
# (tests read the logs after stopping daemons, so not earlier).
_LOG_DIRS = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "once: run on one build only (test/run_all.sh: the release build, not again under ASan+UBSan): "
        "the test runs no daemon or builder code, or only measures its timing, or sibling cases that run "
        "under ASan+UBSan cover its code paths")
    config.addinivalue_line(
        "markers",
        "p2p: multi-daemon P2P tests in network namespaces (test_p2p.py, test_p2p_harness.py); "
        "select with -m p2p or -k p2p")


@pytest.fixture(scope="session", autouse=True)
def _remove_log_dirs():
    yield
    for path in _LOG_DIRS:
        shutil.rmtree(path, ignore_errors=True)


class Daemon:
    """A running nydusd with its FUSE mount."""

    def __init__(self, proc, mountpoint, log_path):
        self.proc = proc
        self.mountpoint = pathlib.Path(mountpoint)
        self.log_path = log_path

    def log(self):
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=5):
        """Signals the daemon; returns (exit code, seconds until the mount was gone)."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        while mount_entry(self.mountpoint) is not None and time.monotonic() - start < timeout:
            time.sleep(0.01)
        return rc, time.monotonic() - start


def _inside(path, directory):
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory + os.sep)


def start_daemon(bootstrap, mountpoint, blob_dir=None, config=None, extra_args=(), log_path=None,
                 wait=10.0):
    """Starts nydusd; returns (Daemon, None) once mounted, or (None, (rc, log)) if it exited."""
    if log_path is None:
        log_dir = tempfile.mkdtemp(prefix="nydusd-log-")
        _LOG_DIRS.append(log_dir)
        log_path = os.path.join(log_dir, "nydusd.log")
    args = [str(NYDUSD), "fuse", "--bootstrap", str(bootstrap), "--mountpoint", str(mountpoint),
            "--log-level", "info"]
    if config is None and blob_dir is not None and _inside(blob_dir, FIXTURES):
        # --localfs-dir keeps the blob cache next to the blobs, as upstream
        # does; the shared fixtures must stay untouched, so their cache goes
        # to a private directory instead.
        cache_dir = tempfile.mkdtemp(prefix="nydusd-cache-")
        _LOG_DIRS.append(cache_dir)
        config = write_config(cache_dir, blob_dir, enable_xattr=False)
    if config is not None:
        args += ["--config", str(config)]
    elif blob_dir is not None:
        args += ["--localfs-dir", str(blob_dir)]
    args += list(extra_args)
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if mount_entry(mountpoint) is not None:
            return Daemon(proc, mountpoint, log_path), None
        rc = proc.poll()
        if rc is not None:
            return None, (rc, pathlib.Path(log_path).read_text(errors="replace"))
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    force_unmount(mountpoint)
    raise AssertionError(f"nydusd did not mount within {wait}s: {pathlib.Path(log_path).read_text()}")


def force_unmount(mountpoint):
    if mount_entry(mountpoint) is not None:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@contextlib.contextmanager
def mounted(bootstrap, blob_dir=None, config=None, extra_args=(), expect_clean_exit=True):
    """Mounts, yields the Daemon, then SIGTERMs it and checks a clean exit."""
    mnt = tempfile.mkdtemp(prefix="nydus-mnt-")
    daemon, failure = start_daemon(bootstrap, mnt, blob_dir=blob_dir, config=config, extra_args=extra_args)
    assert daemon is not None, f"nydusd failed to mount: rc={failure[0]}\n{failure[1]}"
    try:
        yield daemon
    finally:
        rc, _ = daemon.stop()
        force_unmount(mnt)
        os.rmdir(mnt)
        if expect_clean_exit:
            assert rc == 0, daemon.log()


def write_config(directory, blob_dir, digest_validate=False, enable_xattr=True, cache=True):
    """A v1 JSON config with a localfs backend, as upstream users write it."""
    config = {
        "device": {
            "backend": {"type": "localfs", "config": {"dir": str(blob_dir)}},
        },
        "mode": "direct",
        "digest_validate": digest_validate,
        "enable_xattr": enable_xattr,
        "iostats_files": False,
    }
    if cache:
        config["device"]["cache"] = {"type": "blobcache", "config": {"work_dir": str(directory)}}
    path = pathlib.Path(directory) / "config.json"
    path.write_text(json.dumps(config))
    return path


def sha256_file(path):
    """sha256 hex of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def walk_tree(root):
    """Every entry under root as {relative path: os.lstat result}, root included as ''."""
    root = str(root)
    entries = {"": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            entries[os.path.relpath(full, root)] = os.lstat(full)
    return entries


@pytest.fixture
def tmpdir_path():
    path = tempfile.mkdtemp(prefix="nydus-test-")
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def require_root_and_fuse():
    """Skips on a developer machine without root or /dev/fuse; in CI (CI set)
    a missing capability is a failure, never a silent skip."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        if os.environ.get("CI"):
            pytest.fail("CI must run the mount tests as root with /dev/fuse")
        pytest.skip("mount tests need root and /dev/fuse")


@pytest.fixture(autouse=True)
def _needs_mounts():
    require_root_and_fuse()
