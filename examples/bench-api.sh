#!/usr/bin/env bash
# The admin API under the snapshotter's eyes (issue 5's benchmark):
#   (a) exec -> RUNNING: time from exec of nydusd (dedicated mode, --apisock)
#       until GET /api/v1/daemon answers "RUNNING", for a bootstrap of
#       100,000 entries; the baseline is the same poll loop against a
#       daemon already running (the cost of asking), and `mount -t erofs`
#       of the same bootstrap by the kernel (no daemon at all);
#   (b) API latency while fio reads the mount: p50/p99/max of
#       GET /api/v1/metrics and GET /api/v1/daemon, each on a fresh
#       connection as the Go client's first request, with and without fio;
#   (c) memory: RSS of one shared-mode daemon (no --bootstrap) with 20
#       POST /api/v1/mount of the same image, after a file of each has been
#       read, against 20 dedicated daemons (20 x the RSS of one).
#
#   sudo examples/bench-api.sh            # RUNS=5 REQUESTS=2000
#
# The tree: 100,000 files of 1-8 KiB in 100 directories, generated once in
# $BENCH_DIR/tree100k (default /var/tmp/nydus-bench-api), built by this
# project's nydus-image (v6, uncompressed so the kernel can mount it).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/var/tmp/nydus-bench-api}
RUNS=${RUNS:-5}
REQUESTS=${REQUESTS:-2000}
BUILD_DIR=${BUILD_DIR:-build}
PYTHON=/usr/bin/python3

