"""The registry test harness, checked against the real docker-registry with
curl: every mode, every fault and every count the registry-backend tests will
rely on, so that a failing backend test points at the backend."""
import base64
import collections
import gzip
import hashlib
import http.client
import io
import json
import pathlib
import re
import subprocess
import tarfile
import tempfile
import time
import urllib.parse

import pytest

from conftest import fixture_path
from registry_harness import (MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST, MEDIA_TYPE_NYDUS_BLOB, FaultProxy,
                              MirrorProxy, Registry, TokenServer, pki, push_blob, push_image,
                              require_registry_tools)

# The harness is Python talking to docker-registry and curl: no nydusd or
# nydus-image runs here, so a sanitizer build has nothing to check.
pytestmark = pytest.mark.once

REPO = "nydus/fixture"
# RAFS v5 fixture: its blob id is the sha256 of the blob file.
V5_BOOT = fixture_path("repeatable/sha256-nocompress-repeatable")
V5_BLOB_ID = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"
V5_BLOB = fixture_path(f"repeatable/blobs/{V5_BLOB_ID}")
# RAFS v6 fixture: its blob id is NOT the sha256 of the file (it leaves out the blob.digest section).
V6_BOOT = fixture_path("bootstrap/rafs-v6-2.2.boot")
V6_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
V6_BLOB = fixture_path(f"blobs/{V6_BLOB_ID}")

# curl exit codes.
CURL_CONNECT_REFUSED = 7
CURL_PARTIAL_FILE = 18
CURL_TIMEOUT = 28
CURL_RECV_ERROR = 56
CURL_BAD_CA = 60


@pytest.fixture(autouse=True)
def _needs_mounts():
    """Replaces conftest's root-and-FUSE check: these tests mount nothing, they
    need docker-registry and its helpers instead."""
    require_registry_tools()


Curl = collections.namedtuple("Curl", "rc status body headers stderr")


def curl(*args, max_time=20):
    """curl with `args`: exit code, HTTP status (0 when none), body, response headers (lower-cased names; the
    last response's), stderr."""
    with tempfile.TemporaryDirectory() as directory:
        body_path, headers_path = pathlib.Path(directory, "body"), pathlib.Path(directory, "headers")
        done = subprocess.run(["curl", "-sS", "-m", str(max_time), "-o", body_path, "-D", headers_path,
                               "-w", "%{http_code}", *args], capture_output=True, timeout=max_time + 10)
        body = body_path.read_bytes() if body_path.exists() else b""
        raw_headers = headers_path.read_text(errors="replace") if headers_path.exists() else ""
    headers = {}
    for line in raw_headers.splitlines():
        if line.startswith("HTTP/"):
            headers = {}
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return Curl(done.returncode, int(done.stdout or 0), body, headers, done.stderr.decode(errors="replace"))


def blob_url(base, blob_id=V5_BLOB_ID, repo=REPO):
    return f"{base.url}/v2/{repo}/blobs/sha256:{blob_id}"


def ca_args():
    return ["--cacert", str(pki().ca_cert)]


def v5_data():
    return V5_BLOB.read_bytes()


@pytest.fixture(scope="module")
def plain_registry():
    require_registry_tools()
    with Registry() as registry:
        push_blob(registry, REPO, V5_BLOB)
        yield registry


@pytest.fixture(scope="module")
def tls_registry():
    require_registry_tools()
    with Registry(tls=True) as registry:
        push_blob(registry, REPO, V5_BLOB)
        yield registry


@pytest.fixture(scope="module")
def token_registry():
    require_registry_tools()
    with TokenServer() as tokens, Registry(tls=True, auth="token", token_server=tokens) as registry:
        push_blob(registry, REPO, V5_BLOB)
        yield registry


@pytest.fixture
def proxy(plain_registry):
    with FaultProxy(plain_registry.url) as fault_proxy:
        yield fault_proxy


# --- PKI and the registry modes


