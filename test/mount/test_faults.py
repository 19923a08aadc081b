"""Damaged inputs: bootstraps, blobs and chunks. Never a crash, a hang or wrong bytes."""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from conftest import fixture_path, force_unmount, mount_entry, mounted, start_daemon, write_config

V6_BOOT = fixture_path("bootstrap/rafs-v6-2.2.boot")
V6_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
V5_BOOT = fixture_path("repeatable/sha256-nocompress-repeatable")
V5_BLOB_ID = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"

# Walks the whole mount and reads every file in a child process, so that a
# hung request shows up as a timeout here instead of hanging the test run.
WALKER = textwrap.dedent("""
    import os, sys
    root = sys.argv[1]
    entries = errors = 0
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            entries += 1
            try:
                st = os.lstat(path)
                if os.path.islink(path):
                    os.readlink(path)
                elif os.path.isfile(path):
                    with open(path, 'rb') as f:
                        while f.read(1 << 20):
                            pass
            except OSError:
                errors += 1
    print(entries, errors)
""")


def walk_in_child(mountpoint, timeout=60):
    return subprocess.run([sys.executable, "-c", WALKER, str(mountpoint)], capture_output=True, text=True,
                          timeout=timeout)


def error_lines(log):
    return [line for line in log.splitlines() if " ERROR " in line]


def test_missing_blob_fails_only_its_reads(tmpdir_path):
    empty_dir = tmpdir_path / "blobs"
    empty_dir.mkdir()
    with mounted(V6_BOOT, blob_dir=empty_dir) as d:
        # Metadata still works.
        assert sorted(os.listdir(d.mountpoint)) == ["lib.rs", "sync_io.rs"]
        assert os.stat(d.mountpoint / "lib.rs").st_size == 16931
        for name in ["lib.rs", "sync_io.rs", "lib.rs"]:
            with pytest.raises(OSError) as err:
                (d.mountpoint / name).read_bytes()
            assert err.value.errno == 5  # EIO
        errors = error_lines(d.log())
        assert len(errors) == 1, d.log()
        assert V6_BLOB_ID in errors[0]


def test_missing_blob_leaves_other_blobs_working(tmpdir_path):
    """Two images in one blob dir: removing one blob fails only its files."""
    blob_dir = tmpdir_path / "blobs"
    blob_dir.mkdir()
    shutil.copy(fixture_path("repeatable/blobs") / V5_BLOB_ID, blob_dir)
    with mounted(V5_BOOT, blob_dir=blob_dir) as d:
        assert (d.mountpoint / "normal-file-test" / "test.sh").read_bytes()
    with mounted(V6_BOOT, blob_dir=blob_dir) as d:
        with pytest.raises(OSError):
            (d.mountpoint / "lib.rs").read_bytes()
        assert os.listdir(d.mountpoint)


@pytest.mark.parametrize("image,blob_id,blob_src", [
    (V5_BOOT, V5_BLOB_ID, fixture_path("repeatable/blobs")),
    (V6_BOOT, V6_BLOB_ID, fixture_path("blobs")),
])
def test_corrupted_chunk_gives_eio_never_wrong_bytes(image, blob_id, blob_src, tmpdir_path):
    blob_dir = tmpdir_path / "blobs"
    blob_dir.mkdir()
    data = bytearray((blob_src / blob_id).read_bytes())
    good = {}
    with mounted(image, blob_dir=blob_src) as d:
        for dirpath, _, files in os.walk(d.mountpoint):
            for name in files:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    good[os.path.relpath(p, d.mountpoint)] = open(p, "rb").read()
    # Flip one byte in the middle of the first chunk (offset 100 lies inside
    # chunk 0 of both blobs).
    data[100] ^= 0x5A
    (blob_dir / blob_id).write_bytes(bytes(data))
    config = write_config(tmpdir_path, blob_dir, digest_validate=True)
    eio = 0
    with mounted(image, config=config) as d:
        for rel, want in good.items():
            try:
                got = (d.mountpoint / rel).read_bytes()
            except OSError as e:
                assert e.errno == 5
                eio += 1
                continue
            assert got == want, f"wrong bytes served for {rel}"
    assert eio >= 1


def damaged_variants(original, count, seed):
    rng = random.Random(seed)
    size = len(original)
    variants = []
    for _ in range(count // 3):
        variants.append(("truncate", original[:rng.randrange(0, size)]))
    for _ in range(count - count // 3):
        data = bytearray(original)
        pos = rng.randrange(0, size)
        if rng.random() < 0.5:
            data[pos] ^= 1 << rng.randrange(8)
            kind = f"bitflip@{pos}"
        else:
            data[pos] = rng.randrange(256)
            kind = f"byte@{pos}"
        variants.append((kind, bytes(data)))
    return variants


@pytest.mark.parametrize("image,blob_dir,count,seed", [
    (V6_BOOT, fixture_path("blobs"), 150, 6),
    (V5_BOOT, fixture_path("repeatable/blobs"), 150, 5),
])
def test_damaged_bootstraps_refused_or_served_safely(image, blob_dir, count, seed, tmpdir_path):
    original = image.read_bytes()
    refused = served = 0
    for kind, data in damaged_variants(original, count, seed):
        boot = tmpdir_path / "damaged.boot"
        boot.write_bytes(data)
        mnt = tempfile.mkdtemp(prefix="nydus-mnt-")
        try:
            daemon, failure = start_daemon(boot, mnt, blob_dir=blob_dir)
            if daemon is None:
                rc, log = failure
                assert rc == 1, f"{kind}: exit {rc} (crash?)\n{log}"
                errors = error_lines(log)
                assert len(errors) == 1, f"{kind}: want one error line\n{log}"
                refused += 1
                continue
            try:
                walk = walk_in_child(mnt)
                assert walk.returncode == 0, f"{kind}: walker failed {walk.stderr}"
                assert daemon.proc.poll() is None, f"{kind}: daemon died\n{daemon.log()}"
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                pytest.fail(f"{kind}: walking the mount hung\n{daemon.log()}")
            finally:
                rc, _ = daemon.stop()
            assert rc == 0, f"{kind}: exit {rc}\n{daemon.log()}"
            served += 1
        finally:
            force_unmount(mnt)
            os.rmdir(mnt)
    print(f"{image.name}: {refused} refused, {served} mounted and walked")
    assert refused > 0


def test_gzip_chunks_are_refused_at_mount(tmpdir_path):
    """eStargz/zran (gzip) chunks are not decodable yet: refuse clearly, never serve EIO later."""
    data = bytearray(V5_BOOT.read_bytes())
    flags = int.from_bytes(data[16:24], "little")
    assert flags == 0x9  # COMPRESSION_NONE | HASH_SHA256
    data[16:24] = ((flags & ~0x1) | 0x40).to_bytes(8, "little")  # COMPRESSION_GZIP
    boot = tmpdir_path / "gzip.boot"
    boot.write_bytes(bytes(data))
    mnt = tempfile.mkdtemp(prefix="nydus-mnt-")
    try:
        daemon, failure = start_daemon(boot, mnt, blob_dir=fixture_path("repeatable/blobs"))
        if daemon:
            daemon.stop()
        assert daemon is None, "a gzip image must not mount"
        rc, log = failure
        assert rc == 1
        errors = error_lines(log)
        assert len(errors) == 1 and "gzip" in errors[0], log
    finally:
        force_unmount(mnt)
        os.rmdir(mnt)