test/install-deps.sh >/dev/null
command -v fio >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
[[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" >/dev/null
ninja -C "$BUILD_DIR" daemon/nydusd builder/nydus-image >/dev/null
nydusd=$PWD/$BUILD_DIR/daemon/nydusd
nydus_image=$PWD/$BUILD_DIR/builder/nydus-image

mkdir -p "$BENCH_DIR"
tree=$BENCH_DIR/tree100k
if [[ ! -f $BENCH_DIR/tree.done ]]; then
  rm -rf "$tree"
  "$PYTHON" - "$tree" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(1)
for d in range(100):
    path = os.path.join(root, f"dir{d:03d}")
    os.makedirs(path)
    for f in range(1000):
        with open(os.path.join(path, f"file{f:04d}"), "wb") as out:
            out.write(rng.randbytes(rng.randint(1024, 8192)))
PY
  touch "$BENCH_DIR/tree.done"
fi
image=$BENCH_DIR/image
if [[ ! -f $image/bootstrap || $nydus_image -nt $image/bootstrap ]]; then
  rm -rf "$image" && mkdir -p "$image/blobs"
  "$nydus_image" create --fs-version 6 --compressor none --bootstrap "$image/bootstrap" \
    --blob-dir "$image/blobs" "$tree" >/dev/null
fi

work=$(mktemp -d /tmp/nydus-bench-api.XXXXXX)
mnt=$work/mnt
kmnt=$work/kmnt
mkdir -p "$mnt" "$kmnt" "$work/cache"
cleanup() {
  pkill -f -- "--apisock $work/api.sock" 2>/dev/null || true
  umount -l "$mnt" 2>/dev/null || true
  umount "$kmnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat >"$work/config.json" <<EOF
{"device":{"id":"/bench","backend":{"type":"localfs","config":{"dir":"$image/blobs"}},
  "cache":{"type":"blobcache","config":{"work_dir":"$work/cache"}}},
 "mode":"direct","iostats_files":false,"enable_xattr":true}
EOF

"$PYTHON" - "$nydusd" "$image/bootstrap" "$image/blobs" "$work" "$RUNS" "$REQUESTS" <<'PY'
import http.client, json, os, socket, statistics, subprocess, sys, time
nydusd, boot, blobs, work, runs, requests = sys.argv[1:7]
runs, requests = int(runs), int(requests)
mnt, sock, cfg = f"{work}/mnt", f"{work}/api.sock", f"{work}/config.json"

class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("unix", timeout=10)
        self.path_ = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path_)

def get(path):
    c = Unix(sock)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()

def drop_caches():
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")

def start(image_args=("--config", cfg, "--bootstrap", boot), log="nydusd.log"):
    """Execs nydusd (dedicated by default; shared without image_args) and
    polls until RUNNING: the process and the seconds that took."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([nydusd, "fuse", *image_args, "--mountpoint", mnt,
                             "--apisock", sock, "--log-level", "warn", "--log-file", f"{work}/{log}"])
    while True:
        try:
            status, body = get("/api/v1/daemon")
            if status == 200 and json.loads(body)["state"] == "RUNNING":
                return proc, time.perf_counter() - t0
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"nydusd exited {proc.returncode}")
        time.sleep(0.001)

def stop(proc):
    proc.terminate()
    proc.wait(10)

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

print(f"bootstrap {boot}: {os.path.getsize(boot) / 2**20:.1f} MiB")

# (a) exec -> RUNNING, page cache warm (as on a node that starts many
# containers) and cold (nothing cached).
warm, cold, kernel = [], [], []
for i in range(runs):
    proc, t = start(); stop(proc); warm.append(t)
for i in range(runs):
    drop_caches()
    proc, t = start(); stop(proc); cold.append(t)
for i in range(runs):
    t0 = time.perf_counter()
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", boot, f"{work}/kmnt"], check=True)
    kernel.append(time.perf_counter() - t0)
    subprocess.run(["umount", f"{work}/kmnt"], check=True)
proc, _ = start()
ask = []
for i in range(200):
    t0 = time.perf_counter(); get("/api/v1/daemon"); ask.append(time.perf_counter() - t0)

# (b) API latency with and without fio reading the mount.
def latencies():
    out = []
    for i in range(requests):
        path = "/api/v1/metrics" if i % 2 else "/api/v1/daemon"
        t0 = time.perf_counter()
        status, _ = get(path)
        out.append(time.perf_counter() - t0)
        assert status == 200, status
    return out
idle = latencies()
fio = subprocess.Popen(["fio", "--name=read", f"--opendir={mnt}/dir000", "--rw=randread", "--bs=4k",
                        "--numjobs=4", "--time_based", "--runtime=600", "--openfiles=256",
                        "--file_service_type=random", "--group_reporting", "--invalidate=1",
                        "--output", f"{work}/fio.out"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(2)
busy = latencies()
fio.send_signal(2); fio.wait()  # SIGINT: fio stops and writes its summary
stop(proc)
with open(f"{work}/fio.out") as f:
    fio_summary = [l.strip() for l in f if "IOPS=" in l][:1]

ms = lambda s: f"{s * 1000:8.2f}"
print(f"(a) exec -> RUNNING (median of {runs})")
print(f"    nydusd, page cache warm       {ms(statistics.median(warm))} ms   (target <= 100 ms)")
print(f"    nydusd, page cache dropped    {ms(statistics.median(cold))} ms")
print(f"    kernel mount -t erofs (loop)  {ms(statistics.median(kernel))} ms   (ratio nydusd warm / kernel "
      f"{statistics.median(warm) / statistics.median(kernel):.2f}x)")
print(f"    one GET /api/v1/daemon        {ms(statistics.median(ask))} ms   (the cost of one readiness poll)")
print(f"(b) API latency, {requests} requests, a fresh connection each      p50       p99       max")
print(f"    idle                              {ms(pct(idle, 50))}  {ms(pct(idle, 99))}  {ms(max(idle))}")
print(f"    while fio reads the mount         {ms(pct(busy, 50))}  {ms(pct(busy, 99))}  {ms(max(busy))}"
      f"   (target p99 <= 5 ms)")
print(f"    fio: {fio_summary[0] if fio_summary else 'no summary'}")

# (c) RSS: a dedicated daemon, then one shared daemon with 20 mounts.
def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def read_one(root):
    with open(f"{root}/dir000/file0000", "rb") as f:
        f.read()

proc, _ = start()
read_one(mnt)
dedicated_rss = rss_kib(proc.pid)
stop(proc)

def call(method, path, body=None):
    c = Unix(sock)
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        c.request(method, path, body=payload, headers={"Content-Length": str(len(payload))})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()

shared, _ = start(image_args=(), log="nydusd-shared.log")
empty_rss = rss_kib(shared.pid)
with open(cfg) as f:
    config_text = f.read()
def mount_and_read(name, source):
    """POST one mount, read a file of it; the seconds the POST took."""
    t0 = time.perf_counter()
    status, body = call("POST", f"/api/v1/mount?mountpoint=%2F{name}", {"fs_type": "rafs", "source": source,
                                                                       "config": config_text})
    took = time.perf_counter() - t0
    assert status == 204, body
    read_one(f"{mnt}/{name}")
    return took

mount_times, rss_after = [], []
for i in range(20):
    mount_times.append(mount_and_read(str(i), boot))
    rss_after.append(rss_kib(shared.pid))
# The snapshotter gives every image its own bootstrap file: 20 copies (same
# content, distinct files) cannot share the parsed metadata.
for i in range(20):
    status, body = call("DELETE", f"/api/v1/mount?mountpoint=%2F{i}")
    assert status == 204, body
copies_dir = os.path.join(os.path.dirname(boot), "copies")
os.makedirs(copies_dir, exist_ok=True)
copy_times, copies_rss = [], 0
for i in range(20):
    copy = os.path.join(copies_dir, f"bootstrap-{i}")
    if not os.path.exists(copy):
        with open(boot, "rb") as src, open(copy, "wb") as dst:
            dst.write(src.read())
    copy_times.append(mount_and_read(f"c{i}", copy))
copies_rss = rss_kib(shared.pid)
stop(shared)
mib = lambda kib: f"{kib / 1024:7.1f}"
print("(c) RSS (VmRSS), a file of each mount read")
print(f"    one dedicated daemon, 1 image          {mib(dedicated_rss)} MiB")
print(f"    shared daemon, empty                   {mib(empty_rss)} MiB")
print(f"    shared daemon, 1 mount                 {mib(rss_after[0])} MiB")
print(f"    shared daemon, 20 mounts               {mib(rss_after[-1])} MiB   "
      f"({(rss_after[-1] - rss_after[0]) / 19 / 1024:.1f} MiB per further mount)")
print(f"    20 dedicated daemons (20 x one)        {mib(20 * dedicated_rss)} MiB   "
      f"(ratio shared / dedicated {rss_after[-1] / (20 * dedicated_rss):.2f}x)")
print(f"    POST /api/v1/mount, median             {ms(statistics.median(mount_times))} ms")
print(f"    shared daemon, 20 distinct copies      {mib(copies_rss)} MiB   "
      f"(ratio vs 20 dedicated {copies_rss / (20 * dedicated_rss):.2f}x; POST median "
      f"{statistics.median(copy_times) * 1000:.1f} ms)")
PY
