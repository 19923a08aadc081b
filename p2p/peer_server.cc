#include "p2p/peer_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

#include "common/log.h"
#include "p2p/access_check.h"
#include "p2p/hot_units.h"
#include "p2p/mirror_relay.h"
#include "p2p/membership.h"
#include "p2p/p2p_node.h"
#include "p2p/peer_auth.h"
#include "p2p/peer_tls.h"
#include "p2p/rate_limiter.h"

namespace nydus::p2p {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kStreamBlock = 256 * 1024;
// The blob size a peer expects (PeerClient sends it; see serve_blob).
constexpr const char* kSizeHintHeader = "X-Nydus-Blob-Size";
// Answer only from the piece store (see serve_blob).
constexpr const char* kHeldOnlyHeader = "X-Nydus-Held-Only";
// Spreading hot units (p2p/hot_units.h): the asker's own peer address, the
// holder a redirect names, and "do not redirect me again".
constexpr const char* kPeerHeader = "X-Nydus-Peer";
constexpr const char* kHolderHeader = "X-Nydus-Holder";
constexpr const char* kNoRedirectHeader = "X-Nydus-No-Redirect";
// On a redirect to the next owner just after start (which only may hold
// the bytes), not to a holder of a hot unit.
constexpr const char* kDetourHeader = "X-Nydus-Detour";

// Per request: the upload HotUnits tracks, if any.
struct RequestContext {
  bool counted_upload = false;  // holds one of max_uploads until the request ends
  bool low_priority = false;    // ... counted as a low-priority one
  bool tracked = false;
  std::string digest;
  uint64_t unit = 0;
  uint64_t first = 0, end = 0;  // the range uploaded
  std::string asker;
  bool sending = false;  // the data response went out (not a refusal): a complete one makes the asker a holder
};
// How long a streaming upload waits for the next byte before giving up.
constexpr auto kStreamStall = std::chrono::seconds(30);
// How long an origin fetch for an asker may take in all.
constexpr auto kFetchDeadline = std::chrono::seconds(120);
std::string client_address(MHD_Connection* conn) {
  const MHD_ConnectionInfo* info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (!info || !info->client_addr) return "?";
  char buf[INET6_ADDRSTRLEN] = {0};
  const sockaddr* sa = info->client_addr;
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof buf);
  return buf;
}

// An origin fetch running on a worker for one streaming upload.
struct FetchState {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Status status;
  std::shared_ptr<StoredBlob> blob;  // set once the store entry exists
  void finish(Status s) {
    std::lock_guard<std::mutex> g(mu);
    done = true;
    status = std::move(s);
    cv.notify_all();
  }
  void set_blob(std::shared_ptr<StoredBlob> b) {
    std::lock_guard<std::mutex> g(mu);
    blob = std::move(b);
    cv.notify_all();
  }
  // The store entry, waiting for the worker to create it; null when the
  // worker failed first or `deadline` passed.
  std::shared_ptr<StoredBlob> wait_blob(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_until(lock, deadline, [&] { return blob != nullptr || done; });
    return blob;
  }
  bool failed() {
    std::lock_guard<std::mutex> g(mu);
    return done && !status.ok();
  }
  bool finished() {
    std::lock_guard<std::mutex> g(mu);
    return done;
  }
};

// Pacing of a response's bytes (UploadLimits, keyed by client address).
struct Pacing {
  UploadLimits* limits = nullptr;  // null: unlimited
  std::string client;
  bool low_priority = false;  // prefetch, a stock client's whole blob
  bool take(uint64_t n) const {
    return !limits || limits->take(client, n, Clock::now() + std::chrono::seconds(60), low_priority);
  }
};

struct Stream {
  Pacing pacing;
  const std::atomic<bool>* stopping = nullptr;  // the server is shutting down: end the stream
  std::shared_ptr<StoredBlob> blob;
  uint64_t first = 0;
  uint64_t length = 0;
  std::shared_ptr<FetchState> fetch;
  P2pMetrics* metrics = nullptr;
  PeerUpload* upload = nullptr;
};

