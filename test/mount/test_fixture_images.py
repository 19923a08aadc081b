"""Mount the images upstream nydus-image made and check what a user sees."""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from conftest import (FIXTURES, fixture_path, sha256_file, mount_entry, mounted, start_daemon, walk_tree,
                      write_config, force_unmount)

V6_BOOT = fixture_path("bootstrap/rafs-v6-2.2.boot")
V6_BLOBS = fixture_path("blobs")
V5_IMAGES = ["repeatable/sha256-nocompress-repeatable", "repeatable/blake3-lz4_block-non_repeatable"]
V5_BLOBS = fixture_path("repeatable/blobs")
LEGACY_BOOT = fixture_path("bootstrap/nydusd_daemon_test_bootstrap")


def test_v6_file_contents():
    with mounted(V6_BOOT, blob_dir=V6_BLOBS) as d:
        assert sorted(os.listdir(d.mountpoint)) == ["lib.rs", "sync_io.rs"]
        assert sha256_file(d.mountpoint / "lib.rs") == \
            "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69"
        assert sha256_file(d.mountpoint / "sync_io.rs") == \
            "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96"


def test_mount_source_type_and_options():
    with mounted(V6_BOOT, blob_dir=V6_BLOBS) as d:
        entry = mount_entry(d.mountpoint)
        assert entry["source"] == "rafs"
        assert entry["fstype"] == "fuse"
        for opt in ["ro", "nosuid", "nodev", "noatime"]:
            assert opt in entry["mount_opts"], entry
        for opt in ["default_permissions", "allow_other"]:
            assert opt in entry["super_opts"], entry


def kernel_erofs_mount(bootstrap):
    mnt = tempfile.mkdtemp(prefix="erofs-")
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(bootstrap), mnt], check=True)
    return mnt


def test_v6_attributes_equal_kernel_erofs():
    """The kernel's own erofs driver is an implementation we did not write."""
    kernel = kernel_erofs_mount(V6_BOOT)
    try:
        expected = walk_tree(kernel)
        with mounted(V6_BOOT, blob_dir=V6_BLOBS) as d:
            actual = walk_tree(d.mountpoint)
        assert sorted(actual) == sorted(expected)
        for path, want in expected.items():
            got = actual[path]
            for field in ["st_mode", "st_size", "st_uid", "st_gid", "st_mtime_ns", "st_nlink"]:
                if path == "" and field == "st_mtime_ns":
                    continue  # kernel shows build_time for the root; both are image data
                assert getattr(got, field) == getattr(want, field), (path, field)
        assert len(expected) == 3
    finally:
        subprocess.run(["umount", kernel], check=False)
        os.rmdir(kernel)


def result_tree(result_path):
    """Parses a `.result` file: `tree -J` JSON followed by md5sum lines."""
    text = result_path.read_text()
    end = text.index("\n]\n") + 3
    tree = json.loads(text[:end])
    md5 = {}
    for line in text[end:].splitlines():
        if line.strip():
            digest, path = line.split(None, 1)
            md5[path.strip()] = digest
    entries = {}

    def visit(node, prefix):
        for child in node.get("contents", []):
            path = prefix + "/" + child["name"]
            entries[path] = child
            if child["type"] == "directory":
                visit(child, path)

    visit(tree[0], "")
    return entries, md5


def tree_as_result(root):
    entries = {}
    for path, st in walk_tree(root).items():
        if path == "":
            continue
        kind = ("directory" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode)
                else "file" if stat.S_ISREG(st.st_mode) else "other")
        entries["/" + path] = kind
    return entries


@pytest.mark.parametrize("image", V5_IMAGES)
@pytest.mark.parametrize("validate", [False, True])
def test_v5_tree_contents_and_hardlinks(image, validate, tmpdir_path):
    expected, md5 = result_tree(fixture_path(image + ".result"))
    config = write_config(tmpdir_path, V5_BLOBS, digest_validate=validate)
    with mounted(fixture_path(image), config=config) as d:
        actual = tree_as_result(d.mountpoint)
        assert actual == {path: node["type"] for path, node in expected.items()}
        for path, node in expected.items():
            if node["type"] == "link":
                assert os.readlink(str(d.mountpoint) + path) == node["target"], path
        # Every regular file reads completely, with the content upstream recorded.
        files = [p for p, kind in actual.items() if kind == "file"]
        assert len(files) == 23
        for path in files:
            data = (d.mountpoint / path.lstrip("/")).read_bytes()
            assert len(data) == os.lstat(str(d.mountpoint) + path).st_size
            assert hashlib.md5(data).hexdigest() == md5[path], path
        # Hardlinks share one inode number and report the group size.
        trio = ["hardlink-test/foo", "hardlink-test/test.sh", "normal-file-test/test.sh"]
        inos = {os.lstat(d.mountpoint / p).st_ino for p in trio}
        assert len(inos) == 1
        assert all(os.lstat(d.mountpoint / p).st_nlink == 3 for p in trio)
        assert "ERROR" not in d.log()


def test_legacy_v5_layout_read_right_or_refused(tmpdir_path):
    """Its inode field order matches no released nydus: a misread tree must never show."""
    mnt = tempfile.mkdtemp(prefix="nydus-mnt-")
    try:
        daemon, failure = start_daemon(LEGACY_BOOT, mnt, blob_dir=tmpdir_path)
        if daemon is None:
            rc, log = failure
            assert rc == 1
            errors = [l for l in log.splitlines() if "ERROR" in l]
            assert len(errors) == 1 and "nydusd_daemon_test_bootstrap" in errors[0], log
            return
        try:
            entries = walk_tree(mnt)
            kinds = [e.st_mode for p, e in entries.items() if p != ""]
            assert len(kinds) == 16832 - 1  # entries without the root
            assert sum(stat.S_ISREG(m) for m in kinds) == 12464
            assert sum(stat.S_ISLNK(m) for m in kinds) == 2941
            assert sum(stat.S_ISDIR(m) for m in kinds) == 1427 - 1
            for path, st in entries.items():
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(os.path.join(mnt, path))
                    assert len(target) == st.st_size and target, path
        finally:
            rc, _ = daemon.stop()
            assert rc == 0
    finally:
        force_unmount(mnt)
        os.rmdir(mnt)
