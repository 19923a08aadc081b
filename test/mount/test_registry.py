"""nydusd's registry backend against a real registry (Debian's docker-registry).

Each test pushes a nydus image made by our nydus-image (and the upstream
fixture image) with the distribution API, mounts it through the registry
backend and reads it back byte for byte: through every auth mode, through
injected network faults (a FaultProxy between daemon and registry), through
a Dragonfly-style mirror configured as the integration guide writes it, and
again from the blob cache after a restart with zero registry requests.

Request counts come from a FaultProxy in front of the registry: it records
each request as it arrives, so "zero" means zero.
"""
import concurrent.futures
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

import registry_harness as rh
from conftest import (ROOT, fixture_path, mounted, start_daemon, force_unmount, require_root_and_fuse,
                      sha256_file)
from test_api import UnixHTTPConnection, call, inflight_when_idle

NYDUS_IMAGE = pathlib.Path(os.environ.get("NYDUS_IMAGE", ROOT / "build" / "builder" / "nydus-image"))
REPO = "library/nydus-test"
BLOB_PATH = r"/v2/.*/blobs/sha256:"
GUIDE_CONFIG = ROOT / "examples" / "nydusd-dragonfly-mirror.json"


@pytest.fixture(autouse=True)
def _needs_everything():
    require_root_and_fuse()
    rh.require_registry_tools()