def test_pki_certificates_chain_to_the_test_ca():
    files = pki()
    verified = subprocess.run(["openssl", "verify", "-CAfile", files.ca_cert, files.server_cert, files.signer_cert],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.count(": OK") == 2
    names = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", files.server_cert],
                           capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in names and "DNS:localhost" in names


def test_plain_http_push_head_and_range(plain_registry):
    data = v5_data()
    assert push_blob(plain_registry, REPO, V5_BLOB) == V5_BLOB_ID
    assert plain_registry.scheme == "http" and plain_registry.ca_path is None
    assert plain_registry.url == f"http://127.0.0.1:{plain_registry.port}"
    head = curl("-I", blob_url(plain_registry))
    assert head.status == 200
    assert int(head.headers["content-length"]) == len(data)
    assert head.headers["docker-content-digest"] == f"sha256:{V5_BLOB_ID}"
    ranged = curl("-r", "1000-4999", blob_url(plain_registry))
    assert (ranged.status, ranged.body) == (206, data[1000:5000])
    whole = curl(blob_url(plain_registry))
    assert whole.status == 200 and hashlib.sha256(whole.body).hexdigest() == V5_BLOB_ID


def test_tls_registry_is_verified_with_the_test_ca(tls_registry):
    data = v5_data()
    assert tls_registry.url.startswith("https://127.0.0.1:") and tls_registry.ca_path == pki().ca_cert
    untrusted = curl("-r", "0-99", blob_url(tls_registry))
    assert untrusted.rc == CURL_BAD_CA, untrusted
    trusted = curl(*ca_args(), "-r", "0-99", blob_url(tls_registry))
    assert (trusted.status, trusted.body) == (206, data[:100])
    by_name = curl(*ca_args(), "-r", "0-99", blob_url(tls_registry).replace("127.0.0.1", "localhost"))
    assert (by_name.status, by_name.body) == (206, data[:100])


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
def test_htpasswd_basic_auth(tls):
    data = v5_data()
    with Registry(tls=tls, auth="basic") as registry:
        assert push_blob(registry, REPO, V5_BLOB) == V5_BLOB_ID
        url, tls_args = blob_url(registry), ca_args() if tls else []
        anonymous = curl(*tls_args, url)
        assert anonymous.status == 401
        assert anonymous.headers["www-authenticate"] == 'Basic realm="nydus-test-registry"'
        wrong = curl(*tls_args, "-u", f"{registry.username}:not-{registry.password}", url)
        assert wrong.status == 401
        right = curl(*tls_args, "-u", f"{registry.username}:{registry.password}", "-r", "10-19", url)
        assert (right.status, right.body) == (206, data[10:20])
        assert base64.b64decode(registry.auth_b64).decode() == f"{registry.username}:{registry.password}"
        by_auth_field = curl(*tls_args, "-H", f"Authorization: Basic {registry.auth_b64}", "-r", "10-19", url)
        assert (by_auth_field.status, by_auth_field.body) == (206, data[10:20])


# --- Token auth


def bearer_challenge(headers):
    scheme, _, params = headers["www-authenticate"].partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


@pytest.mark.parametrize("key_form", ["x5c", "kid"])
def test_token_flow_by_hand(key_form):
    import jwt
    data = v5_data()
    with TokenServer(key_form=key_form) as tokens, \
            Registry(tls=True, auth="token", token_server=tokens) as registry:
        push_blob(registry, REPO, V5_BLOB)
        url, user, password = blob_url(registry), registry.username, registry.password
        scope = f"repository:{REPO}:pull"
        before = len(tokens.requests)

        challenge = curl(*ca_args(), url)
        assert challenge.status == 401
        assert bearer_challenge(challenge.headers) == {"realm": tokens.realm, "service": tokens.service,
                                                       "scope": scope}

        query = urllib.parse.urlencode({"service": tokens.service, "scope": scope})
        got = curl(*ca_args(), "-u", f"{user}:{password}", f"{tokens.realm}?{query}")
        assert got.status == 200
        answer = json.loads(got.body)
        assert answer["token"] == answer["access_token"] and answer["expires_in"] == tokens.lifetime
        header = jwt.get_unverified_header(answer["token"])
        assert header["alg"] == "RS256" and (key_form in header) and len(header) == 3
        claims = jwt.decode(answer["token"], options={"verify_signature": False})
        assert claims["access"] == [{"type": "repository", "name": REPO, "actions": ["pull"]}]
        assert (claims["iss"], claims["aud"], claims["sub"]) == (tokens.issuer, tokens.service, user)
        used = curl(*ca_args(), "-H", f"Authorization: Bearer {answer['token']}", "-r", "0-99", url)
        assert (used.status, used.body) == (206, data[:100])

        form = ["-d", "grant_type=password", "-d", f"username={user}", "-d", f"password={password}",
                "-d", f"service={tokens.service}", "-d", f"scope={scope}", "-d", "client_id=nydus-test",
                "-d", "access_type=offline"]
        posted = curl(*ca_args(), *form, tokens.realm)
        assert posted.status == 200
        oauth = json.loads(posted.body)
        assert oauth["expires_in"] == tokens.lifetime and oauth["scope"] == scope and oauth["refresh_token"]
        used = curl(*ca_args(), "-H", f"Authorization: Bearer {oauth['access_token']}", "-r", "100-199", url)
        assert (used.status, used.body) == (206, data[100:200])

        refreshed = curl(*ca_args(), "-d", "grant_type=refresh_token", "-d", f"refresh_token={oauth['refresh_token']}",
                         "-d", f"service={tokens.service}", "-d", f"scope={scope}", "-d", "client_id=nydus-test",
                         tokens.realm)
        assert refreshed.status == 200
        used = curl(*ca_args(), "-H", f"Authorization: Bearer {json.loads(refreshed.body)['access_token']}",
                    "-r", "0-9", url)
        assert (used.status, used.body) == (206, data[:10])

        assert curl(*ca_args(), "-u", f"{user}:wrong", f"{tokens.realm}?{query}").status == 401
        wrong_form = [f"password={password}-wrong" if item.startswith("password=") else item for item in form]
        assert curl(*ca_args(), *wrong_form, tokens.realm).status == 401

        anonymous = curl(*ca_args(), f"{tokens.realm}?{query}")
        assert anonymous.status == 200
        assert jwt.decode(json.loads(anonymous.body)["token"], options={"verify_signature": False})["access"] == [
            {"type": "repository", "name": REPO, "actions": []}]
        refused = curl(*ca_args(), "-H", f"Authorization: Bearer {json.loads(anonymous.body)['token']}", url)
        assert refused.status == 401 and "insufficient_scope" in refused.headers["www-authenticate"]

        made = tokens.requests[before:]
        assert [(r.method, r.grant_type, r.status) for r in made] == [
            ("GET", "", 200), ("POST", "password", 200), ("POST", "refresh_token", 200), ("GET", "", 401),
            ("POST", "password", 401), ("GET", "", 200)]
        assert made[0].username == user and made[0].scopes == [scope] and made[1].client_id == "nydus-test"


def test_registry_refuses_tokens_it_must_not_trust(token_registry):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    tokens, url = token_registry.token_server, blob_url(token_registry)
    access = [{"type": "repository", "name": REPO, "actions": ["pull"]}]

    def status_with(token):
        return curl(*ca_args(), "-H", f"Authorization: Bearer {token}", "-r", "0-0", url).status

    good = tokens.issue("nydus", tokens.service, access)
    assert status_with(good) == 206
    assert status_with(tokens.issue("nydus", "another-service", access)) == 401
    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert status_with(jwt.encode(claims, foreign_key, algorithm="RS256", headers={"x5c": header["x5c"]})) == 401
    with tempfile.TemporaryDirectory() as directory:
        key_path, cert_path = pathlib.Path(directory, "key.pem"), pathlib.Path(directory, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rogue", "-days", "1",
                        "-keyout", key_path, "-out", cert_path], check=True, capture_output=True)
        rogue_der = subprocess.run(["openssl", "x509", "-in", cert_path, "-outform", "DER"], check=True,
                                   capture_output=True).stdout
        rogue_chain = {"x5c": [base64.b64encode(rogue_der).decode()]}
        assert status_with(jwt.encode(claims, key_path.read_bytes(), algorithm="RS256", headers=rogue_chain)) == 401
    head, _, signature = good.rpartition(".")
    tampered_claims = base64.urlsafe_b64encode(json.dumps(dict(claims, sub="mallory")).encode()).rstrip(b"=")
    assert status_with(f"{head.split('.')[0]}.{tampered_claims.decode()}.{signature}") == 401


