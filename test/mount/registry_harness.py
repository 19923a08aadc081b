"""A real registry and the servers around it, for the registry-backend tests.

nydusd's registry backend talks to an OCI distribution registry, to a token
service, over networks that fail, and through a Dragonfly mirror. This module
runs the real registry (Debian's docker-registry 2.8, the Distribution
reference implementation) and in-process doubles of the rest, all on
127.0.0.1, so that a test can cause each failure on purpose and count what
went over the wire:

  pki()          a test CA and certificates, made once per test session
  Registry       docker-registry over http or https, with no auth, htpasswd
                 (Basic) or token auth; stop, kill and restart on the same
                 port; request counts from its access log
  TokenServer    the Docker token protocol (GET with Basic auth, OAuth2 POST)
                 issuing RS256 JWTs that docker-registry accepts
  push_blob, place_blob, push_image
                 content in, the way nydusify pushes it
  FaultProxy     a reverse proxy whose faults (5xx, RST, stalls, truncation,
                 flipped bytes, refused connections) tests switch at run time
  MirrorProxy    a Go dfdaemon stand-in for the legacy `mirrors` config

What docker-registry 2.8.2 was checked to do (test_registry_harness.py):
  - htpasswd Basic auth and token auth both work over plain HTTP as well as
    over TLS; the registry does not insist on TLS for either.
  - It takes a JWT signed by a key named either way: `x5c` (a chain whose root
    is in `rootcertbundle`) or `kid` (the libtrust fingerprint of a key whose
    certificate is itself in `rootcertbundle`). It refuses a token from any
    other key, for another audience or past its expiry.
  - It checks `exp` with 60 s of leeway (REGISTRY_TOKEN_LEEWAY), so the token
    service moves `exp` back by that much: a token then really stops working
    after `lifetime` seconds, as its `expires_in` says.
  - It writes a request's access-log line only after answering it (large
    bodies go out by sendfile before the handler returns): here the line
    came up to 7 ms (p99 4 ms) after the client had the whole response.
    Registry.access_log() therefore makes a request of its own, waits for
    its line, then for the log to stay unchanged for 50 ms. For exact counts
    put a FaultProxy in front: it records a request as it arrives.

Everything a test starts must be stopped by it; use the classes as context
managers. Processes still running when Python exits are killed.
"""
import atexit
import base64
import contextlib
import dataclasses
import datetime
import gzip
import hashlib
import http.client
import http.server
import io
import ipaddress
import json
import math
import os
import pathlib
import re
import shutil
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import uuid

import pytest

try:
    import jwt
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    _IMPORT_ERROR = None
except ImportError as error:  # reported by require_registry_tools(), so that collection never breaks
    _IMPORT_ERROR = error

# docker-registry adds this much to `exp` before it calls a token expired
# (registry/auth/token/token.go, Leeway).
REGISTRY_TOKEN_LEEWAY = 60

DEFAULT_USERS = {"nydus": "p2p-secret"}

# Media types and annotations as nydusify writes them.
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
BOOTSTRAP_NAME_IN_LAYER = "image/image.boot"

_REQUIRED_PROGRAMS = ("docker-registry", "htpasswd", "curl", "openssl")

# Headers that belong to one connection, never forwarded by a proxy
# (RFC 9110 section 7.6.1), plus Expect: the proxy has read the body already.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                         "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "expect"})

_UPSTREAM_TIMEOUT = 30
_CHUNK = 64 * 1024


def require_registry_tools():
    """Skips the calling test on a developer machine that lacks docker-registry
    or its helpers; in CI (CI set) a missing tool is a failure, never a skip."""
    missing = [name for name in _REQUIRED_PROGRAMS if shutil.which(name) is None]
    if _IMPORT_ERROR is not None:
        missing.append(f"python3 module ({_IMPORT_ERROR})")
    if missing:
        message = "registry tests need " + ", ".join(missing) + " (test/install-deps.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# ---------------------------------------------------------------------------
# Test PKI


@dataclasses.dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost/::1 issued
    by it, and a token-signing certificate issued by it."""
    directory: pathlib.Path
    ca_cert: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    signer_cert: pathlib.Path
    signer_key: pathlib.Path


_PKI = None
_PKI_LOCK = threading.Lock()


def pki():
    """The session's test PKI, made on first use and deleted when Python exits."""
    global _PKI
    with _PKI_LOCK:
        if _PKI is None:
            directory = pathlib.Path(tempfile.mkdtemp(prefix="nydus-test-pki-"))
            atexit.register(shutil.rmtree, directory, True)
            _PKI = _make_pki(directory)
        return _PKI


def _make_pki(directory):
    ca_key = _new_rsa_key()
    ca_cert = _certificate("nydus-p2p test CA", ca_key, ca_key, None, is_ca=True)
    server_key = _new_rsa_key()
    server_cert = _certificate("localhost", server_key, ca_key, ca_cert, server_names=("localhost",),
                               server_ips=("127.0.0.1", "::1"))
    signer_key = _new_rsa_key()
    signer_cert = _certificate("nydus-p2p test token signer", signer_key, ca_key, ca_cert)
    files = {}
    for name, item in (("ca.crt", ca_cert), ("server.crt", server_cert), ("signer.crt", signer_cert)):
        files[name] = directory / name
        files[name].write_bytes(item.public_bytes(serialization.Encoding.PEM))
    for name, key in (("server.key", server_key), ("signer.key", signer_key)):
        files[name] = directory / name
        files[name].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                                  serialization.NoEncryption()))
    return Pki(directory, files["ca.crt"], files["server.crt"], files["server.key"], files["signer.crt"],
               files["signer.key"])