def tree_digests(root):
    """{relative path: sha256} of every regular file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out[os.path.relpath(full, root)] = sha256_file(full)
    return out


@pytest.fixture(scope="module")
def image():
    """An image of 24 files (4 KiB to 3 MiB, some compressible) built by our
    nydus-image: RAFS v6, zstd, 1 MiB chunks; plus the source digests."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="nydus-regimg-"))
    src = work / "src"
    (src / "lib" / "python").mkdir(parents=True)
    rng = random.Random(7)
    for i in range(24):
        size = rng.choice([4096, 70_000, 500_000, 1_300_000, 3_100_000])
        directory = src / "lib" / "python" if i % 2 else src
        data = bytearray(rng.randbytes(size // 2)) + bytes((i + k) % 17 + 65 for k in range(size - size // 2))
        (directory / f"file{i:02d}.bin").write_bytes(data)
    blobs = work / "blobs"
    blobs.mkdir()
    boot = work / "image.boot"
    subprocess.run([str(NYDUS_IMAGE), "create", "--fs-version", "6", "--compressor", "zstd",
                    "--bootstrap", str(boot), "--blob-dir", str(blobs), str(src)],
                   check=True, capture_output=True)
    info = {"bootstrap": boot, "blobs": sorted(blobs.iterdir()), "digests": tree_digests(src), "work": work}
    yield info
    shutil.rmtree(work, ignore_errors=True)


def registry_config(work_dir, host, scheme="http", repo=REPO, **extra):
    backend = {"scheme": scheme, "host": host, "repo": repo, "timeout": 5, "connect_timeout": 2,
               "retry_limit": 2}
    backend.update(extra)
    return {"device": {"backend": {"type": "registry", "config": backend},
                       "cache": {"type": "blobcache", "config": {"work_dir": str(work_dir)}}},
            "mode": "direct", "digest_validate": False, "enable_xattr": False}


def write(directory, config):
    path = pathlib.Path(directory) / "nydusd.json"
    path.write_text(json.dumps(config))
    return path


def read_all(mountpoint):
    return tree_digests(mountpoint)


def test_reads_through_each_auth_mode(image, tmp_path):
    """Plain HTTP, TLS, TLS+htpasswd Basic and TLS+token: the same bytes."""
    with rh.TokenServer() as tokens:
        modes = [
            ("http", dict(tls=False), {}),
            ("https", dict(tls=True), {}),
            ("basic", dict(tls=True, auth="basic"), {}),
            ("token", dict(tls=True, auth="token", token_server=tokens), {}),
        ]
        for name, registry_args, _ in modes:
            with rh.Registry(**registry_args) as registry:
                rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
                work = tmp_path / name
                work.mkdir()
                extra = {}
                if registry.ca_path:
                    extra["ca_cert_files"] = [str(registry.ca_path)]
                if registry_args.get("auth"):
                    extra["auth"] = registry.auth_b64
                config = registry_config(work, registry.host, registry.scheme, **extra)
                with mounted(image["bootstrap"], config=write(work, config)) as d:
                    assert read_all(d.mountpoint) == image["digests"], name
                    assert "ERROR" not in d.log()
                if name == "token":
                    assert tokens.count() >= 1


def test_image_pull_auth_env_and_anonymous_refusal(image, tmp_path):
    """IMAGE_PULL_AUTH supplies the credentials; without any, reads fail
    with EIO (401) and name the registry, and the daemon keeps serving."""
    with rh.Registry(tls=True, auth="basic") as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        config = registry_config(tmp_path, registry.host, "https", ca_cert_files=[str(registry.ca_path)])
        path = write(tmp_path, config)
        mnt = tempfile.mkdtemp()
        env_before = os.environ.get("IMAGE_PULL_AUTH")
        os.environ["IMAGE_PULL_AUTH"] = registry.auth_b64
        try:
            daemon, failure = start_daemon(image["bootstrap"], mnt, config=path)
        finally:
            if env_before is None:
                del os.environ["IMAGE_PULL_AUTH"]
            else:
                os.environ["IMAGE_PULL_AUTH"] = env_before
        assert daemon is not None, failure
        try:
            assert read_all(mnt) == image["digests"]
        finally:
            daemon.stop()
            force_unmount(mnt)
        # No credentials at all: EIO, not a hang or wrong bytes.
        anon = tmp_path / "anon"
        anon.mkdir()
        config = registry_config(anon, registry.host, "https", ca_cert_files=[str(registry.ca_path)], retry_limit=0)
        with mounted(image["bootstrap"], config=write(anon, config)) as d:
            name = sorted(image["digests"])[0]
            with pytest.raises(OSError) as err:
                (d.mountpoint / name).read_bytes()
            assert err.value.errno == 5
        os.rmdir(mnt)


def test_token_expiring_during_a_long_read_run(image, tmp_path):
    """Tokens live 2 s; reading chunk by chunk for about 7 s crosses several
    expiries. No read fails, and the daemon fetched new tokens."""
    with rh.TokenServer(lifetime=2) as tokens, rh.Registry(tls=True, auth="token", token_server=tokens) as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        config = registry_config(tmp_path, registry.host, "https", ca_cert_files=[str(registry.ca_path)],
                                 auth=registry.auth_b64)
        config["amplify_io"] = 0  # one chunk per request, so requests keep coming
        with mounted(image["bootstrap"], config=write(tmp_path, config)) as d:
            files = sorted(image["digests"])
            deadline = time.monotonic() + 7
            for name in files:
                data = (d.mountpoint / name).read_bytes()
                assert hashlib.sha256(data).hexdigest() == image["digests"][name]
                if time.monotonic() < deadline:
                    time.sleep(7 / len(files))
            assert "ERROR" not in d.log()
        assert tokens.count() >= 3, tokens.requests


def test_restart_serves_from_cache_with_zero_registry_requests(image, tmp_path):
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        with rh.FaultProxy(registry.url) as proxy:
            config = write(tmp_path, registry_config(tmp_path, f"127.0.0.1:{proxy.port}"))
            sock = tmp_path / "api.sock"
            with mounted(image["bootstrap"], config=config, extra_args=["--apisock", str(sock)]) as d:
                assert read_all(d.mountpoint) == image["digests"]
                # Bytes and requests per source, on the API.
                conn = UnixHTTPConnection(sock)
                conn.request("GET", "/api/v1/metrics/prometheus")
                text = conn.getresponse().read().decode()
                conn.close()
                origin = [l for l in text.splitlines()
                          if l.startswith('nydusd_backend_source_requests_total{id="/",source="origin"}')]
                assert origin and int(origin[0].rsplit(" ", 1)[1]) > 0, text[-2000:]
                status, cache, _ = call(sock, "GET", "/api/v1/metrics/blobcache")
                # Every file was read, so every chunk is cached: the "fully cached" signal.
                assert status == 200 and cache["data_all_ready"] is True and cache["entries_count"] > 0
            first = proxy.count(method="GET")
            assert first > 0
            files = sorted(p.name for p in tmp_path.iterdir())
            assert any(f.endswith(".blob.data") for f in files)
            assert any(f.endswith(".blob.data.chunk_map") for f in files)
            mark = proxy.mark()
            with mounted(image["bootstrap"], config=config) as d:
                assert read_all(d.mountpoint) == image["digests"]
            assert proxy.count(since=mark) == 0, proxy.requests[mark:]


def test_sigkill_mid_read_never_serves_a_torn_chunk(image, tmp_path):
    """SIGKILL while chunks are being written; the restarted daemon (with
    cache validation on) serves exactly the source bytes."""
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        with rh.FaultProxy(registry.url) as proxy:
            config = registry_config(tmp_path, f"127.0.0.1:{proxy.port}")
            config["device"]["cache"]["validate"] = True
            path = write(tmp_path, config)
            for round_ in range(3):
                mnt = tempfile.mkdtemp()
                daemon, failure = start_daemon(image["bootstrap"], mnt, config=path)
                assert daemon is not None, failure
                reader = subprocess.Popen(["sh", "-c", f"cat {mnt}/*.bin {mnt}/lib/python/*.bin > /dev/null"],
                                          stderr=subprocess.DEVNULL)
                time.sleep(0.05 + 0.05 * round_)
                daemon.proc.send_signal(signal.SIGKILL)
                daemon.proc.wait()
                reader.wait(timeout=10)
                force_unmount(mnt)
                os.rmdir(mnt)
            with mounted(image["bootstrap"], config=path) as d:
                assert read_all(d.mountpoint) == image["digests"]


def test_32_concurrent_readers_of_one_cold_chunk_make_one_request(image, tmp_path):
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        with rh.FaultProxy(registry.url) as proxy:
            config = registry_config(tmp_path, f"127.0.0.1:{proxy.port}")
            config["amplify_io"] = 0
            # The first blob GET stalls, so every reader arrives while it is
            # in flight.
            proxy.stall(1.0, times=1, path=BLOB_PATH, method="GET")
            with mounted(image["bootstrap"], config=write(tmp_path, config),
                         extra_args=["--thread-num", "32"]) as d:
                big = max(image["digests"], key=lambda n: (d.mountpoint / n).stat().st_size)
                path = d.mountpoint / big
                mark = proxy.mark()
                barrier = threading.Barrier(32)

                def read_page(i):
                    fd = os.open(path, os.O_RDONLY)
                    # No kernel read-ahead: every reader asks for its own
                    # page of chunk 0 and nothing beyond it.
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                    try:
                        barrier.wait()
                        return os.pread(fd, 4096, i * 4096 * 7)  # distinct pages of chunk 0
                    finally:
                        os.close(fd)

                with concurrent.futures.ThreadPoolExecutor(32) as pool:
                    pages = list(pool.map(read_page, range(32)))
                gets = [r for r in proxy.requests[mark:] if r.method == "GET"]
                assert len(gets) == 1, [(r.path, r.headers.get("Range")) for r in gets]
                with open(path, "rb") as f:
                    whole = f.read(1 << 20)
                for i, page in enumerate(pages):
                    assert page == whole[i * 4096 * 7:i * 4096 * 7 + 4096]


FAULTS = {
    "5xx": lambda p: p.fail(times=2, status=503, path=BLOB_PATH),
    "reset": lambda p: p.reset(times=2, path=BLOB_PATH),
    "reset-mid-body": lambda p: p.reset(times=1, after_bytes=1000, path=BLOB_PATH),
    "stall-past-timeout": lambda p: p.stall(4, times=1, path=BLOB_PATH),
    "truncated": lambda p: p.truncate(after_bytes=5000, times=2, path=BLOB_PATH),
    "wrong-bytes": lambda p: p.corrupt(offsets=(100, 5000), times=2, path=BLOB_PATH),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_reads_survive_network_faults(image, tmp_path, fault):
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        with rh.FaultProxy(registry.url) as proxy:
            config = registry_config(tmp_path, f"127.0.0.1:{proxy.port}", timeout=2, retry_limit=3)
            injected = FAULTS[fault](proxy)
            with mounted(image["bootstrap"], config=write(tmp_path, config)) as d:
                assert read_all(d.mountpoint) == image["digests"]
            assert injected.hits > 0, "the fault never fired"


def test_every_source_down_fails_fast_then_recovers(image, tmp_path):
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        with rh.FaultProxy(registry.url) as proxy:
            config = registry_config(tmp_path, f"127.0.0.1:{proxy.port}", timeout=2, connect_timeout=1,
                                     retry_limit=1)
            with mounted(image["bootstrap"], config=write(tmp_path, config)) as d:
                name = sorted(image["digests"])[0]
                proxy.down()
                start = time.monotonic()
                with pytest.raises(OSError) as err:
                    (d.mountpoint / name).read_bytes()
                took = time.monotonic() - start
                assert err.value.errno == 5
                assert took < 10, took
                proxy.up()
                data = (d.mountpoint / name).read_bytes()
                assert hashlib.sha256(data).hexdigest() == image["digests"][name]
                # A stalled registry (accepts, never answers) also ends in EIO
                # within the deadline rather than a hang.
                proxy.stall(30, times=None, path=BLOB_PATH)
                other = sorted(image["digests"])[1]
                start = time.monotonic()
                with pytest.raises(OSError):
                    (d.mountpoint / other).read_bytes()
                assert time.monotonic() - start < 15
                proxy.clear_faults()
                data = (d.mountpoint / other).read_bytes()
                assert hashlib.sha256(data).hexdigest() == image["digests"][other]


def guide_config(registry, work_dir, mirror_header_value):
    """The integration guide's nydusd-config.json (examples/), with host and
    repo filled in; the test registry's CA and URL are the only other
    changes (the guide's registry is Docker Hub)."""
    config = json.loads(GUIDE_CONFIG.read_text())
    backend = config["device"]["backend"]["config"]
    backend["host"] = registry.host
    backend["repo"] = REPO
    backend["ca_cert_files"] = [str(registry.ca_path)]
    backend["mirrors"][0]["headers"]["X-Dragonfly-Registry"] = mirror_header_value
    backend["mirrors"][0]["health_check_interval"] = 1
    config["device"]["cache"]["config"]["work_dir"] = str(work_dir)
    return config


def test_dragonfly_mirror_failover_and_recovery(image, tmp_path):
    """daemon -> mirror (records X-Dragonfly-Registry) -> registry, set up as
    the guide writes it (mirror :65001, ping :40901/server/ping). Kill the
    mirror: reads fall back to the origin. Revive it: the mirror is used
    again once its ping answers."""
    with rh.TokenServer() as tokens, \
            rh.Registry(tls=True, auth="token", token_server=tokens) as registry, \
            rh.MirrorProxy(port=65001, health_port=40901) as mirror:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        config = guide_config(registry, tmp_path, registry.url)
        config["device"]["backend"]["config"]["auth"] = registry.auth_b64
        config["device"]["backend"]["config"]["mirrors"][0]["failure_limit"] = 1
        config["fs_prefetch"]["enable"] = False  # keep reads (and their routes) on demand
        files = sorted(image["digests"])
        with mounted(image["bootstrap"], config=write(tmp_path, config)) as d:
            origin_before = registry.blob_gets()
            for name in files[:8]:
                assert sha256_file(d.mountpoint / name) == image["digests"][name]
            via_mirror = [r for r in mirror.requests if "/blobs/sha256:" in r.path]
            assert via_mirror, "no blob request went through the mirror"
            assert all(r.headers.get("X-Dragonfly-Registry") == registry.url for r in via_mirror)
            assert all(r.headers.get("Authorization", "").startswith("Bearer ") for r in via_mirror)

            mirror.down()
            for name in files[8:16]:
                assert sha256_file(d.mountpoint / name) == image["digests"][name]
            assert registry.blob_gets() > origin_before  # served by the origin

            mirror.up()
            time.sleep(2.5)  # health_check_interval 1 s: the ping has answered
            before = len([r for r in mirror.requests if "/blobs/sha256:" in r.path])
            for name in files[16:]:
                assert sha256_file(d.mountpoint / name) == image["digests"][name]
            after = len([r for r in mirror.requests if "/blobs/sha256:" in r.path])
            assert after > before, "the revived mirror was not used again"
            log = d.log()
            assert "disabled after" in log and "healthy again" in log


def test_upstream_fixture_image_from_registry(tmp_path):
    """The upstream-made v6 image, pushed as nydusify lays it out."""
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, fixture_path("bootstrap/rafs-v6-2.2.boot"),
                      sorted(fixture_path("blobs").iterdir()))
        config = registry_config(tmp_path, registry.host)
        with mounted(fixture_path("bootstrap/rafs-v6-2.2.boot"), config=write(tmp_path, config)) as d:
            digest = sha256_file(d.mountpoint / "lib.rs")
        assert digest == "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69"


def test_redirects_are_followed_cached_and_re_resolved_on_403(image, tmp_path):
    """The origin answers blob GETs with 307 to a storage host (here a
    second proxy in front of the same registry). nydusd follows it, keeps
    using the cached target, and asks the origin again after a 403."""
    with rh.Registry() as registry:
        pushed = rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        blob_id = pushed.blob_ids[0]
        with rh.FaultProxy(registry.url) as origin, rh.FaultProxy(registry.url) as storage:
            target = f"{storage.url}/v2/{REPO}/blobs/sha256:{blob_id}"
            redirect = origin.fail(times=None, status=307, path=BLOB_PATH, method="GET",
                                   headers={"Location": target})
            config = registry_config(tmp_path, f"127.0.0.1:{origin.port}")
            config["amplify_io"] = 0
            with mounted(image["bootstrap"], config=write(tmp_path, config)) as d:
                files = sorted(image["digests"])
                for name in files[:6]:
                    assert sha256_file(d.mountpoint / name) == image["digests"][name]
                assert redirect.hits == 1, "the redirect target was not cached"
                assert storage.count(method="GET") > 1
                # The storage URL "expires": one 403, then the origin again.
                expired = storage.fail(times=1, status=403, path=BLOB_PATH, method="GET")
                for name in files[6:12]:
                    assert sha256_file(d.mountpoint / name) == image["digests"][name]
                assert expired.hits == 1
                assert redirect.hits == 2
            # The registry's credentials never travel to the storage host.
            assert not any(r.headers.get("Authorization") for r in storage.requests)


def test_skip_verify_reads_from_a_registry_with_an_untrusted_certificate(image, tmp_path):
    with rh.Registry(tls=True) as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        untrusted = tmp_path / "untrusted"
        untrusted.mkdir()
        config = registry_config(untrusted, registry.host, "https", retry_limit=0)
        with mounted(image["bootstrap"], config=write(untrusted, config)) as d:
            with pytest.raises(OSError):
                (d.mountpoint / sorted(image["digests"])[0]).read_bytes()
            assert "certificate" in d.log()
        trusted = tmp_path / "skip"
        trusted.mkdir()
        config = registry_config(trusted, registry.host, "https", skip_verify=True)
        with mounted(image["bootstrap"], config=write(trusted, config)) as d:
            assert read_all(d.mountpoint) == image["digests"]


def test_prefetch_fills_the_cache_then_reads_need_no_requests(image, tmp_path):
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        with rh.FaultProxy(registry.url) as proxy:
            config = registry_config(tmp_path, f"127.0.0.1:{proxy.port}")
            config["fs_prefetch"] = {"enable": True, "threads_count": 4, "merging_size": 1 << 20,
                                     "bandwidth_rate": 0}
            with mounted(image["bootstrap"], config=write(tmp_path, config)) as d:
                deadline = time.monotonic() + 20
                while "prefetch: done" not in d.log() and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert "prefetch: done" in d.log()
                mark = proxy.mark()
                assert read_all(d.mountpoint) == image["digests"]
                assert proxy.count(since=mark) == 0
            assert "(fully cached)" in d.log()


def test_prefetch_files_and_bandwidth_limit_never_delay_on_demand_reads(image, tmp_path):
    """--prefetch-files names one directory; prefetch is capped at 256 KiB/s
    so it runs for seconds, and an on-demand read of another file meanwhile
    finishes long before it."""
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        with rh.FaultProxy(registry.url) as proxy:
            config = registry_config(tmp_path, f"127.0.0.1:{proxy.port}")
            config["fs_prefetch"] = {"enable": True, "threads_count": 2, "merging_size": 256 << 10,
                                     "bandwidth_rate": 256 << 10}
            listing = tmp_path / "prefetch.list"
            listing.write_text("/lib/python\n/does/not/exist\n")
            with mounted(image["bootstrap"], config=write(tmp_path, config),
                         extra_args=["--prefetch-files", str(listing)]) as d:
                time.sleep(0.3)
                top_level = [n for n in sorted(image["digests"]) if "/" not in n]
                name = max(top_level, key=lambda n: (d.mountpoint / n).stat().st_size)
                start = time.monotonic()
                assert sha256_file(d.mountpoint / name) == image["digests"][name]
                took = time.monotonic() - start
                assert "prefetch: done" not in d.log(), "prefetch finished too early to show anything"
                assert took < 2.0, took
            log = d.log()
            assert "/does/not/exist is not in the image" in log


def test_p2p_proxy_is_used_then_bypassed_then_used_again(image, tmp_path):
    """`proxy` (nydusd-contract.md 2.5): requests go through the forward
    proxy; while it is down, `fallback` sends them to the registry; once its
    ping_url answers again the proxy carries them again."""
    with rh.Registry() as registry, rh.ForwardProxy() as proxy:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        config = registry_config(tmp_path, registry.host, timeout=2, connect_timeout=1, retry_limit=1)
        config["device"]["backend"]["config"]["proxy"] = {
            "url": proxy.url, "ping_url": proxy.ping_url, "fallback": True, "check_interval": 1}
        config["amplify_io"] = 0
        files = sorted(image["digests"])
        with mounted(image["bootstrap"], config=write(tmp_path, config)) as d:
            for name in files[:8]:
                assert sha256_file(d.mountpoint / name) == image["digests"][name]
            proxied = [r for r in proxy.requests if r.method == "GET" and "/blobs/sha256:" in r.path]
            assert proxied and all(r.path.startswith(f"http://{registry.host}/v2/") for r in proxied)
            proxy.down()
            origin_before = registry.blob_gets()
            for name in files[8:16]:
                assert sha256_file(d.mountpoint / name) == image["digests"][name]
            assert registry.blob_gets() > origin_before
            proxy.up()
            time.sleep(2.5)
            mark = proxy.mark()
            for name in files[16:]:
                assert sha256_file(d.mountpoint / name) == image["digests"][name]
            assert proxy.count(method="GET", since=mark) > 0, "the recovered proxy was not used again"


def test_registry_token_given_up_front(image, tmp_path):
    """`registry_token`: a bearer token supplied in the config is used as is;
    no token request is made while it is valid."""
    with rh.TokenServer() as tokens, rh.Registry(tls=True, auth="token", token_server=tokens) as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        token = tokens.issue("nydus", tokens.service, [{"type": "repository", "name": REPO, "actions": ["pull"]}])
        before = tokens.count()
        config = registry_config(tmp_path, registry.host, "https", ca_cert_files=[str(registry.ca_path)],
                                 registry_token=token)
        with mounted(image["bootstrap"], config=write(tmp_path, config)) as d:
            assert read_all(d.mountpoint) == image["digests"]
        assert tokens.count() == before


def test_inflight_lists_a_read_stuck_on_the_registry(image, tmp_path):
    """GET /metrics/inflight (the snapshotter's hung-IO poll, §4.4 D): 204
    when idle; while a read waits on a stalled registry, one entry with the
    READ opcode, the kernel's request id and the wall-clock start second;
    204 again once it is answered."""
    with rh.Registry() as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        with rh.FaultProxy(registry.url) as proxy:
            config = registry_config(tmp_path, f"127.0.0.1:{proxy.port}")
            sock = tmp_path / "api.sock"
            with mounted(image["bootstrap"], config=write(tmp_path, config),
                         extra_args=["--apisock", str(sock)]) as d:
                # The socket appears once the daemon is RUNNING, a moment
                # after the mount (seen missing under ASan in CI).
                socket_deadline = time.monotonic() + 10
                while not sock.exists() and time.monotonic() < socket_deadline:
                    time.sleep(0.02)
                idle = inflight_when_idle(sock)
                assert idle[0] == 204, idle
                name = sorted(image["digests"])[0]
                proxy.stall(2.0, times=1, path=BLOB_PATH, method="GET")
                started = time.time()
                result = {}
                reader = threading.Thread(target=lambda: result.setdefault("digest", sha256_file(d.mountpoint / name)))
                reader.start()
                entries = None
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    status, body, _ = call(sock, "GET", "/api/v1/metrics/inflight")
                    if status == 200 and any(e["opcode"] == 15 for e in body):
                        entries = body
                        break
                    time.sleep(0.05)
                assert entries, "the stalled read never showed up as in flight"
                read = [e for e in entries if e["opcode"] == 15][0]
                assert read["unique"] > 0 and read["inode"] > 0
                assert int(started) - 1 <= read["timestamp_secs"] <= time.time() + 1
                reader.join(30)
                assert result["digest"] == image["digests"][name]
                assert call(sock, "GET", "/api/v1/metrics/inflight")[0] == 204


def test_shared_mode_failover_keeps_credentials_renewed_through_the_api(image, tmp_path):
    """Shared mode, §4.4 E then §5: an instance POSTed with credentials that
    no longer work, renewed with PUT /api/v1/config?id=/<sid>; after a crash
    failover the restored instance still uses the renewed ones (the POSTed
    config text alone would give 401s)."""
    from test_api import SnapshotterLikeDaemon
    from test_failover import Supervisor, crash_failover, send_states, wait_state
    with rh.Registry(tls=True, auth="basic") as registry:
        rh.push_image(registry, REPO, image["bootstrap"], image["blobs"])
        config = registry_config(tmp_path / "R" / "cache", registry.host, "https",
                                 ca_cert_files=[str(registry.ca_path)], retry_limit=0,
                                 auth="d3Jvbmc6Y3JlZGVudGlhbHM=")  # wrong:credentials
        config["device"]["id"] = "/42"
        supervisor = Supervisor(tmp_path / "R" / "supervisor" / "cq1fk6f5ntt0000abcde.sock")
        d = SnapshotterLikeDaemon(tmp_path / "R", None)
        successor = None
        try:
            d.wait_socket()
            wait_state(d.sock, "RUNNING")
            status, body, _ = call(d.sock, "POST", "/api/v1/mount?mountpoint=%2F42",
                                   {"fs_type": "rafs", "source": str(image["bootstrap"]), "config": json.dumps(config)})
            assert status == 204, body
            names = sorted(image["digests"])
            with pytest.raises(OSError):
                (d.mountpoint / "42" / names[0]).read_bytes()  # 401 with the POSTed credentials
            status, body, _ = call(d.sock, "PUT", "/api/v1/config?id=%2F42", {"registry_auth": registry.auth_b64})
            assert status == 204, body
            assert sha256_file(d.mountpoint / "42" / names[0]) == image["digests"][names[0]]
            send_states(d, supervisor)
            successor, _ = crash_failover(d, supervisor, lambda: SnapshotterLikeDaemon(tmp_path / "R", None))
            # Files not read before: fetched by the successor, with the renewed credentials.
            for name in names[1:]:
                assert sha256_file(d.mountpoint / "42" / name) == image["digests"][name], name
            status, conf, _ = call(successor.sock, "GET", "/api/v1/config?id=%2F42")
            assert status == 200 and conf["registry_auth"] == registry.auth_b64
            assert successor.stop() == 0
        finally:
            if successor is not None:
                successor.stop()
            d.stop()
            supervisor.close()