def test_token_expires_after_its_lifetime(token_registry):
    tokens, url = token_registry.token_server, blob_url(token_registry)
    query = urllib.parse.urlencode({"service": tokens.service, "scope": f"repository:{REPO}:pull"})
    tokens.lifetime = 2
    try:
        asked = time.monotonic()
        got = curl(*ca_args(), "-u", f"{tokens.username}:{tokens.password}", f"{tokens.realm}?{query}")
    finally:
        tokens.lifetime = 300
    answer = json.loads(got.body)
    assert answer["expires_in"] == 2
    bearer = ["-H", f"Authorization: Bearer {answer['token']}", "-r", "0-9"]
    assert curl(*ca_args(), *bearer, url).status == 206
    time.sleep(max(0.0, asked + 1.5 - time.monotonic()))
    assert curl(*ca_args(), *bearer, url).status == 206, "a token must live at least its expires_in"
    time.sleep(max(0.0, asked + 3.5 - time.monotonic()))
    expired = curl(*ca_args(), *bearer, url)
    assert expired.status == 401 and expired.headers["www-authenticate"].startswith("Bearer ")
    assert "token not to be used after" in token_registry.log()


def test_token_auth_over_plain_http_with_a_get_only_token_service():
    data = v5_data()
    with TokenServer(tls=False, accept_post=False) as tokens, \
            Registry(auth="token", token_server=tokens) as registry:
        push_blob(registry, REPO, V5_BLOB)
        assert tokens.realm.startswith("http://")
        scope = f"repository:{REPO}:pull"
        posted = curl("-d", "grant_type=password", "-d", f"username={tokens.username}",
                      "-d", f"password={tokens.password}", "-d", f"service={tokens.service}", "-d", f"scope={scope}",
                      tokens.realm)
        assert posted.status == 405
        query = urllib.parse.urlencode({"service": tokens.service, "scope": scope})
        got = curl("-u", f"{tokens.username}:{tokens.password}", f"{tokens.realm}?{query}")
        token = json.loads(got.body)["token"]
        used = curl("-H", f"Authorization: Bearer {token}", "-r", "5-9", blob_url(registry))
        assert (used.status, used.body) == (206, data[5:10])
        assert tokens.count("POST") == 1 and tokens.count("GET") >= 2