def _new_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(common_name, key, issuer_key, issuer_cert, is_ca=False, server_names=(), server_ips=()):
    """A certificate for `key`; self-signed when issuer_cert is None."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not is_ca, content_commitment=False,
                                            key_encipherment=bool(server_names), data_encipherment=False,
                                            key_agreement=False, key_cert_sign=is_ca, crl_sign=is_ca,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False)
    if server_names or server_ips:
        names = [x509.DNSName(n) for n in server_names] + [x509.IPAddress(ipaddress.ip_address(a))
                                                           for a in server_ips]
        builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def client_ssl_context():
    """An ssl context that trusts the test CA (and nothing else)."""
    return ssl.create_default_context(cafile=str(pki().ca_cert))


def _server_ssl_context():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki().server_cert), str(pki().server_key))
    return context


def libtrust_key_id(public_key):
    """The key id docker-registry looks a JWT `kid` up by: libtrust's
    fingerprint, the first 240 bits of sha256(DER SubjectPublicKeyInfo) in
    base32, in colon-separated groups of four."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i:i + 4] for i in range(0, len(text), 4))


# ---------------------------------------------------------------------------
# Small HTTP servers that can be closed and reopened on the same port


class _Listener(http.server.ThreadingHTTPServer):
    """One listening socket on 127.0.0.1 that tracks its open connections, so
    that closing it looks like the server process going away."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port, handler_class, owner, ssl_context=None, role="main"):
        self.owner = owner
        self.role = role
        self._connections = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), handler_class)
        if ssl_context is not None:
            # The handshake runs in the handler thread (see _Handler.setup), so
            # one silent client cannot block accept().
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def server_bind(self):
        # HTTPServer.server_bind resolves the host name, which can be slow; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def forget(self, request):
        with self._connections_lock:
            self._connections.discard(request)

    def handle_error(self, request, client_address):
        # Clients that hang up mid-response (timeouts, killed daemons, faults
        # on purpose) are normal here; anything else is a harness bug.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close(self):
        """Stops accepting (connections are refused from now on) and drops the open connections."""
        self.shutdown()
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)

    def log_message(self, format, *args):
        """Silenced: the owners record what tests need."""

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _BadRequest("chunked request bodies are not supported by the test servers")
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status, body=b"", headers=()):
        """A complete response; returns the number of body bytes sent."""
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            return len(body)
        return 0

    def reply_json(self, status, document, headers=()):
        return self.reply(status, json.dumps(document).encode(), [("Content-Type", "application/json")] +
                          list(headers))

    def abort_connection(self):
        """Aborts the TCP connection with RST (SO_LINGER 0, then close), as a
        crashed peer or a middlebox does."""
        self.close_connection = True
        self.server.forget(self.connection)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # detach(): the handler's file objects keep the socket object open, so
        # only closing the descriptor itself sends the RST now.
        os.close(self.connection.detach())


class _BadRequest(Exception):
    pass


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------
# Token service


@dataclasses.dataclass
class TokenRequest:
    """One request to the token service."""
    method: str
    grant_type: str  # "password" or "refresh_token" for POST; "" for GET
    username: str  # "" when anonymous
    service: str
    scopes: list
    client_id: str
    status: int = 0


class TokenServer:
    """The Docker token protocol (distribution's docs/spec/auth/token.md and
    oauth.md), in process:

      GET  <realm>?service=..&scope=..[&offline_token=true&client_id=..]
           with optional Basic auth -> {"token", "access_token", "expires_in", "issued_at"}
      POST <realm> form grant_type=password (username, password) or
           grant_type=refresh_token (refresh_token), with service, scope,
           client_id[, access_type=offline] -> {"access_token", "expires_in", ...}

    Known users get every action they ask for; a request without credentials
    gets a token with no access (as Docker Hub does for a private repository),
    or pull access when anonymous_pull is set; wrong credentials get 401.

    key_form picks how the JWT names its signing key: "x5c" carries the signer
    certificate (issued by the test CA, which is the registry's
    rootcertbundle), "kid" carries the key's libtrust fingerprint (the signer
    certificate is then the rootcertbundle). `lifetime` (seconds, may be
    changed between requests) is the token's `expires_in`; the registry stops
    taking the token at least `lifetime` and less than `lifetime` + 1 seconds
    after it was issued. With accept_post=False a POST gets 405, as from
    registries without the OAuth2 endpoint, so clients must fall back to GET.
    """

    def __init__(self, users=None, lifetime=300, tls=True, key_form="x5c", service="nydus-test-registry",
                 issuer="nydus-test-token-issuer", accept_post=True, anonymous_pull=False):
        if key_form not in ("x5c", "kid"):
            raise ValueError(f"key_form must be x5c or kid, not {key_form!r}")
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.lifetime = lifetime
        self.tls = tls
        self.key_form = key_form
        self.service = service
        self.issuer = issuer
        self.accept_post = accept_post
        self.anonymous_pull = anonymous_pull
        self._requests = []
        self._refresh_tokens = {}
        self._lock = threading.Lock()
        self._listener = None
        self.port = None

    @property
    def realm(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/token"

    @property
    def rootcertbundle(self):
        """The `auth.token.rootcertbundle` a registry needs to trust these tokens."""
        return pki().ca_cert if self.key_form == "x5c" else pki().signer_cert

    @property
    def username(self):
        return next(iter(self.users), None)

    @property
    def password(self):
        return self.users.get(self.username)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def count(self, method=None):
        """Requests so far, of one method ("GET" or "POST") or all."""
        return sum(1 for r in self.requests if method is None or r.method == method)

    def start(self):
        self._listener = _Listener(self.port or 0, _TokenHandler, self,
                                   _server_ssl_context() if self.tls else None)
        self.port = self._listener.server_address[1]
        return self

    def stop(self):
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def issue(self, subject, audience, access):
        """A signed token for `access` ([{"type", "name", "actions"}]), as the
        registry checks it: iss, aud, exp (with the leeway taken off), nbf, signature."""
        issued = time.time()
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "exp": math.ceil(issued + self.lifetime) - REGISTRY_TOKEN_LEEWAY,
            "nbf": int(issued),
            "iat": int(issued),
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signer_key = serialization.load_pem_private_key(pki().signer_key.read_bytes(), None)
        if self.key_form == "x5c":
            signer_der = x509.load_pem_x509_certificate(pki().signer_cert.read_bytes()).public_bytes(
                serialization.Encoding.DER)
            header = {"x5c": [base64.b64encode(signer_der).decode()]}
        else:
            header = {"kid": libtrust_key_id(signer_key.public_key())}
        return jwt.encode(claims, signer_key, algorithm="RS256", headers=header)

    def _serve(self, handler):
        url = urllib.parse.urlsplit(handler.path)
        body = handler.read_body()
        if url.path != "/token":
            handler.reply_json(404, {"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]})
            return
        if handler.command == "GET":
            params = urllib.parse.parse_qs(url.query)
        else:
            params = urllib.parse.parse_qs(body.decode(errors="replace"))
        first = {name: values[0] for name, values in params.items()}
        # GET repeats `scope`; the OAuth2 form separates scopes with spaces.
        scopes = [s for value in params.get("scope", []) for s in value.split()]
        record = TokenRequest(handler.command, first.get("grant_type", ""), "", first.get("service", ""), scopes,
                              first.get("client_id", ""))
        with self._lock:
            self._requests.append(record)
        record.status = self._answer(handler, record, first)

    def _answer(self, handler, record, params):
        if handler.command == "POST" and not self.accept_post:
            handler.reply_json(405, {"error": "unsupported method"})
            return 405
        if handler.command == "GET":
            username, password = _basic_credentials(handler.headers.get("Authorization", ""))
            wants_refresh = params.get("offline_token") == "true"
        elif record.grant_type == "password":
            username, password = params.get("username"), params.get("password")
            wants_refresh = params.get("access_type") == "offline"
        elif record.grant_type == "refresh_token":
            with self._lock:
                username = self._refresh_tokens.get(params.get("refresh_token"))
            if username is None:
                handler.reply_json(401, {"error": "invalid_grant"})
                return 401
            password, wants_refresh = self.users.get(username), True
        else:
            handler.reply_json(400, {"error": "unsupported_grant_type"})
            return 400
        if username is not None and (username not in self.users or self.users[username] != password):
            handler.reply_json(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]},
                               [("WWW-Authenticate", 'Basic realm="nydus-test-token"')])
            return 401
        record.username = username or ""
        token = self.issue(record.username, record.service, self._grant(username, record.scopes))
        answer = {"access_token": token, "expires_in": self.lifetime,
                  "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        if handler.command == "GET":
            answer["token"] = token
        else:
            answer.update(token_type="Bearer", scope=" ".join(record.scopes))
        if wants_refresh and username is not None:
            refresh = params.get("refresh_token") or uuid.uuid4().hex
            with self._lock:
                self._refresh_tokens[refresh] = username
            answer["refresh_token"] = refresh
        handler.reply_json(200, answer)
        return 200

    def _grant(self, username, scopes):
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if username is not None:
                granted = actions.split(",")
            elif self.anonymous_pull:
                granted = [a for a in actions.split(",") if a == "pull"]
            else:
                granted = []
            access.append({"type": kind, "name": name, "actions": granted})
        return access


class _TokenHandler(_Handler):
    def do_GET(self):
        self.server.owner._serve(self)

    do_POST = do_GET


def _basic_credentials(authorization):
    """(username, password) from a Basic Authorization header, or (None, None)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        username, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except ValueError:
        return "", ""
    return username, password


