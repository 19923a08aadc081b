"""Fault-injecting stand-ins for a P2P peer, run by p2p_harness.py inside a
network namespace of their own (stdlib only, started as a separate process):

  byzantine  an HTTP/1.1 server that speaks the registry blob protocol as a
             peer does (GET/HEAD .../blobs/sha256:<digest> with Range: 206,
             Content-Range, 416; GET /server/ping and /healthy: 200) and
             serves wrong bytes of the right length. With --corrupt flip it
             flips one bit in every 97th byte of the blob (by absolute blob
             offset, ~1.03 % of what it serves, so every 1 MiB chunk it serves
             fails its digest); with --corrupt wrong it serves another
             blob's bytes (a deterministic pseudo-random stream). The true
             bytes come from a local copy of the blob (--blob DIGEST=PATH),
             so the registry's count of origin bytes stays the daemons' own;
             a digest without a local copy is fetched from --upstream (the
             registry) and corrupted the same way.
  stall      accepts TCP connections and never reads or answers: a peer
             that hangs past every deadline.

Every event is one JSON line, flushed, in --events (the harness reads them):
  {"event": "listening"}
  {"event": "accept", "peer": "ip:port"}                      (stall)
  {"event": "request", "method", "path", "range", "status", "bytes", "flipped", "peer"}
"""
import argparse
import http.client
import http.server
import json
import os
import re
import socket
import sys
import threading
import urllib.parse

_EVENTS_LOCK = threading.Lock()
_EVENTS = None
STRIDE = 97
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def event(**fields):
    with _EVENTS_LOCK:
        _EVENTS.write(json.dumps(fields) + "\n")
        _EVENTS.flush()


def corrupt(data, start, mode):
    """Wrong bytes for blob range [start, start + len(data))."""
    if mode == "wrong":
        # Another blob: a keyed stream that depends only on the offset.
        out = bytearray(len(data))
        for i in range(0, len(data), 32):
            block = (start + i) // 32
            chunk = block.to_bytes(8, "little") * 4
            out[i:i + 32] = chunk[:len(data) - i]
        return bytes(out), len(data)
    buf = bytearray(data)
    first = (-start) % STRIDE  # offsets that are multiples of STRIDE
    flipped = 0
    for i in range(first, len(buf), STRIDE):
        buf[i] ^= 1 << ((start + i) % 8)
        flipped += 1
    return bytes(buf), flipped


class ByzantineHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def _reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        opts = self.server.opts
        path = urllib.parse.urlsplit(self.path).path
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        range_header = self.headers.get("Range", "")
        if path in ("/server/ping", "/healthy"):
            self._reply(200, b"ok\n")
            event(event="request", method=self.command, path=path, range="", status=200, bytes=0, flipped=0,
                  peer=peer)
            return
        match = _DIGEST.search(path)
        if not match:
            self._reply(404, b'{"errors":[{"code":"NOT_FOUND"}]}')
            event(event="request", method=self.command, path=path, range=range_header, status=404, bytes=0,
                  flipped=0, peer=peer)
            return
        digest = match.group(1)
        size = self._size(digest, path)
        if size is None:
            self._reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            event(event="request", method=self.command, path=path, range=range_header, status=404, bytes=0,
                  flipped=0, peer=peer)
            return
        start, end, status = 0, size - 1, 200
        if range_header:
            m = _RANGE.match(range_header.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self._reply(416, headers=[("Content-Range", f"bytes */{size}")])
                event(event="request", method=self.command, path=path, range=range_header, status=416, bytes=0,
                      flipped=0, peer=peer)
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or end < start:
                self._reply(416, headers=[("Content-Range", f"bytes */{size}")])
                event(event="request", method=self.command, path=path, range=range_header, status=416, bytes=0,
                      flipped=0, peer=peer)
                return
            status = 206
        headers = [("Content-Type", "application/octet-stream"),
                   ("Docker-Content-Digest", f"sha256:{digest}"), ("Accept-Ranges", "bytes")]
        if status == 206:
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        if self.command == "HEAD":
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            event(event="request", method="HEAD", path=path, range=range_header, status=status, bytes=0,
                  flipped=0, peer=peer)
            return
        data = self._read(digest, path, start, end)
        body, flipped = corrupt(data, start, opts.corrupt)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        finally:
            event(event="request", method="GET", path=path, range=range_header, status=status, bytes=len(body),
                  flipped=flipped, peer=peer)

    # The true bytes: a local copy, else the upstream registry.

    def _size(self, digest, path):
        local = self.server.blobs.get(digest)
        if local is not None:
            return os.path.getsize(local)
        if not self.server.opts.upstream:
            return None
        status, headers, _ = self._upstream("HEAD", digest, path, None)
        if status != 200:
            return None
        return int(headers.get("Content-Length", "0"))

    def _read(self, digest, path, start, end):
        local = self.server.blobs.get(digest)
        if local is not None:
            with open(local, "rb") as f:
                f.seek(start)
                return f.read(end - start + 1)
        _, _, body = self._upstream("GET", digest, path, f"bytes={start}-{end}")
        return body

    def _upstream(self, method, digest, path, range_value):
        base = urllib.parse.urlsplit(self.server.opts.upstream)
        repo_match = re.search(r"/v2/(.+)/blobs/", path)
        repo = repo_match.group(1) if repo_match else self.server.opts.repo
        conn = http.client.HTTPConnection(base.hostname, base.port or 80, timeout=30)
        try:
            headers = {"User-Agent": "np2p-byzantine-peer"}
            if range_value:
                headers["Range"] = range_value
            conn.request(method, f"/v2/{repo}/blobs/sha256:{digest}", headers=headers)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()


class ByzantineServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        import socketserver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def run_stall(host, port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1024)
    event(event="listening")
    held = []
    while True:
        conn, address = listener.accept()
        held.append(conn)  # never read, never answered, never closed
        event(event="accept", peer=f"{address[0]}:{address[1]}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["byzantine", "stall"], required=True)
    parser.add_argument("--listen", required=True, help="ADDR:PORT")
    parser.add_argument("--events", required=True)
    parser.add_argument("--blob", action="append", default=[], help="DIGEST=PATH, a local copy of a blob")
    parser.add_argument("--upstream", default="", help="registry base URL for blobs without a local copy")
    parser.add_argument("--repo", default="library/test")
    parser.add_argument("--corrupt", choices=["flip", "wrong"], default="flip")
    opts = parser.parse_args()
    global _EVENTS
    _EVENTS = open(opts.events, "a")
    host, _, port = opts.listen.rpartition(":")
    if opts.mode == "stall":
        run_stall(host, int(port))
        return
    server = ByzantineServer((host, int(port)), ByzantineHandler)
    server.opts = opts
    server.blobs = dict(item.split("=", 1) for item in opts.blob)
    event(event="listening")
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
