"""Plain OCI images and stock containerd on the P2P test cluster's nodes.

  build_oci_layout(directory, seed, layer_sizes) -> OciImage
      An OCI image layout on disk (oci-layout, index.json, blobs/sha256/...):
      one gzip layer of incompressible files per entry of `layer_sizes`, a
      config and a manifest, all made here with tarfile and gzip.
      .layers [(digest hex, size)], .config (digest hex, size), .manifest
  write_oci_layout(directory, [(tar.gz bytes, tar sha256)], cmd) -> OciImage
      the same of layers made elsewhere
  skopeo_copy(layout, ref, basic_auth=None)
      skopeo pushes the layout to a registry over plain HTTP (the real
      client's push: blob uploads, then the manifest).
  write_hosts_dir(directory, registry_host, mirror_url) -> hosts dir
      containerd's certs.d layout: <registry host>/hosts.toml naming the
      node's mirror for pull and resolve, with the origin in the
      X-Dragonfly-Registry header (as Dragonfly's guide writes it), the
      registry itself as the server to fall back to.
  Containerd(node)
      containerd from Debian, started inside the node's network namespace
      with its own root, state and socket under the node's directory.
      pull(ref, hosts_dir)    `ctr image pull --hosts-dir`; CompletedProcess
      content(digest)         the bytes of a blob in its content store
      stop()
"""
import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import random
import subprocess
import tarfile
import time

import pytest

from p2p_harness import read_log, stop_process

CTR = "/usr/bin/ctr"
CONTAINERD = "/usr/bin/containerd"
SKOPEO = "/usr/bin/skopeo"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def require_containerd_tools():
    missing = [p for p in (CTR, CONTAINERD, SKOPEO) if not os.access(p, os.X_OK)]
    if missing:
        message = f"missing {', '.join(missing)} (Debian packages containerd, skopeo; test/install-deps.sh)"
        if os.environ.get("CI"):
            raise AssertionError(message)
        pytest.skip(message)


@dataclasses.dataclass
class OciImage:
    layout: pathlib.Path
    layers: list     # [(digest hex, size)]
    config: tuple    # (digest hex, size)
    manifest: tuple  # (digest hex, size)

    @property
    def blob_bytes(self):
        return sum(size for _, size in self.layers) + self.config[1]


def _put_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return digest, len(data)


def _layer_tar(rng, index, size):
    """A tar of a few files of random bytes (gzip cannot shrink them, so the
    layer is about `size` bytes), deterministic for a seed."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        left, n = size, 0
        while left > 0:
            part = min(left, rng.randint(64 << 10, 1 << 20))
            info = tarfile.TarInfo(f"layer{index}/file{n}.bin")
            info.size = part
            info.mtime = 0
            tar.addfile(info, io.BytesIO(rng.randbytes(part)))
            left -= part
            n += 1
    return out.getvalue()


def build_oci_layout(directory, seed, layer_sizes):
    rng = random.Random(seed)
    layers = []
    for i, size in enumerate(layer_sizes):
        tar = _layer_tar(rng, i, size)
        layers.append((gzip.compress(tar, compresslevel=1, mtime=0), hashlib.sha256(tar).hexdigest()))
    return write_oci_layout(directory, layers, ["/bin/true"])


def write_oci_layout(directory, layers, cmd):
    """An OCI layout of `layers` ([(tar.gz bytes, sha256 hex of the tar)]),
    a linux/amd64 config running `cmd`, its manifest, tagged "v1"."""
    layout = pathlib.Path(directory)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    diff_ids = ["sha256:" + diff for _, diff in layers]
    layers = [_put_blob(layout, data) for data, _ in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    config_desc = _put_blob(layout, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + config_desc[0], "size": config_desc[1]},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": "sha256:" + d, "size": s} for d, s in layers],
    }, sort_keys=True).encode()
    manifest_desc = _put_blob(layout, manifest)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + manifest_desc[0], "size": manifest_desc[1],
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    }))
    return OciImage(layout, layers, config_desc, manifest_desc)


def skopeo_copy(image, ref, basic_auth=None):
    """Pushes `image` (its ref name "v1") to docker://`ref` over plain HTTP."""
    args = [SKOPEO, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
            f"oci:{image.layout}:v1", f"docker://{ref}"]
    if basic_auth:
        args[3:3] = ["--dest-creds", ":".join(basic_auth)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"skopeo copy failed: {done.stderr}"


def write_hosts_dir(directory, registry_host, mirror_url):
    hosts = pathlib.Path(directory)
    (hosts / registry_host).mkdir(parents=True, exist_ok=True)
    (hosts / registry_host / "hosts.toml").write_text(
        f'server = "http://{registry_host}"\n'
        f'\n'
        f'[host."{mirror_url}"]\n'
        f'  capabilities = ["pull", "resolve"]\n'
        f'  [host."{mirror_url}".header]\n'
        f'    X-Dragonfly-Registry = ["http://{registry_host}"]\n')
    return hosts


class Containerd:
    """containerd in `node`'s network namespace (its mirror is 127.0.0.1
    there), with everything of its own under node.dir/containerd."""

    def __init__(self, node, wait=20):
        self.node = node
        self.dir = node.dir / "containerd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "c.sock"
        self.log_path = self.dir / "containerd.log"
        config = self.dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.dir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            # Only what a pull needs: no CRI, no snapshotters that probe the host.
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.tracing",'
            ' "io.containerd.tracing.processor.v1.otlp"]\n'
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            "[ttrpc]\n"
            f'  address = "{self.socket}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            '  level = "debug"\n'
            "[metrics]\n"
            '  address = ""\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{self.dir / "opt"}"\n')
        self.proc = subprocess.Popen(["ip", "netns", "exec", node.ns, CONTAINERD, "--config", str(config)],
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.socket.exists() and self._ctr(["version"], check=False).returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"containerd did not answer within {wait}s:\n{self.log()[-3000:]}")

    def _ctr(self, args, check=True, timeout=120, text=True):
        done = subprocess.run(["ip", "netns", "exec", self.node.ns, CTR, "--address", str(self.socket),
                               "--namespace", "np2p", *args], capture_output=True, text=text, timeout=timeout)
        if check:
            assert done.returncode == 0, f"ctr {' '.join(args)} failed: {done.stderr}\n{self.log()[-3000:]}"
        return done

    def pull(self, ref, hosts_dir, check=True):
        # The native snapshotter unpacks into plain directories: no overlay
        # mounts inside the test's temporary directory.
        return self._ctr(["image", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native", ref],
                         check=check)

    def content(self, digest):
        return self._ctr(["content", "get", "sha256:" + digest], text=False).stdout

    def log(self):
        return read_log(self.log_path)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, 10)
            self.proc = None