# ---------------------------------------------------------------------------
# The registry


@dataclasses.dataclass(frozen=True)
class AccessLogEntry:
    """One line of docker-registry's access log."""
    method: str
    path: str
    status: int
    size: int


# Combined log format, as docker-registry writes it on stdout.
_ACCESS_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)')
# Query parameter of the harness's own log-sync requests, which access_log() leaves out.
_SYNC_PARAMETER = "nydus-harness-log-sync"

_LIVE_PROCESSES = set()


@atexit.register
def _kill_leftover_processes():
    for process in list(_LIVE_PROCESSES):
        with contextlib.suppress(OSError):
            process.kill()


class Registry:
    """docker-registry serving from a temporary filesystem store.

    tls: https with the test CA's server certificate (pki().ca_cert verifies it).
    auth: None, "basic" (htpasswd, bcrypt, users {name: password}) or "token"
    (token_server's realm, service, issuer and rootcertbundle; its users).

    The port is fixed at construction, so stop()/kill() then start() (or
    restart()) brings the same registry, with the same content, back on the
    same address. Output from every run goes to log_path.
    """

    def __init__(self, tls=False, auth=None, users=None, token_server=None, port=None):
        if auth not in (None, "basic", "token"):
            raise ValueError(f"auth must be None, 'basic' or 'token', not {auth!r}")
        if (auth == "token") != (token_server is not None):
            raise ValueError("auth='token' needs a token_server, and only it does")
        self.tls = tls
        self.auth = auth
        self.token_server = token_server
        self._users = dict(DEFAULT_USERS if users is None else users) if auth == "basic" else {}
        self.port = port or _free_port()
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="nydus-test-registry-"))
        self.storage_dir = self.directory / "storage"
        self.log_path = self.directory / "registry.log"
        self.config_path = self.directory / "config.yml"
        self._process = None
        if auth == "basic":
            self._write_htpasswd()

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def host(self):
        """host:port, the nydusd registry backend's `host`."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"{self.scheme}://{self.host}"

    @property
    def ca_path(self):
        """The CA file that verifies this registry, or None over plain http."""
        return pki().ca_cert if self.tls else None

    @property
    def users(self):
        return self.token_server.users if self.auth == "token" else self._users

    @property
    def username(self):
        return next(iter(self.users), None)

    @property
    def password(self):
        return self.users.get(self.username)

    @property
    def auth_b64(self):
        """base64("user:password"), the nydusd registry backend's `auth`, or None without auth."""
        if self.username is None:
            return None
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    @property
    def running(self):
        return self._process is not None and self._process.poll() is None

    def _write_htpasswd(self):
        lines = [subprocess.run(["htpasswd", "-Bbn", name, password], check=True, capture_output=True,
                                text=True).stdout.strip() for name, password in self._users.items()]
        (self.directory / "htpasswd").write_text("\n".join(lines) + "\n")

    def _write_config(self):
        """Written at each start, so that it names the token server's port as it is now."""
        config = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "nydus-p2p-test-secret"},
        }
        if self.tls:
            config["http"]["tls"] = {"certificate": str(pki().server_cert), "key": str(pki().server_key)}
        if self.auth == "basic":
            config["auth"] = {"htpasswd": {"realm": "nydus-test-registry", "path": str(self.directory / "htpasswd")}}
        elif self.auth == "token":
            if self.token_server.port is None:
                raise AssertionError("start the TokenServer before the Registry that uses it")
            config["auth"] = {"token": {"realm": self.token_server.realm, "service": self.token_server.service,
                                        "issuer": self.token_server.issuer,
                                        "rootcertbundle": str(self.token_server.rootcertbundle)}}
        # YAML is a superset of JSON, so no YAML writer is needed.
        self.config_path.write_text(json.dumps(config, indent=1))

    def start(self, timeout=15):
        """Starts docker-registry and waits until it answers /v2/."""
        if self.running:
            return self
        self._write_config()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(["docker-registry", "serve", str(self.config_path)],
                                             stdout=log, stderr=subprocess.STDOUT)
        _LIVE_PROCESSES.add(self._process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AssertionError(f"docker-registry exited with {self._process.returncode}:\n"
                                     f"{self.log_path.read_text(errors='replace')[-4000:]}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"docker-registry did not answer on {self.url} within {timeout}s")

    def _answers(self):
        connection = _connection(self.scheme, "127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/v2/")
            connection.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def stop(self, timeout=5):
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        _LIVE_PROCESSES.discard(self._process)
        self._process = None

    def kill(self):
        """SIGKILL: the registry vanishes mid-whatever, like a crashed host."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        _LIVE_PROCESSES.discard(self._process)
        self._process = None

    def restart(self):
        self.stop()
        return self.start()

    def close(self):
        """Stops the registry and deletes its store and log."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def access_log(self, since=0):
        """The requests the registry served, oldest first, from entry `since` on
        (a value from mark()). Includes the /v2/ probes start() makes. While
        the registry runs, each call first syncs with its log (about 60 ms)."""
        if self.running:
            self._sync_log()
        entries = []
        for line in self.log().splitlines():
            match = _ACCESS_LINE.match(line)
            if match and _SYNC_PARAMETER not in match.group(2):
                method, path, status, size = match.groups()
                entries.append(AccessLogEntry(method, path, int(status), 0 if size == "-" else int(size)))
        return entries[since:]

    def _sync_log(self, timeout=5, quiet=0.05):
        """Waits until the access log holds the line of a request made now,
        then until it has not grown for `quiet` seconds, so that the lines of
        requests answered before this call are in (see the module docstring)."""
        marker = f"{_SYNC_PARAMETER}={uuid.uuid4().hex}"
        connection = _connection(self.scheme, "127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", f"/v2/?{marker}")
            connection.getresponse().read()
        finally:
            connection.close()
        wait_for_log_line(self.log_path, marker, timeout, quiet)

    def mark(self):
        """A position in the access log, for counting only the requests after it."""
        return len(self.access_log())

    def count_requests(self, method=None, path=None, since=0):
        """Requests since `since` with this method (all if None) whose path matches regex `path`."""
        return sum(1 for e in self.access_log(since)
                   if (method is None or e.method == method) and (path is None or re.search(path, e.path)))

    def blob_gets(self, blob_id=None, since=0):
        """GETs of blobs (of one blob if blob_id is given) since `since`."""
        digest = re.escape(blob_id) if blob_id else "[0-9a-f]{64}"
        return self.count_requests("GET", rf"^/v2/.+/blobs/sha256:{digest}$", since)


def _connection(scheme, host, port, timeout=_UPSTREAM_TIMEOUT):
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=client_ssl_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


# ---------------------------------------------------------------------------
# Pushing content


class _RegistryClient:
    """Just enough of a distribution client to push: answers Basic and Bearer
    challenges with the registry's own credentials, as docker push does."""

    def __init__(self, registry):
        self.registry = registry
        self._authorization = None

    def request(self, method, url, body=b"", headers=()):
        """(status, response headers, body) for `url` (absolute, or a path on the registry)."""
        url = urllib.parse.urljoin(self.registry.url + "/", url)
        status, response_headers, response_body = self._send(method, url, body, headers)
        if status == 401 and self.registry.username is not None:
            self._authorization = self._answer_challenge(response_headers.get("WWW-Authenticate", ""))
            status, response_headers, response_body = self._send(method, url, body, headers)
        return status, response_headers, response_body

    def _send(self, method, url, body, headers):
        parts = urllib.parse.urlsplit(url)
        connection = _connection(parts.scheme, parts.hostname, parts.port)
        try:
            all_headers = dict(headers)
            if self._authorization:
                all_headers["Authorization"] = self._authorization
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request(method, target, body=body, headers=all_headers)
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def _answer_challenge(self, challenge):
        scheme, _, rest = challenge.partition(" ")
        basic = "Basic " + self.registry.auth_b64
        if scheme.lower() == "basic":
            return basic
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        query = urllib.parse.urlencode({"service": params.get("service", ""), "scope": params.get("scope", "")})
        status, _, body = self._send("GET", f"{params['realm']}?{query}", b"", {"Authorization": basic})
        if status != 200:
            raise AssertionError(f"token service answered {status}: {body[:200]!r}")
        return "Bearer " + json.loads(body)["token"]


def _content(source):
    return source if isinstance(source, (bytes, bytearray)) else pathlib.Path(source).read_bytes()


def wait_for_log_line(log_path, marker, timeout, quiet):
    """Waits until the file `log_path` holds `marker` (the log line of a
    request just made), then until it has not grown for `quiet` seconds: a
    registry logs a request only after answering it, so once the marker's
    line is in and the log is quiet, the lines of every request answered
    before are in too."""
    deadline = time.monotonic() + timeout
    while marker not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"docker-registry did not log a request within {timeout}s")
        time.sleep(0.002)
    size = log_path.stat().st_size
    while True:
        time.sleep(quiet)
        grown = log_path.stat().st_size
        if grown == size:
            return
        size = grown


def push_blob(registry, repo, source):
    """Uploads bytes or a file to `repo` through the distribution API (POST an
    upload, then one monolithic PUT ?digest=); returns the sha256 hex digest."""
    data = _content(source)
    digest = hashlib.sha256(data).hexdigest()
    client = _RegistryClient(registry)
    status, headers, body = client.request("POST", f"/v2/{repo}/blobs/uploads/")
    if status != 202:
        raise AssertionError(f"starting an upload to {repo} got {status}: {body[:300]!r}")
    location = headers["Location"]
    separator = "&" if "?" in location else "?"
    status, _, body = client.request("PUT", f"{location}{separator}digest=sha256:{digest}", data,
                                     {"Content-Type": "application/octet-stream"})
    if status != 201:
        raise AssertionError(f"finishing an upload to {repo} got {status}: {body[:300]!r}")
    return digest


def place_blob(registry, repo, source, blob_id):
    """Stores content under a digest that is not its sha256, by writing
    docker-registry's filesystem layout directly (the API refuses such a
    digest). Needed for blobs whose nydus blob id is not the sha256 of the
    file, such as the RAFS v6 fixture blob, whose id leaves out its
    blob.digest section. The registry serves it like any other blob."""
    data = _content(source)
    root = registry.storage_dir / "docker" / "registry" / "v2"
    blob_path = root / "blobs" / "sha256" / blob_id[:2] / blob_id / "data"
    blob_path.parent.mkdir(parents=True, exist_ok=True)
    blob_path.write_bytes(data)
    link = root / "repositories" / repo / "_layers" / "sha256" / blob_id / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(f"sha256:{blob_id}")
    return blob_id


@dataclasses.dataclass(frozen=True)
class PushedImage:
    repo: str
    tag: str
    manifest_digest: str  # "sha256:..."
    config_digest: str
    bootstrap_layer_digest: str
    blob_ids: tuple  # data blob ids, in layer order


def push_image(registry, repo, bootstrap_path, blob_paths, tag="latest"):
    """Pushes a nydus image the way nydusify lays it out: one layer per data
    blob (media type MEDIA_TYPE_NYDUS_BLOB), then the bootstrap as a
    tar+gzip layer holding image/image.boot, a config blob and an OCI
    manifest under `tag`.

    A data blob is stored under its nydus blob id: its file name when that is
    64 hex digits (as the fixture blobs are named), else its sha256; when the
    id is not the sha256 of the content the blob goes in with place_blob()."""
    blob_ids = []
    layers = []
    for path in blob_paths:
        path = pathlib.Path(path)
        data = path.read_bytes()
        content_digest = hashlib.sha256(data).hexdigest()
        blob_id = path.name if re.fullmatch(r"[0-9a-f]{64}", path.name) else content_digest
        if blob_id == content_digest:
            push_blob(registry, repo, data)
        else:
            place_blob(registry, repo, data, blob_id)
        blob_ids.append(blob_id)
        layers.append({"mediaType": MEDIA_TYPE_NYDUS_BLOB, "digest": f"sha256:{blob_id}", "size": len(data),
                       "annotations": {"containerd.io/snapshot/nydus-blob": "true"}})
    bootstrap = pathlib.Path(bootstrap_path).read_bytes()
    bootstrap_tar = _single_file_tar(BOOTSTRAP_NAME_IN_LAYER, bootstrap)
    bootstrap_layer = gzip.compress(bootstrap_tar, mtime=0)
    bootstrap_digest = push_blob(registry, repo, bootstrap_layer)
    layers.append({"mediaType": MEDIA_TYPE_LAYER_GZIP, "digest": f"sha256:{bootstrap_digest}",
                   "size": len(bootstrap_layer),
                   "annotations": {"containerd.io/snapshot/nydus-bootstrap": "true",
                                   "containerd.io/snapshot/nydus-blob-ids": json.dumps(blob_ids),
                                   "containerd.io/snapshot/nydus-rafs-version": _rafs_version(bootstrap)}})
    diff_ids = [f"sha256:{b}" for b in blob_ids] + [f"sha256:{hashlib.sha256(bootstrap_tar).hexdigest()}"]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_digest = push_blob(registry, repo, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": f"sha256:{config_digest}", "size": len(config)},
        "layers": layers,
    }).encode()
    status, headers, body = _RegistryClient(registry).request("PUT", f"/v2/{repo}/manifests/{tag}", manifest,
                                                              {"Content-Type": MEDIA_TYPE_MANIFEST})
    if status != 201:
        raise AssertionError(f"pushing the manifest of {repo}:{tag} got {status}: {body[:300]!r}")
    return PushedImage(repo, tag, headers["Docker-Content-Digest"], f"sha256:{config_digest}",
                       f"sha256:{bootstrap_digest}", tuple(blob_ids))