ssize_t stream_block(void* cls, uint64_t pos, char* buf, size_t max) {
  auto* st = static_cast<Stream*>(cls);
  if (pos >= st->length) return MHD_CONTENT_READER_END_OF_STREAM;
  const uint64_t offset = st->first + pos;
  const uint64_t want = std::min<uint64_t>(max, st->length - pos);
  const Clock::time_point give_up = Clock::now() + kStreamStall;
  // Answered on the asker's size hint: the worker creates the store entry.
  while (!st->blob) {
    st->blob = st->fetch->wait_blob(std::min(give_up, Clock::now() + milliseconds(100)));
    if (st->fetch->finished() || st->stopping->load(std::memory_order_relaxed) || Clock::now() >= give_up) break;
  }
  if (!st->blob) {
    st->metrics->upload_errors.fetch_add(1, std::memory_order_relaxed);
    return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  for (;;) {
    auto ready = st->blob->wait_ready(offset, want, std::min(give_up, Clock::now() + milliseconds(50)));
    if (ready.ok()) {
      const ssize_t n = pread(st->blob->data_fd(), buf, *ready, static_cast<off_t>(offset));
      if (n <= 0 || !st->pacing.take(static_cast<uint64_t>(n))) break;
      st->metrics->upload_bytes.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
      if (st->upload) st->upload->bytes.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
      return n;
    }
    if (Clock::now() >= give_up || st->stopping->load(std::memory_order_relaxed)) break;
    // kIo: nobody is fetching the granule at `offset`. The worker may not
    // have claimed it yet; once it is done, the bytes are there or never.
    if (ready.status().code() == Code::kIo) {
      if (st->fetch && st->fetch->finished()) {
        if (st->blob->ready_run(offset, 1) == 1) continue;
        break;
      }
      if (!st->fetch) break;
      std::this_thread::sleep_for(milliseconds(2));
    }
  }
  st->metrics->upload_errors.fetch_add(1, std::memory_order_relaxed);
  return MHD_CONTENT_READER_END_WITH_ERROR;
}

void free_stream(void* cls) { delete static_cast<Stream*>(cls); }

// A mirror client's range through the P2P path (p2p/mirror_relay.h).
struct RelayStream {
  Pacing pacing;
  std::unique_ptr<MirrorRelay> relay;
  P2pMetrics* metrics = nullptr;
  PeerUpload* upload = nullptr;
};

ssize_t relay_block(void* cls, uint64_t pos, char* buf, size_t max) {
  auto* st = static_cast<RelayStream*>(cls);
  auto n = st->relay->read(pos, reinterpret_cast<uint8_t*>(buf), max);
  if (!n.ok()) {
    LOG_WARN("p2p: mirror: %s; cutting the response", n.status().message().c_str());
    st->metrics->upload_errors.fetch_add(1, std::memory_order_relaxed);
    return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  if (*n == 0) return MHD_CONTENT_READER_END_OF_STREAM;
  if (!st->pacing.take(*n)) return MHD_CONTENT_READER_END_WITH_ERROR;
  st->metrics->upload_bytes.fetch_add(*n, std::memory_order_relaxed);
  st->upload->bytes.fetch_add(*n, std::memory_order_relaxed);
  return static_cast<ssize_t>(*n);
}

void free_relay(void* cls) { delete static_cast<RelayStream*>(cls); }

ssize_t no_body(void*, uint64_t, char*, size_t) { return MHD_CONTENT_READER_END_WITH_ERROR; }

}  // namespace

struct PeerServer::Impl {
  P2pNode& node;
  const Role role;
  MHD_Daemon* mhd = nullptr;
  uint16_t port = 0;
  std::mutex refusals_mu;
  std::set<std::pair<std::string, AuthVerdict>> refusals_logged;  // guarded by refusals_mu
  AccessCheck access;  // kMirror: may this client read the blob at the origin?
  UploadLimits& limits;           // shared by the node's endpoints
  UploadSlots& slots;              // data responses in flight, all endpoints

  HotUnits hot;
  std::atomic<bool> stopping{false};  // set before MHD_stop_daemon so streams end at once
  const Clock::time_point started = Clock::now();

  Impl(P2pNode& n, Role r)
      : node(n), role(r), access(n), limits(n.upload_limits()), slots(n.upload_slots()),
        hot(n.config().spread_uploads) {}

  // Low priority: a peer's prefetch (kLowPriorityHeader) or a stock
  // client's whole-blob pull (no Range on the mirror).
  bool is_low_priority(MHD_Connection* conn) const {
    const char* priority = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kLowPriorityHeader);
    const bool whole = role == Role::kMirror && !MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                                               MHD_HTTP_HEADER_RANGE);
    return (priority && std::strcmp(priority, "low") == 0) || whole;
  }
  Pacing pacing_for(MHD_Connection* conn) {
    if (!limits.limited()) return Pacing{};
    return Pacing{&limits, client_address(conn), is_low_priority(conn)};
  }

  // max_uploads: true (and one slot held until the request ends) when a
  // data response may start.
  bool claim_upload(MHD_Connection* conn, RequestContext& ctx) {
    if (ctx.counted_upload) return true;
    const bool low = is_low_priority(conn);
    if (!slots.claim(low)) return false;
    ctx.counted_upload = true;
    ctx.low_priority = low;
    return true;
  }
  MHD_Result busy(MHD_Connection* conn) {
    node.metrics().refused_busy.fetch_add(1, std::memory_order_relaxed);
    MHD_Response* r = MHD_create_response_from_buffer(5, const_cast<char*>("busy\n"), MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_SERVICE_UNAVAILABLE, r);
    MHD_destroy_response(r);
    return ret;
  }

  static MHD_Result on_access(void* cls, MHD_Connection* conn, const char* url, const char* method,
                              const char*, const char*, size_t* upload_data_size, void** con_cls) noexcept {
    // First call: headers only. Bodies are not accepted (GET/HEAD).
    if (*con_cls == nullptr) {
      *con_cls = new RequestContext();
      return MHD_YES;
    }
    if (*upload_data_size != 0) {
      *upload_data_size = 0;  // discard
      return MHD_YES;
    }
    try {
      return static_cast<Impl*>(cls)->handle(conn, url ? url : "", method ? method : "",
                                             *static_cast<RequestContext*>(*con_cls));
    } catch (const std::exception& e) {
      LOG_ERROR("p2p server: %s", e.what());
      return MHD_NO;
    }
  }

  // The end of a request: an upload tracked by HotUnits ends, and a
  // complete one makes its asker a holder.
  static void on_completed(void* cls, MHD_Connection*, void** con_cls, MHD_RequestTerminationCode toe) noexcept {
    auto* ctx = static_cast<RequestContext*>(*con_cls);
    *con_cls = nullptr;
    if (!ctx) return;
    if (ctx->counted_upload) static_cast<Impl*>(cls)->slots.release(ctx->low_priority);
    if (ctx->tracked)
      static_cast<Impl*>(cls)->hot.end(
          ctx->digest, ctx->unit, ctx->first, ctx->end,
          ctx->sending && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? ctx->asker : std::string());
    delete ctx;
  }

  static MHD_Result text(MHD_Connection* conn, unsigned status, const std::string& body,
                         const char* content_type = "text/plain") {
    MHD_Response* r =
        MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
  }

  MHD_Result refuse(MHD_Connection* conn, unsigned status, const std::string& why) {
    node.metrics().upload_errors.fetch_add(1, std::memory_order_relaxed);
    return text(conn, status, why + "\n");
  }

  // 401 with the reason; counted; logged once per client address and reason.
  MHD_Result refuse_unauthenticated(MHD_Connection* conn, AuthVerdict verdict, const std::string& detail = "") {
    P2pMetrics& m = node.metrics();
    switch (verdict) {
      case AuthVerdict::kMissing: m.refused_unsigned.fetch_add(1, std::memory_order_relaxed); break;
      case AuthVerdict::kStale: m.refused_stale.fetch_add(1, std::memory_order_relaxed); break;
      case AuthVerdict::kReplayed: m.refused_replayed.fetch_add(1, std::memory_order_relaxed); break;
      case AuthVerdict::kNoCertificate: m.refused_no_certificate.fetch_add(1, std::memory_order_relaxed); break;
      case AuthVerdict::kUntrustedCertificate:
        m.refused_untrusted_certificate.fetch_add(1, std::memory_order_relaxed);
        break;
      default: m.refused_bad_signature.fetch_add(1, std::memory_order_relaxed); break;
    }
    const std::string client = client_address(conn);
    bool first = false;
    {
      std::lock_guard<std::mutex> g(refusals_mu);
      if (refusals_logged.size() < 4096) first = refusals_logged.emplace(client, verdict).second;
    }
    if (first)
      LOG_WARN("p2p: refusing requests from %s: %s%s%s (logged once per address and reason; see the refused_* "
               "metrics)", client.c_str(), auth_verdict_name(verdict), detail.empty() ? "" : ": ", detail.c_str());
    std::string body = std::string("peer request refused: ") + auth_verdict_name(verdict) + "\n";
    MHD_Response* r =
        MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain");
    MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "NydusP2P");
    MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_UNAUTHORIZED, r);
    MHD_destroy_response(r);
    return ret;
  }

  // Requests by kind of client: our peers (they name themselves), stock
  // nydusd and containerd (by User-Agent), anything else.
  void count_client(MHD_Connection* conn) {
    P2pMetrics& m = node.metrics();
    if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kPeerHeader)) {
      m.requests_from_peers.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const char* ua = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_USER_AGENT);
    const std::string agent = ua ? ua : "";
    if (agent.find("containerd") != std::string::npos) m.requests_from_containerd.fetch_add(1, std::memory_order_relaxed);
    else if (agent.find("nydus") != std::string::npos) m.requests_from_nydusd.fetch_add(1, std::memory_order_relaxed);
    else m.requests_from_others.fetch_add(1, std::memory_order_relaxed);
  }

  MHD_Result handle(MHD_Connection* conn, const std::string& path, const std::string& method, RequestContext& ctx) {
    const bool head = method == "HEAD";
    if (method != "GET" && !head) return refuse(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD");
    if (path == "/server/ping" || path == "/healthy") return text(conn, MHD_HTTP_OK, "");
    if (path == "/ready") {
      // Readiness (a Kubernetes probe): the daemon serves and this node is
      // not leaving; the servers are listening, or this would not answer.
      const std::string why = node.not_ready();
      return why.empty() ? text(conn, MHD_HTTP_OK, "") : text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, why + "\n");
    }
    if (role == Role::kHealth && path == "/metrics")
      return text(conn, MHD_HTTP_OK, node.prometheus(), "text/plain; version=0.0.4");
    if (role == Role::kHealth)
      return text(conn, MHD_HTTP_NOT_FOUND, "this port answers /server/ping, /healthy, /ready and /metrics only\n");
    if (role == Role::kPeers && node.draining()) {
      node.metrics().refused_draining.fetch_add(1, std::memory_order_relaxed);
      return refuse(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "this node is draining; ask the next owner");
    }
    if (role == Role::kPeers && node.tls()) {
      const MHD_ConnectionInfo* info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
      std::string why = "no TLS session";
      const AuthVerdict verdict = info && info->tls_session
                                      ? node.tls()->verify_client(static_cast<gnutls_session_t>(info->tls_session), &why)
                                      : AuthVerdict::kNoCertificate;
      if (verdict != AuthVerdict::kOk) return refuse_unauthenticated(conn, verdict, why);
    }
    if (role == Role::kPeers && node.auth()) {
      const char* range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE);
      const AuthVerdict verdict = node.auth()->verify(
          method, path, range ? range : "", MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kPeerAuthHeader));
      if (verdict != AuthVerdict::kOk) return refuse_unauthenticated(conn, verdict);
    }
    count_client(conn);
    auto target = parse_blob_path(path);
    if (!target.ok() && target.status().code() == Code::kInvalidInput)
      return refuse(conn, MHD_HTTP_BAD_REQUEST, target.status().message());
    auto origin = origin_from(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Dragonfly-Registry"),
                              MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "ns"));
    if (!origin.ok()) return refuse(conn, MHD_HTTP_BAD_REQUEST, origin.status().message());
    const char* auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    // A member that cannot reach the origin asks it through this node (signed, checked above).
    // Only the registry API: a member may not use this node to reach anything else on the origin's host.
    if (role == Role::kPeers && MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kViaPeerHeader)) {
      if (path.rfind("/v2/", 0) != 0 && path != "/v2")
        return refuse(conn, MHD_HTTP_FORBIDDEN, "only the registry API (/v2/) is passed on for a peer");
      return passthrough(conn, method, path, *origin, auth, /*for_peer=*/true);
    }
    if (!target.ok()) {
      if (path.rfind("/v2/", 0) == 0 || path == "/v2") return passthrough(conn, method, path, *origin, auth, false);
      return refuse(conn, MHD_HTTP_NOT_FOUND, "no such route");
    }
    BlobLocation loc{*origin, target->repo, target->digest, auth ? auth : ""};
    if (role == Role::kMirror) {
      // A stock client gets bytes only of blobs it could read at the origin.
      if (loc.registry.empty())
        return refuse(conn, MHD_HTTP_BAD_REQUEST, "no origin named (X-Dragonfly-Registry or ?ns=)");
      AccessCheck::Verdict v = access.check(loc);
      if (!v.allowed) {
        node.metrics().refused_access.fetch_add(1, std::memory_order_relaxed);
        return refuse(conn, v.status, v.reason);
      }
    }
    return serve_blob(conn, loc, head, ctx);
  }

  MHD_Result serve_blob(MHD_Connection* conn, const BlobLocation& loc, bool head, RequestContext& ctx) {
    // A blob the store does not know needs its size from the origin before
    // the answer's Content-Range can be written. A peer asking tells the
    // size it expects (kSizeHintHeader); then the answer goes out at once
    // and the fetch worker checks the hint against the origin before any
    // byte is sent, so an origin round trip through a busy link never eats
    // the asker's response deadline. A wrong hint only fails that answer.
    std::shared_ptr<StoredBlob> known = node.store().find(loc.digest);
    // Held bytes only (a new owner asking the previous one after a
    // membership change, an asker sent to a holder): bytes stored here or
    // being fetched here (the answer follows that fetch), never an origin
    // fetch of its own.
    const bool held_only = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kHeldOnlyHeader) != nullptr && !head;
    if (held_only) {
      const char* range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE);
      if (!known || !range) return text(conn, MHD_HTTP_NOT_FOUND, "not held here\n");
      auto span = parse_range_header(range, known->size());
      if (!span.ok() || !known->is_covered(span->first, span->last - span->first + 1))
        return text(conn, MHD_HTTP_NOT_FOUND, "not held here\n");
    }
    if (!head) {
      // Just started: the next owner may have fetched what this one lacks.
      if (MHD_Result redirected; redirect_to_fallback_owner(conn, loc, known.get(), &redirected)) return redirected;
      // A hot unit: send the asker to a node that already downloaded it.
      if (MHD_Result redirected; spread(conn, loc, ctx, &redirected)) return redirected;
    }
    uint64_t hint = 0;
    if (!known && !head && !loc.registry.empty())
      if (const char* h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kSizeHintHeader); h && parse_dec(h, &hint) &&
          hint > 0)
        return claim_upload(conn, ctx) ? serve_unknown_blob(conn, loc, hint, ctx) : busy(conn);
    long origin_status = 0;
    auto blob = known ? Result<std::shared_ptr<StoredBlob>>(known)
                      : node.stored_blob(loc.digest, [&]() -> Result<uint64_t> {
                          if (loc.registry.empty())
                            return Status::not_found(
                                "blob not held here and no origin named (X-Dragonfly-Registry or ?ns=)");
                          auto size = node.client().origin_size(loc, &origin_status);
                          // A stock client on a node cut from the origin: the owners
                          // know the size. Not for peers: two cut nodes would ask
                          // each other in a circle.
                          if (role == Role::kMirror && !size.ok() && origin_status == 0 &&
                              size.status().code() != Code::kNotFound)
                            if (auto from_peers = node.size_from_owners(loc, size.status().message()); from_peers.ok())
                              return from_peers;
                          return size;
                        });
    if (!blob.ok()) {
      unsigned status = MHD_HTTP_BAD_GATEWAY;
      if (blob.status().code() == Code::kNotFound) status = MHD_HTTP_NOT_FOUND;
      else if (origin_status == 401 || origin_status == 403) status = static_cast<unsigned>(origin_status);
      else if (blob.status().code() == Code::kInvalidInput) status = MHD_HTTP_BAD_REQUEST;
      return refuse(conn, status, blob.status().message());
    }
    const uint64_t size = (*blob)->size();
    if (head) {
      MHD_Response* r = MHD_create_response_from_callback(size, 4096, &no_body, nullptr, nullptr);
      if (!r) return MHD_NO;
      MHD_add_response_header(r, "Docker-Content-Digest", ("sha256:" + loc.digest).c_str());
      MHD_add_response_header(r, "Accept-Ranges", "bytes");
      MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
      MHD_destroy_response(r);
      return ret;
    }
    ByteSpan span{0, size == 0 ? 0 : size - 1};
    bool ranged = false;
    if (const char* range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE)) {
      auto parsed = parse_range_header(range, size);
      if (!parsed.ok()) {
        if (parsed.status().code() == Code::kInvalidInput)
          return refuse(conn, MHD_HTTP_BAD_REQUEST, parsed.status().message());
        MHD_Response* r = MHD_create_response_from_buffer(0, nullptr, MHD_RESPMEM_PERSISTENT);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_RANGE, ("bytes */" + std::to_string(size)).c_str());
        node.metrics().upload_errors.fetch_add(1, std::memory_order_relaxed);
        MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_RANGE_NOT_SATISFIABLE, r);
        MHD_destroy_response(r);
        return ret;
      }
      span = *parsed;
      ranged = true;
    }
    const uint64_t length = size == 0 ? 0 : span.last - span.first + 1;
    if (!claim_upload(conn, ctx)) return busy(conn);
    P2pMetrics& m = node.metrics();
    m.upload_requests.fetch_add(1, std::memory_order_relaxed);
    PeerUpload& upload = m.upload(client_address(conn));
    upload.requests.fetch_add(1, std::memory_order_relaxed);

    MHD_Response* r = nullptr;
    // A whole blob for a stock client goes through the relay even when held
    // here: it is checked against its sha256 on the way out. Paced uploads
    // cannot use sendfile (the kernel would send at its own speed).
    const bool verify_whole = role == Role::kMirror && !ranged && length > 0;
    if (!verify_whole && !limits.limited() && (*blob)->is_ready(span.first, length)) {
      m.owner_hits.fetch_add(1, std::memory_order_relaxed);
      const int fd = dup((*blob)->data_fd());
      if (fd < 0) return refuse(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot dup the piece file");
      r = MHD_create_response_from_fd_at_offset64(length, fd, span.first);  // sendfile; MHD closes fd
      if (!r) {
        close(fd);
        return MHD_NO;
      }
      m.upload_bytes.fetch_add(length, std::memory_order_relaxed);
      upload.bytes.fetch_add(length, std::memory_order_relaxed);
    } else if (role == Role::kMirror) {
      if (loc.registry.empty()) return refuse(conn, MHD_HTTP_NOT_FOUND, "range not held here and no origin named");
      auto relay = std::make_unique<RelayStream>();
      relay->pacing = pacing_for(conn);
      relay->relay = std::make_unique<MirrorRelay>(node, loc, *blob, span.first, length, verify_whole);
      relay->metrics = &m;
      relay->upload = &upload;
      r = MHD_create_response_from_callback(length, kStreamBlock, &relay_block, relay.get(), &free_relay);
      if (!r) return MHD_NO;
      relay.release();  // MHD frees it through free_relay
    } else {
      if (loc.registry.empty() && !held_only)
        return refuse(conn, MHD_HTTP_NOT_FOUND, "range not held here and no origin named");
      auto stream = std::make_unique<Stream>();
      stream->pacing = pacing_for(conn);
      stream->blob = *blob;
      stream->stopping = &stopping;
      stream->first = span.first;
      stream->length = length;
      stream->metrics = &m;
      stream->upload = &upload;
      // Held-only and being fetched here (checked above): follow that fetch,
      // no fetch of our own (Stream.fetch stays null: the stream ends with an
      // error if that fetch fails); neither an owner hit nor a miss. Held
      // whole (a paced upload): an owner hit, no fetch either.
      if ((*blob)->is_ready(span.first, length)) {
        m.owner_hits.fetch_add(1, std::memory_order_relaxed);
      } else if (!held_only) {
        m.owner_misses.fetch_add(1, std::memory_order_relaxed);
        stream->fetch = std::make_shared<FetchState>();
        start_fetch(*blob, loc, span.first, length, stream->fetch);
      }
      r = MHD_create_response_from_callback(length, kStreamBlock, &stream_block, stream.get(), &free_stream);
      if (!r) return MHD_NO;
      stream.release();  // MHD frees it through free_stream
    }
    MHD_add_response_header(r, "Docker-Content-Digest", ("sha256:" + loc.digest).c_str());
    MHD_add_response_header(r, "Accept-Ranges", "bytes");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
    if (ranged)
      MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_RANGE,
                              ("bytes " + std::to_string(span.first) + "-" + std::to_string(span.last) + "/" +
                               std::to_string(size))
                                  .c_str());
    MHD_Result ret = MHD_queue_response(conn, ranged ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, r);
    ctx.sending = ret == MHD_YES;
    MHD_destroy_response(r);
    return ret;
  }

  // 307 to `holder` (X-Nydus-Holder; Location for HTTP clients): the asker
  // asks it for held bytes only and comes back with X-Nydus-No-Redirect
  // when it lacks them.
  MHD_Result redirect_to(MHD_Connection* conn, const std::string& holder, const BlobLocation& loc,
                         bool detour = false) {
    MHD_Response* r = MHD_create_response_from_buffer(0, nullptr, MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, kHolderHeader, holder.c_str());
    if (detour) MHD_add_response_header(r, kDetourHeader, "1");
    MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, ("http://" + holder + loc.path()).c_str());
    MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_TEMPORARY_REDIRECT, r);
    MHD_destroy_response(r);
    return ret;
  }

  // Askers that found this node not listening yet (nodes starting at once,
  // a restart) or too slow went to the next owner in rendezvous order,
  // which fetched the range from the origin. So for a while after start,
  // the unit's owner that neither holds nor is fetching an asked range
  // first sends the asker to that next owner (excluding the asker) for held
  // or in-flight bytes: one LAN round trip instead of a second origin
  // fetch. Only the unit's first owner does this, only for peers that named
  // themselves and were not sent back already, and not while a membership
  // change settles: askers ask the previous owner first then, and a second
  // detour per miss would only lengthen reads while ownership keeps
  // moving. Returns true with *result set when it redirected.
  bool redirect_to_fallback_owner(MHD_Connection* conn, const BlobLocation& loc, const StoredBlob* known,
                                  MHD_Result* result) {
    if (Clock::now() - started >= kOwnerDetourWindow || node.membership_changed_recently()) return false;
    const char* asker = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kPeerHeader);
    const char* range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE);
    if (!asker || !range || MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kHeldOnlyHeader) ||
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kNoRedirectHeader))
      return false;
    auto span = parse_range_header(range, known ? known->size() : UINT64_MAX);
    if (!span.ok()) return false;
    if (known && known->is_covered(span->first, span->last - span->first + 1)) return false;
    const std::string next = node.fallback_owner(loc.digest, span->first / node.config().unit_size, asker);
    if (next.empty()) return false;
    node.metrics().fallback_redirects.fetch_add(1, std::memory_order_relaxed);
    *result = redirect_to(conn, next, loc, /*detour=*/true);
    return true;
  }

  // For a ranged GET from a peer that named itself (held bytes only or
  // not): admits the upload in `hot` (tracked until it ends; returns
  // false), or answers with a redirect to a holder or a wait (returns true,
  // *result set). p2p/hot_units.h has the rule.
  bool spread(MHD_Connection* conn, const BlobLocation& loc, RequestContext& ctx, MHD_Result* result) {
    const char* asker = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kPeerHeader);
    const char* range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE);
    if (!asker || !range) return false;
    if (!split_host_port(asker, "asker").ok()) return false;
    auto span = parse_range_header(range, UINT64_MAX);
    if (!span.ok()) return false;
    const uint64_t unit = span->first / node.config().unit_size;
    const bool last_resort = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, kNoRedirectHeader) != nullptr;
    const uint64_t end = span->last + 1;
    const HotUnits::Admission admission = hot.admit(loc.digest, unit, span->first, end, asker, last_resort);
    if (admission.kind == HotUnits::Admission::kRedirect) {
      node.metrics().redirects_sent.fetch_add(1, std::memory_order_relaxed);
      *result = redirect_to(conn, admission.holder, loc);
      return true;
    }
    if (admission.kind == HotUnits::Admission::kWait) {
      node.metrics().waits_sent.fetch_add(1, std::memory_order_relaxed);
      *result = come_back_later(conn);
      return true;
    }
    ctx.tracked = true;
    ctx.digest = loc.digest;
    ctx.unit = unit;
    ctx.first = span->first;
    ctx.end = end;
    ctx.asker = asker;
    return false;
  }

  // 503 with X-Nydus-Wait: the unit's uploads are at capacity and no
  // holder exists yet; the asker asks this node again shortly (unlike a
  // plain 503, which sends it to the next owner).
  MHD_Result come_back_later(MHD_Connection* conn) {
    MHD_Response* r = MHD_create_response_from_buffer(0, nullptr, MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, kWaitHeader, "1");
    MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_SERVICE_UNAVAILABLE, r);
    MHD_destroy_response(r);
    return ret;
  }

  // serve_blob for a blob the store does not hold, on the asker's size
  // hint (a ranged GET only).
  MHD_Result serve_unknown_blob(MHD_Connection* conn, const BlobLocation& loc, uint64_t size, RequestContext& ctx) {
    const char* range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE);
    if (!range) return refuse(conn, MHD_HTTP_BAD_REQUEST, std::string(kSizeHintHeader) + " needs a Range");
    auto span = parse_range_header(range, size);
    if (!span.ok()) return refuse(conn, MHD_HTTP_BAD_REQUEST, span.status().message());
    const uint64_t length = span->last - span->first + 1;
    P2pMetrics& m = node.metrics();
    m.upload_requests.fetch_add(1, std::memory_order_relaxed);
    m.owner_misses.fetch_add(1, std::memory_order_relaxed);
    PeerUpload& upload = m.upload(client_address(conn));
    upload.requests.fetch_add(1, std::memory_order_relaxed);
    auto stream = std::make_unique<Stream>();
    stream->pacing = pacing_for(conn);
    stream->stopping = &stopping;
    stream->first = span->first;
    stream->length = length;
    stream->metrics = &m;
    stream->upload = &upload;
    stream->fetch = std::make_shared<FetchState>();
    start_fetch(nullptr, loc, span->first, length, stream->fetch, size);
    MHD_Response* r = MHD_create_response_from_callback(length, kStreamBlock, &stream_block, stream.get(), &free_stream);
    if (!r) return MHD_NO;
    stream.release();
    MHD_add_response_header(r, "Docker-Content-Digest", ("sha256:" + loc.digest).c_str());
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_RANGE,
                            ("bytes " + std::to_string(span->first) + "-" + std::to_string(span->last) + "/" +
                             std::to_string(size))
                                .c_str());
    MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_PARTIAL_CONTENT, r);
    ctx.sending = ret == MHD_YES;
    MHD_destroy_response(r);
    return ret;
  }

  // Fetches [first, first + length) from the origin on a worker. Without
  // `blob`, the worker first creates the store entry, its size from the
  // origin, and fails when that is not `expected_size`.
  void start_fetch(std::shared_ptr<StoredBlob> blob, BlobLocation loc, uint64_t first, uint64_t length,
                   std::shared_ptr<FetchState> state, uint64_t expected_size = 0) {
    P2pNode* n = &node;
    node.submit([n, blob = std::move(blob), loc = std::move(loc), first, length, state = std::move(state),
                 expected_size]() mutable {
      if (!blob) {
        auto created = n->stored_blob(loc.digest, [&]() { return n->client().origin_size(loc); });
        if (created.ok() && (*created)->size() != expected_size)
          created = Status::invalid("the asker expects " + std::to_string(expected_size) + " bytes, the blob has " +
                                    std::to_string((*created)->size()));
        if (!created.ok()) {
          LOG_WARN("p2p: blob %s for a peer: %s", loc.digest.substr(0, 12).c_str(), created.status().message().c_str());
          state->finish(created.status());
          return;
        }
        blob = *created;
        state->set_blob(blob);
      }
      Status s = n->ensure_from_origin(*blob, loc, first, length, Clock::now() + kFetchDeadline);
      if (!s.ok())
        LOG_WARN("p2p: fetching %s [%llu, +%llu) from %s for a peer: %s", loc.digest.substr(0, 12).c_str(),
                 static_cast<unsigned long long>(first), static_cast<unsigned long long>(length),
                 loc.registry.c_str(), s.message().c_str());
      state->finish(std::move(s));
    });
  }

  // The request to the origin unchanged, its answer back. When the origin
  // cannot be reached from here, other members are asked to pass it on,
  // unless this request is itself one passed on by a member (`for_peer`).
  MHD_Result passthrough(MHD_Connection* conn, const std::string& method, const std::string& path,
                         const std::string& origin, const char* auth, bool for_peer) {
    if (origin.empty()) return refuse(conn, MHD_HTTP_BAD_REQUEST, "no origin named (X-Dragonfly-Registry or ?ns=)");
    node.metrics().passthrough_requests.fetch_add(1, std::memory_order_relaxed);
    std::vector<std::string> headers;
    if (auth) headers.push_back(std::string("Authorization: ") + auth);
    if (const char* accept = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT))
      headers.push_back(std::string("Accept: ") + accept);
    std::string url = origin + path;
    std::string query;
    MHD_get_connection_values(
        conn, MHD_GET_ARGUMENT_KIND,
        [](void* cls, MHD_ValueKind, const char* key, const char* value) -> MHD_Result {
          auto* q = static_cast<std::string*>(cls);
          if (std::strcmp(key, "ns") == 0) return MHD_YES;
          *q += (q->empty() ? "?" : "&") + backend::url_encode(key) + (value ? "=" + backend::url_encode(value) : "");
          return MHD_YES;
        },
        &query);
    auto res = node.client().forward(method, url + query, headers);
    if (!res.ok() && !for_peer) {
      auto via = node.origin_via_peers(method, origin, path + query, headers);
      if (via.ok()) res = std::move(via);
      else
        LOG_WARN("p2p: %s %s: the origin failed (%s) and so did asking it through peers (%s)", method.c_str(),
                 path.c_str(), res.status().message().c_str(), via.status().message().c_str());
    }
    if (!res.ok()) return refuse(conn, MHD_HTTP_BAD_GATEWAY, res.status().message());
    MHD_Response* r = nullptr;
    if (method == "HEAD") {
      uint64_t length = 0;
      const std::string* cl = res->header("content-length");
      if (cl && !parse_dec(*cl, &length)) length = 0;
      r = MHD_create_response_from_callback(length, 4096, &no_body, nullptr, nullptr);
    } else {
      r = MHD_create_response_from_buffer(res->body.size(), res->body.data(), MHD_RESPMEM_MUST_COPY);
    }
    if (!r) return MHD_NO;
    for (const char* name : {"content-type", "docker-content-digest", "www-authenticate", "location",
                             "docker-distribution-api-version", "etag"})
      if (const std::string* v = res->header(name)) MHD_add_response_header(r, name, v->c_str());
    MHD_Result ret = MHD_queue_response(conn, static_cast<unsigned>(res->status), r);
    MHD_destroy_response(r);
    return ret;
  }
};