# --- Registry lifecycle and request counting


def test_registry_kill_and_restart_keep_port_and_content():
    data = v5_data()
    with Registry() as registry, FaultProxy(registry.url) as front:
        push_blob(registry, REPO, V5_BLOB)
        port = registry.port
        registry.kill()
        assert not registry.running
        assert curl(blob_url(registry)).rc == CURL_CONNECT_REFUSED
        assert curl(blob_url(front)).status == 502, "a proxy in front answers 502 while the registry is gone"
        registry.start()
        assert registry.port == port
        revived = curl("-r", "0-99", blob_url(registry))
        assert (revived.status, revived.body) == (206, data[:100])
        registry.restart()
        assert registry.port == port and curl("-r", "0-99", blob_url(front)).body == data[:100]


def test_registry_access_log_counts_each_request_at_once(plain_registry):
    mark = plain_registry.mark()
    assert plain_registry.count_requests(since=mark) == 0
    # Back-to-back requests on one keep-alive connection, small and large:
    # without the log sync in access_log() about one count in seven came out short.
    connection = http.client.HTTPConnection("127.0.0.1", plain_registry.port, timeout=10)
    try:
        for done in range(1, 41):
            connection.request("GET", f"/v2/{REPO}/blobs/sha256:{V5_BLOB_ID}",
                               headers={"Range": "bytes=0-9" if done % 2 else "bytes=0-999999"})
            response = connection.getresponse()
            response.read()
            assert response.status == 206
            assert plain_registry.blob_gets(V5_BLOB_ID, since=mark) == done
    finally:
        connection.close()
    assert curl("-I", blob_url(plain_registry)).status == 200
    assert curl(blob_url(plain_registry, "0" * 64)).status == 404
    assert plain_registry.count_requests("HEAD", since=mark) == 1
    assert plain_registry.blob_gets(V5_BLOB_ID, since=mark) == 40
    assert plain_registry.blob_gets(since=mark) == 41
    assert [e.status for e in plain_registry.access_log(since=mark)] == [206] * 40 + [200, 404]
    assert plain_registry.count_requests(since=plain_registry.mark()) == 0