def _single_file_tar(name, data):
    """A reproducible tar (fixed mtime and owner) holding one file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _rafs_version(bootstrap):
    """"6" when the bootstrap has the EROFS superblock magic at 1024, else "5"."""
    return "6" if bootstrap[1024:1028] == struct.pack("<I", 0xE0F5E1E2) else "5"


# ---------------------------------------------------------------------------
# Proxies with fault injection


FAULT_KINDS = ("status", "reset", "stall", "truncate", "corrupt")


@dataclasses.dataclass
class Fault:
    """A fault for the next `times` matching requests (every matching request
    while times is None). A request matches when its method equals `method`
    (any if None) and regex `path` is found in its path and query (any if
    None); it takes the first matching fault. Kinds:

      status    answer `status` with a JSON error body and `headers`, without
                asking upstream
      reset     RST the connection: before the response when after_bytes is
                None, else after the headers and after_bytes body bytes
      stall     wait `seconds`, then go on: before asking upstream when
                after_bytes is None, else after the headers and after_bytes
                body bytes
      truncate  close the connection (FIN) after the headers and after_bytes
                body bytes, short of the announced Content-Length
      corrupt   XOR 0xff into the body bytes at `offsets` (counted from the
                first body byte sent, so from the start of a Range)

    Body faults do nothing to a HEAD response, nor at an after_bytes the body
    does not go past. `hits` counts the requests the fault was taken by.
    """
    kind: str
    times: int | None = 1
    path: str | None = None
    method: str | None = None
    status: int = 503
    headers: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    after_bytes: int | None = None
    offsets: tuple = (0,)
    hits: int = 0

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {self.kind!r}")
        if self.kind == "truncate" and self.after_bytes is None:
            raise ValueError("a truncate fault needs after_bytes")

    def matches(self, method, path):
        return ((self.method is None or self.method == method) and
                (self.path is None or re.search(self.path, path) is not None))


@dataclasses.dataclass
class RecordedRequest:
    """One request a proxy received. headers is case-insensitive (headers["range"])."""
    method: str
    path: str
    headers: http.client.HTTPMessage
    port: int  # the listening port it arrived on
    status: int = 0  # 0 when no status line was sent (reset or stall before headers)
    bytes_sent: int = 0  # body bytes sent to the client
    fault: str | None = None  # kind of the fault taken, if any


@dataclasses.dataclass(frozen=True)
class _Upstream:
    scheme: str
    host: str
    port: int
    host_header: str


class _ProxyBase:
    """Listeners, request records, faults and streaming shared by FaultProxy and MirrorProxy."""

    def __init__(self, ports):
        self._ports = dict(ports)  # role -> port (0: any free port, fixed at the first start)
        self._listeners = {}
        self._lock = threading.Lock()
        self._faults = []
        self._requests = []
        self._down = threading.Event()  # set while down: ends stalls early

    @property
    def port(self):
        return self._ports["main"]

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"http://{self.host}"

    # Lifecycle.

    def start(self):
        """Listens (again) on the same ports."""
        self._down.clear()
        for role, port in self._ports.items():
            if role not in self._listeners:
                self._listeners[role] = _Listener(port, _ProxyHandler, self, role=role)
                self._ports[role] = self._listeners[role].server_address[1]
        return self

    def stop(self):
        """Closes the listeners, so connections are refused, and drops open connections."""
        self._down.set()
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()

    down = stop
    up = start

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # Faults.

    def inject(self, fault):
        """Adds a Fault; returns it so that tests can read fault.hits."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(self, times=1, status=503, path=None, method=None, headers=None):
        return self.inject(Fault("status", times, path, method, status=status, headers=headers or {}))

    def reset(self, times=1, after_bytes=None, path=None, method=None):
        return self.inject(Fault("reset", times, path, method, after_bytes=after_bytes))

    def stall(self, seconds, times=1, after_bytes=None, path=None, method=None):
        return self.inject(Fault("stall", times, path, method, seconds=seconds, after_bytes=after_bytes))

    def truncate(self, after_bytes, times=1, path=None, method=None):
        return self.inject(Fault("truncate", times, path, method, after_bytes=after_bytes))

    def corrupt(self, offsets=(0,), times=1, path=None, method=None):
        return self.inject(Fault("corrupt", times, path, method, offsets=tuple(offsets)))

    def clear_faults(self):
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method, path):
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # Records.

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def mark(self):
        """A position in the request records, for counting only the requests after it."""
        with self._lock:
            return len(self._requests)

    def count(self, method=None, path=None, since=0):
        """Requests since `since` with this method (all if None) whose path matches regex `path`."""
        return sum(1 for r in self.requests[since:]
                   if (method is None or r.method == method) and (path is None or re.search(path, r.path)))

    def counts(self, since=0):
        """{(method, path): number of requests} since `since`."""
        result = {}
        for r in self.requests[since:]:
            result[(r.method, r.path)] = result.get((r.method, r.path), 0) + 1
        return result

    def bytes_sent(self, since=0):
        """Body bytes sent to clients since `since`."""
        return sum(r.bytes_sent for r in self.requests[since:])

    # Serving.

    def _route(self, handler):
        """An _Upstream to forward to, or (status, headers, body) to answer locally."""
        raise NotImplementedError

    def _forwarded_header(self, name):
        return name.lower() not in _HOP_BY_HOP and name.lower() != "host"

    def _serve(self, handler):
        record = RecordedRequest(handler.command, handler.path, handler.headers, handler.server.server_address[1])
        with self._lock:
            self._requests.append(record)
        try:
            body = handler.read_body()
        except _BadRequest as error:
            record.status = 501
            record.bytes_sent = handler.reply(501, str(error).encode())
            handler.close_connection = True
            return
        fault = self._take_fault(handler.command, handler.path)
        record.fault = fault.kind if fault else None
        if fault and fault.kind == "status":
            record.status = fault.status
            record.bytes_sent = handler.reply_json(
                fault.status, {"errors": [{"code": "UNAVAILABLE", "message": "fault injected by the test proxy"}]},
                fault.headers.items())
            return
        if fault and fault.kind == "reset" and fault.after_bytes is None:
            handler.abort_connection()
            return
        if fault and fault.kind == "stall" and fault.after_bytes is None:
            if self._down.wait(fault.seconds):
                handler.abort_connection()
                return
        route = self._route(handler)
        if not isinstance(route, _Upstream):
            status, headers, content = route
            record.status = status
            self._send(handler, record, status, list(headers) + [("Content-Length", str(len(content)))],
                       [content], fault)
            return
        self._forward(handler, record, route, body, fault)

    def _forward(self, handler, record, upstream, body, fault):
        connection = _connection(upstream.scheme, upstream.host, upstream.port)
        try:
            connection.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", upstream.host_header)
            for name, value in handler.headers.items():
                if self._forwarded_header(name):
                    connection.putheader(name, value)
            connection.endheaders(body or None)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            record.status = 502
            record.bytes_sent = handler.reply(502, f"upstream {upstream.host}:{upstream.port}: {error}".encode(),
                                              [("Content-Type", "text/plain")])
            return
        try:
            headers = [(n, v) for n, v in response.getheaders() if n.lower() not in _HOP_BY_HOP]
            if response.getheader("Content-Length") is None and handler.command != "HEAD":
                # Without a length the body ends where the connection does.
                headers.append(("Connection", "close"))
            record.status = response.status
            self._send(handler, record, response.status, headers, iter(lambda: response.read1(_CHUNK), b""), fault)
        except (OSError, http.client.HTTPException):
            handler.close_connection = True  # upstream died mid-body: the client sees a short body
        finally:
            connection.close()

    def _send(self, handler, record, status, headers, chunks, fault):
        """Sends a response, applying a body fault (reset, stall, truncate, corrupt)."""
        handler.send_response_only(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command == "HEAD":
            return
        cut = fault.after_bytes if fault and fault.kind in ("reset", "stall", "truncate") else None
        if cut == 0 and self._cut(handler, fault):
            return
        sent = 0
        for chunk in chunks:
            if fault and fault.kind == "corrupt":
                chunk = _flip(chunk, sent, fault.offsets)
            if cut and sent + len(chunk) > cut:
                head, chunk = chunk[:cut - sent], chunk[cut - sent:]
                handler.wfile.write(head)
                sent += len(head)
                record.bytes_sent = sent
                cut = None
                if self._cut(handler, fault):
                    return
            handler.wfile.write(chunk)
            sent += len(chunk)
            record.bytes_sent = sent

    def _cut(self, handler, fault):
        """Applies a reset, stall or truncate fault at its byte; True when the response ends there."""
        if fault.kind == "truncate":
            handler.close_connection = True
            return True
        if fault.kind == "reset" or self._down.wait(fault.seconds):
            handler.abort_connection()
            return True
        return False


def _flip(chunk, start, offsets):
    """chunk (body bytes start..) with the bytes at the given body offsets XORed with 0xff."""
    hits = [o - start for o in offsets if start <= o < start + len(chunk)]
    if not hits:
        return chunk
    flipped = bytearray(chunk)
    for index in hits:
        flipped[index] ^= 0xFF
    return bytes(flipped)


class _ProxyHandler(_Handler):
    def do_GET(self):
        self.server.owner._serve(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET


class FaultProxy(_ProxyBase):
    """A plain-HTTP reverse proxy in front of `upstream` (an http or https URL;
    https is verified with the test CA). It forwards method, path, headers
    (Host included, unchanged) and body, streams responses back, and applies
    the faults tests inject (see Fault). down() refuses connections, up()
    listens again on the same port. With no faults it is a request counter."""

    def __init__(self, upstream, port=0):
        super().__init__({"main": port})
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = upstream
        self._upstream = _Upstream(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https"
                                                                                else 80), parts.netloc)

    def _route(self, handler):
        return dataclasses.replace(self._upstream, host_header=handler.headers.get("Host", self._upstream.host_header))


class MirrorProxy(_ProxyBase):
    """A Go dfdaemon stand-in in mirror mode (nydusd-contract.md 2.4 and 7).

    /v2/... requests go to the registry named by their X-Dragonfly-Registry
    header (a URL with scheme; https is verified with the test CA), else by
    their `ns` query parameter (a host, https), else default_registry. Range,
    Authorization and the other end-to-end headers are forwarded, Host is
    rewritten to the upstream, X-Dragonfly-* headers are not forwarded.
    GET /server/ping (Go dfdaemon) and /healthy (Rust dfdaemon) answer 200 on
    the main port and, when health_port is given (0: any free port), on a
    separate health port too. Errors of the mirror itself carry
    X-Dragonfly-Error-Type: proxy. Faults (see Fault) apply to every request,
    pings included; down() takes both ports away, up() brings them back."""

    PING_PATHS = ("/server/ping", "/healthy")

    def __init__(self, default_registry=None, port=0, health_port=None):
        ports = {"main": port}
        if health_port is not None:
            ports["health"] = health_port
        super().__init__(ports)
        self.default_registry = default_registry

    @property
    def health_port(self):
        return self._ports.get("health")

    @property
    def ping_url(self):
        """The ping URL, on the health port when there is one."""
        return f"http://127.0.0.1:{self.health_port or self.port}/server/ping"

    def _forwarded_header(self, name):
        return super()._forwarded_header(name) and not name.lower().startswith("x-dragonfly-")

    def _route(self, handler):
        url = urllib.parse.urlsplit(handler.path)
        if url.path in self.PING_PATHS:
            return 200, [], b""
        if handler.server.role == "health" or not url.path.startswith("/v2"):
            return _proxy_error(404, f"no route for {url.path}")
        registry = handler.headers.get("X-Dragonfly-Registry")
        if not registry:
            ns = urllib.parse.parse_qs(url.query).get("ns")
            registry = f"https://{ns[0]}" if ns else self.default_registry
        if not registry:
            return _proxy_error(502, "no X-Dragonfly-Registry header, ns parameter or default registry")
        parts = urllib.parse.urlsplit(registry)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return _proxy_error(400, f"X-Dragonfly-Registry must be a URL with scheme, not {registry!r}")
        return _Upstream(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                         parts.netloc)


def _proxy_error(status, message):
    return status, [("Content-Type", "text/plain"), ("X-Dragonfly-Error-Type", "proxy")], message.encode()


class ForwardProxy(_ProxyBase):
    """An HTTP forward proxy: requests carry absolute-form targets
    (GET http://registry/v2/...), as nydusd sends them through `proxy.url`
    (nydusd-contract.md 2.5; dfdaemon's proxy port). Each is forwarded to the
    host its URL names; /server/ping and /healthy answer 200 for the
    `ping_url` probe. Records and faults as FaultProxy (recorded paths are the
    absolute URLs, so a test can tell proxied requests apart)."""

    PING_PATHS = ("/server/ping", "/healthy")

    def __init__(self, port=0):
        super().__init__({"main": port})

    @property
    def ping_url(self):
        return f"http://127.0.0.1:{self.port}/server/ping"

    def _route(self, handler):
        url = urllib.parse.urlsplit(handler.path)
        if not url.scheme:
            if url.path in self.PING_PATHS:
                return 200, [], b""
            return _proxy_error(400, f"not an absolute-form request target: {handler.path}")
        # Upstream gets the origin form.
        handler.path = url.path + (f"?{url.query}" if url.query else "")
        return _Upstream(url.scheme, url.hostname, url.port or (443 if url.scheme == "https" else 80), url.netloc)