PeerServer::PeerServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PeerServer::~PeerServer() {
  if (!impl_ || !impl_->mhd) return;
  // Streams waiting for origin bytes notice within one wait slice (50 ms);
  // MHD_stop_daemon then joins every connection thread.
  impl_->stopping = true;
  MHD_stop_daemon(impl_->mhd);
}

uint16_t PeerServer::port() const { return impl_->port; }

namespace {
void mhd_logger(void*, const char* fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  std::string line(buf);
  while (!line.empty() && line.back() == '\n') line.pop_back();
  LOG_DEBUG("p2p server (libmicrohttpd): %s", line.c_str());
}
}  // namespace

Result<std::unique_ptr<PeerServer>> PeerServer::start(P2pNode& node, Role role) {
  const P2pConfig& config = node.config();
  const std::string& listen = role == Role::kPeers    ? config.listen
                              : role == Role::kMirror ? config.mirror_listen
                                                      : config.health_listen;
  const std::string field = role == Role::kPeers    ? "p2p.listen"
                            : role == Role::kMirror ? "p2p.mirror_listen"
                                                    : "p2p.health_listen";
  NYDUS_ASSIGN(auto hp, split_host_port(listen, field));
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
  if (MHD_is_feature_supported(MHD_FEATURE_POLL) == MHD_YES) flags |= MHD_USE_POLL;
  if (hp.first.find(':') != std::string::npos) {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&addr);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(hp.second);
    if (inet_pton(AF_INET6, hp.first.c_str(), &a6->sin6_addr) != 1)
      return Status::invalid(field + ": '" + hp.first + "' is not an IPv6 address");
    addr_len = sizeof(sockaddr_in6);
    flags |= MHD_USE_IPv6;
  } else {
    auto* a4 = reinterpret_cast<sockaddr_in*>(&addr);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(hp.second);
    if (inet_pton(AF_INET, hp.first.c_str(), &a4->sin_addr) != 1)
      return Status::invalid(field + ": '" + hp.first + "' is not an IPv4 address");
    addr_len = sizeof(sockaddr_in);
  }
  (void)addr_len;
  auto impl = std::make_unique<Impl>(node, role);
  // Mutual TLS on the peer port: the server certificate from PeerTls at
  // each handshake; the trust list makes libmicrohttpd ask the client for
  // its certificate, which handle() checks (PeerTls::verify_client).
  PeerTls* tls = role == Role::kPeers ? node.tls() : nullptr;
  if (tls && MHD_is_feature_supported(MHD_FEATURE_HTTPS_CERT_CALLBACK) != MHD_YES)
    return Status::unsupported(field + ": this libmicrohttpd has no TLS certificate callback; mutual TLS is unavailable");
  MHD_OptionItem tls_options[] = {{MHD_OPTION_END, 0, nullptr}, {MHD_OPTION_END, 0, nullptr},
                                  {MHD_OPTION_END, 0, nullptr}};
  if (tls) {
    flags |= MHD_USE_TLS;
    tls_options[0] = {MHD_OPTION_HTTPS_CERT_CALLBACK, 0, reinterpret_cast<void*>(tls->install())};
    tls_options[1] = {MHD_OPTION_HTTPS_MEM_TRUST, 0, const_cast<char*>(tls->ca_pem_at_start().c_str())};
  }
  impl->mhd = MHD_start_daemon(flags, hp.second, nullptr, nullptr, &Impl::on_access, impl.get(),
                               MHD_OPTION_ARRAY, tls_options,
                               MHD_OPTION_EXTERNAL_LOGGER, &mhd_logger, nullptr,
                               MHD_OPTION_SOCK_ADDR, reinterpret_cast<sockaddr*>(&addr),
                               MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned>(node.config().upload_connections),
                               MHD_OPTION_CONNECTION_TIMEOUT, 120u,
                               MHD_OPTION_NOTIFY_COMPLETED, &Impl::on_completed, impl.get(),
                               MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
                               MHD_OPTION_END);
  if (!impl->mhd) return Status::io(field + ": cannot listen on " + listen + " (address in use?)");
  const MHD_DaemonInfo* info = MHD_get_daemon_info(impl->mhd, MHD_DAEMON_INFO_BIND_PORT);
  impl->port = info ? info->port : hp.second;
  if (role == Role::kPeers)
    LOG_INFO("p2p: peer server listening on %s (%s%s)", listen.c_str(), tls ? "mutual TLS, " : "",
             node.auth() ? "signed requests only" : "unsigned requests accepted");
  else if (role == Role::kMirror)
    LOG_INFO("p2p: mirror endpoint for clients on this node listening on %s", listen.c_str());
  else
    LOG_INFO("p2p: health probes (/server/ping) answered on %s", listen.c_str());
  return std::unique_ptr<PeerServer>(new PeerServer(std::move(impl)));
}

}  // namespace nydus::p2p