# --- Pushing images


def test_push_image_like_nydusify(plain_registry):
    v6_data = V6_BLOB.read_bytes()
    assert hashlib.sha256(v6_data).hexdigest() != V6_BLOB_ID
    image = push_image(plain_registry, "nydus/v6", V6_BOOT, [V6_BLOB], tag="v6")
    assert image.blob_ids == (V6_BLOB_ID,)
    fetched = curl("-H", f"Accept: {MEDIA_TYPE_MANIFEST}", f"{plain_registry.url}/v2/nydus/v6/manifests/v6")
    assert fetched.status == 200 and fetched.headers["docker-content-digest"] == image.manifest_digest
    manifest = json.loads(fetched.body)
    blob_layer, bootstrap_layer = manifest["layers"]
    assert blob_layer == {"mediaType": MEDIA_TYPE_NYDUS_BLOB, "digest": f"sha256:{V6_BLOB_ID}",
                          "size": len(v6_data), "annotations": {"containerd.io/snapshot/nydus-blob": "true"}}
    assert bootstrap_layer["mediaType"] == MEDIA_TYPE_LAYER_GZIP
    assert bootstrap_layer["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
    assert bootstrap_layer["annotations"]["containerd.io/snapshot/nydus-rafs-version"] == "6"
    assert manifest["config"]["digest"] == image.config_digest

    blob = curl(blob_url(plain_registry, V6_BLOB_ID, "nydus/v6"))
    assert (blob.status, blob.body) == (200, v6_data)
    ranged = curl("-r", "4096-8191", blob_url(plain_registry, V6_BLOB_ID, "nydus/v6"))
    assert (ranged.status, ranged.body) == (206, v6_data[4096:8192])
    layer = curl(f"{plain_registry.url}/v2/nydus/v6/blobs/{bootstrap_layer['digest']}")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.body))) as tar:
        assert tar.extractfile("image/image.boot").read() == V6_BOOT.read_bytes()

    v5 = push_image(plain_registry, "nydus/v5", V5_BOOT, [V5_BLOB])
    v5_manifest = json.loads(curl("-H", f"Accept: {MEDIA_TYPE_MANIFEST}",
                                  f"{plain_registry.url}/v2/nydus/v5/manifests/latest").body)
    assert v5.blob_ids == (V5_BLOB_ID,)
    assert v5_manifest["layers"][-1]["annotations"]["containerd.io/snapshot/nydus-rafs-version"] == "5"


# --- FaultProxy


def test_fault_proxy_forwards_and_records(proxy, plain_registry, tls_registry):
    data = v5_data()
    mark = plain_registry.mark()
    got = curl("-r", "100-1099", "-H", "Authorization: Bearer opaque", blob_url(proxy))
    assert (got.status, got.body) == (206, data[100:1100])
    assert got.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    head = curl("-I", blob_url(proxy))
    assert head.status == 200 and int(head.headers["content-length"]) == len(data)
    path = f"/v2/{REPO}/blobs/sha256:{V5_BLOB_ID}"
    assert proxy.counts() == {("GET", path): 1, ("HEAD", path): 1}
    recorded = proxy.requests[0]
    assert recorded.headers["range"] == "bytes=100-1099" and recorded.headers["authorization"] == "Bearer opaque"
    assert (recorded.status, recorded.bytes_sent, recorded.fault) == (206, 1000, None)
    assert proxy.bytes_sent() == 1000
    assert plain_registry.blob_gets(V5_BLOB_ID, since=mark) == 1
    with FaultProxy(tls_registry.url) as tls_front:
        through = curl("-r", "0-99", blob_url(tls_front))
        assert (through.status, through.body) == (206, data[:100])


