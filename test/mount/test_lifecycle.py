"""Process lifecycle: signals, external unmount, command line and config errors."""
import json
import os
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import NYDUSD, fixture_path, force_unmount, mount_entry, start_daemon

V6_BOOT = fixture_path("bootstrap/rafs-v6-2.2.boot")
V6_BLOBS = fixture_path("blobs")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_and_exits_zero_within_a_second(sig):
    mnt = tempfile.mkdtemp(prefix="nydus-mnt-")
    try:
        daemon, failure = start_daemon(V6_BOOT, mnt, blob_dir=V6_BLOBS)
        assert daemon, failure
        # Keep a file open and a read in flight pattern going: the stop must not wait for it.
        (daemon.mountpoint / "lib.rs").read_bytes()
        rc, seconds = daemon.stop(sig)
        assert rc == 0, daemon.log()
        assert mount_entry(mnt) is None
        assert seconds < 1.0, f"took {seconds:.2f}s"
    finally:
        force_unmount(mnt)
        os.rmdir(mnt)


def test_external_umount_makes_daemon_exit():
    mnt = tempfile.mkdtemp(prefix="nydus-mnt-")
    try:
        daemon, failure = start_daemon(V6_BOOT, mnt, blob_dir=V6_BLOBS)
        assert daemon, failure
        subprocess.run(["umount", "-l", mnt], check=True)
        rc = daemon.proc.wait(timeout=10)
        assert rc == 0, daemon.log()
    finally:
        force_unmount(mnt)
        os.rmdir(mnt)


def run_nydusd(*args, timeout=10):
    return subprocess.run([str(NYDUSD), *args], capture_output=True, text=True, timeout=timeout)


def test_version_has_git_commit():
    out = run_nydusd("--version")
    assert out.returncode == 0
    assert "Git Commit:" in out.stdout
    commit = out.stdout.split("Git Commit:")[1].split()[0]
    assert len(commit) >= 7


def test_usage_errors_exit_two():
    assert run_nydusd("fuse", "--no-such-flag").returncode == 2
    assert run_nydusd("fuse", "--mountpoint", "/tmp", "--log-level", "loud").returncode == 2
    assert run_nydusd("fuse", "--mountpoint", "/tmp", "--thread-num", "0").returncode == 2
    assert run_nydusd("fuse", "--mountpoint", "/tmp", "--failover-policy", "maybe").returncode == 2
    assert run_nydusd("fuse", "--mountpoint", "/tmp", "--id", "x").returncode == 2  # needs --supervisor


def test_snapshotter_argv_shape_is_accepted(tmp_path):
    """The dedicated-mode argv of nydusd-contract.md §4.2, with our localfs config."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "device": {"id": "/42", "backend": {"type": "localfs", "config": {"dir": str(V6_BLOBS), "readahead": False}},
                   "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path), "disable_indexed_map": False}}},
        "mode": "direct", "digest_validate": False, "enable_xattr": True, "amplify_io": 1048576,
        "fs_prefetch": {"enable": False, "prefetch_all": True, "threads_count": 8, "merging_size": 1048576},
        "unknown_key_is_ignored": {"x": 1},
    }))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([str(NYDUSD), "fuse", "--thread-num", "4", "--config", str(config),
                             "--bootstrap", str(V6_BOOT), "--mountpoint", str(mnt), "--log-level", "info",
                             "--log-rotation-size", "100", "--log-file", str(tmp_path / "nydusd.log"),
                             "--backend-source", "https://example.invalid", "--failover-policy", "resend"])
    try:
        deadline = time.monotonic() + 10
        while mount_entry(mnt) is None and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "nydusd.log").read_text()
            time.sleep(0.01)
        assert len((mnt / "lib.rs").read_bytes()) == 16931
        assert "mounted rafs" in (tmp_path / "nydusd.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        force_unmount(mnt)


@pytest.mark.parametrize("config,needle", [
    ("{not json nor toml", "neither valid JSON nor TOML"),
    (json.dumps({"device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}}}), "mode"),
    (json.dumps({"device": {"backend": {"type": "localfs", "config": {}}}, "mode": "direct"}), "dir"),
    (json.dumps({"device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}}, "mode": "lazy"}), "mode"),
    (json.dumps({"device": {"backend": {"type": "nfs", "config": {}}}, "mode": "direct"}), "nfs"),
    (json.dumps({"device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}}, "mode": "direct",
                 "amplify_io": 1 << 40}), "amplify_io"),
    (json.dumps({"device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}}, "mode": "direct",
                 "digest_validate": "yes"}), "digest_validate"),
])
def test_bad_config_exits_one_with_clear_error(tmp_path, config, needle):
    path = tmp_path / "config.json"
    path.write_text(config)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = run_nydusd("fuse", "--config", str(path), "--bootstrap", str(V6_BOOT), "--mountpoint", str(mnt))
    assert out.returncode == 1
    errors = [l for l in out.stderr.splitlines() if " ERROR " in l]
    assert len(errors) == 1 and needle in errors[0], out.stderr


def test_v2_toml_config_mounts(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(f'version = 2\nid = "t"\n[backend]\ntype = "localfs"\n[backend.localfs]\ndir = "{V6_BLOBS}"\n'
                    f'[rafs]\nmode = "direct"\nvalidate = true\n')
    mnt = tempfile.mkdtemp(prefix="nydus-mnt-")
    try:
        daemon, failure = start_daemon(V6_BOOT, mnt, config=path)
        assert daemon, failure
        assert len((daemon.mountpoint / "sync_io.rs").read_bytes()) == 13400
        assert daemon.stop()[0] == 0
    finally:
        force_unmount(mnt)
        os.rmdir(mnt)