def test_fault_status_for_the_next_requests(proxy, plain_registry):
    mark = plain_registry.mark()
    fault = proxy.fail(times=2, status=503, path=r"/blobs/")
    assert curl(f"{proxy.url}/v2/").status == 200, "paths that do not match pass"
    for _ in range(2):
        failed = curl("-r", "0-9", blob_url(proxy))
        assert failed.status == 503 and json.loads(failed.body)["errors"]
    assert curl("-r", "0-9", blob_url(proxy)).status == 206
    assert fault.hits == 2 and plain_registry.blob_gets(since=mark) == 1
    proxy.fail(times=None, status=500, method="GET", headers={"X-Dragonfly-Error-Type": "proxy"})
    for _ in range(3):
        failed = curl(blob_url(proxy))
        assert failed.status == 500 and failed.headers["x-dragonfly-error-type"] == "proxy"
    proxy.clear_faults()
    assert curl("-r", "0-9", blob_url(proxy)).status == 206


def test_fault_reset_before_headers(proxy, plain_registry):
    mark = plain_registry.mark()
    proxy.reset()
    reset = curl("-r", "0-9", blob_url(proxy))
    assert (reset.rc, reset.status, reset.body) == (CURL_RECV_ERROR, 0, b"")
    assert "reset by peer" in reset.stderr
    assert plain_registry.blob_gets(since=mark) == 0, "nothing reached the registry"
    assert curl("-r", "0-9", blob_url(proxy)).status == 206


def test_fault_reset_after_headers_and_mid_body(proxy):
    proxy.reset(after_bytes=0)
    after_headers = curl("-r", "0-99999", blob_url(proxy))
    assert after_headers.rc == CURL_RECV_ERROR and after_headers.status == 206 and after_headers.body == b""
    proxy.reset(after_bytes=200000)
    mid_body = curl("-r", "0-999999", blob_url(proxy))
    assert mid_body.rc == CURL_RECV_ERROR and "reset by peer" in mid_body.stderr
    assert len(mid_body.body) <= 200000 and mid_body.body == v5_data()[:len(mid_body.body)]
    assert [r.fault for r in proxy.requests] == ["reset", "reset"]


def test_fault_stalls(proxy):
    data = v5_data()
    proxy.stall(1.0)
    started = time.monotonic()
    slow = curl("-r", "0-9", blob_url(proxy))
    assert slow.status == 206 and time.monotonic() - started >= 1.0
    proxy.stall(30.0)
    timed_out = curl("-r", "0-9", blob_url(proxy), max_time=1)
    assert (timed_out.rc, timed_out.status) == (CURL_TIMEOUT, 0)
    proxy.stall(30.0, after_bytes=1000)
    mid_body = curl("-r", "0-99999", blob_url(proxy), max_time=1)
    assert (mid_body.rc, mid_body.status, mid_body.body) == (CURL_TIMEOUT, 206, data[:1000])
    assert curl("-r", "0-9", blob_url(proxy)).status == 206


def test_fault_truncate(proxy):
    truncated = curl("-r", "0-99999", blob_url(proxy))
    assert truncated.status == 206
    proxy.truncate(after_bytes=1000)
    truncated = curl("-r", "0-99999", blob_url(proxy))
    assert (truncated.rc, truncated.status, truncated.body) == (CURL_PARTIAL_FILE, 206, v5_data()[:1000])
    assert truncated.headers["content-length"] == "100000"


def test_fault_corrupt(proxy):
    data = v5_data()
    fault = proxy.corrupt(offsets=(0, 7, 70000))
    corrupted = curl("-r", "1000-100999", blob_url(proxy))
    assert corrupted.status == 206 and len(corrupted.body) == 100000
    wanted = data[1000:101000]
    assert [i for i in range(len(wanted)) if corrupted.body[i] != wanted[i]] == [0, 7, 70000]
    assert all(corrupted.body[i] == wanted[i] ^ 0xFF for i in (0, 7, 70000))
    assert fault.hits == 1 and curl("-r", "1000-100999", blob_url(proxy)).body == wanted


def test_fault_proxy_down_and_up_on_the_same_port(proxy):
    port = proxy.port
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        kept.request("GET", urllib.parse.urlsplit(blob_url(proxy)).path, headers={"Range": "bytes=0-9"})
        first = kept.getresponse()
        assert (first.status, first.read()) == (206, v5_data()[:10])
        proxy.down()
        with pytest.raises((OSError, http.client.HTTPException)):  # open connections are dropped too
            kept.request("GET", urllib.parse.urlsplit(blob_url(proxy)).path)
            kept.getresponse().read()
    finally:
        kept.close()
    assert curl("-r", "0-9", blob_url(proxy)).rc == CURL_CONNECT_REFUSED
    proxy.up()
    assert proxy.port == port
    assert curl("-r", "0-9", blob_url(proxy)).status == 206


# --- MirrorProxy


def test_mirror_routes_by_dragonfly_header(tls_registry):
    data = v5_data()
    with MirrorProxy(health_port=0) as mirror:
        mark = tls_registry.mark()
        header = f"X-Dragonfly-Registry: {tls_registry.url}"
        got = curl("-H", header, "-r", "0-99", blob_url(mirror))
        assert (got.status, got.body) == (206, data[:100])
        recorded = mirror.requests[-1]
        assert recorded.headers["x-dragonfly-registry"] == tls_registry.url
        assert recorded.headers["range"] == "bytes=0-99" and recorded.port == mirror.port
        assert tls_registry.blob_gets(V5_BLOB_ID, since=mark) == 1

        by_ns = curl("-r", "0-9", blob_url(mirror) + f"?ns={tls_registry.host}")
        assert (by_ns.status, by_ns.body) == (206, data[:10])
        unrouted = curl(blob_url(mirror))
        assert unrouted.status == 502 and unrouted.headers["x-dragonfly-error-type"] == "proxy"

        assert mirror.ping_url == f"http://127.0.0.1:{mirror.health_port}/server/ping"
        assert curl(mirror.ping_url).status == 200
        assert curl(f"{mirror.url}/server/ping").status == 200
        assert curl(f"http://127.0.0.1:{mirror.health_port}/v2/").status == 404
        assert mirror.count("GET", r"^/server/ping$") == 2

        ports = (mirror.port, mirror.health_port)
        mirror.down()
        assert curl("-H", header, blob_url(mirror)).rc == CURL_CONNECT_REFUSED
        assert curl(mirror.ping_url).rc == CURL_CONNECT_REFUSED
        mirror.up()
        assert (mirror.port, mirror.health_port) == ports
        assert curl(mirror.ping_url).status == 200
        assert curl("-H", header, "-r", "0-9", blob_url(mirror)).status == 206


def test_mirror_forwards_auth_and_range_and_rewrites_host(proxy):
    with MirrorProxy(default_registry=proxy.url) as mirror:
        got = curl("-H", f"X-Dragonfly-Registry: {proxy.url}", "-H", "Authorization: Bearer opaque",
                   "-r", "0-9", blob_url(mirror))
        assert (got.status, got.body) == (206, v5_data()[:10])
        arrived = proxy.requests[-1].headers
        assert arrived["host"] == proxy.host and arrived["authorization"] == "Bearer opaque"
        assert arrived["range"] == "bytes=0-9" and arrived["x-dragonfly-registry"] is None
        assert curl("-r", "0-9", blob_url(mirror)).status == 206, "without the header the default registry is used"
        mirror.fail(status=500, path=r"/blobs/")
        assert curl(blob_url(mirror)).status == 500 and proxy.count("GET", r"/blobs/") == 2
