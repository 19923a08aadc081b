#include "p2p/peer_client.h"

#include <chrono>
#include <cstring>

#include "p2p/membership.h"

namespace nydus::p2p {
namespace {

using std::chrono::milliseconds;

std::string range_value(uint64_t offset, uint64_t length) {
  return "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
}

std::string range_header(uint64_t offset, uint64_t length) { return "Range: " + range_value(offset, length); }

bool parse_u64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) return false;
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

}  // namespace

bool parse_content_range(const std::string& value, ContentRange* out) {
  // bytes A-B/TOTAL
  if (value.rfind("bytes ", 0) != 0) return false;
  const std::string rest = value.substr(6);
  const size_t dash = rest.find('-');
  const size_t slash = rest.find('/');
  if (dash == std::string::npos || slash == std::string::npos || slash < dash) return false;
  ContentRange cr;
  if (!parse_u64(rest.substr(0, dash), &cr.first) || !parse_u64(rest.substr(dash + 1, slash - dash - 1), &cr.last) ||
      !parse_u64(rest.substr(slash + 1), &cr.total))
    return false;
  if (cr.last < cr.first || cr.last >= cr.total) return false;
  *out = cr;
  return true;
}

namespace {
// The peer port's client side: mutual TLS with the cluster CA when configured.
backend::TlsOptions peer_tls_options(const P2pConfig& config) {
  backend::TlsOptions tls;
  tls.private_ca = config.tls_ca;
  tls.client_cert = config.tls_cert;
  tls.client_key = config.tls_key;
  return tls;
}
}  // namespace

PeerClient::PeerClient(const P2pConfig& config)
    : config_(config),
      peer_scheme_(config.tls_cert.empty() ? "http://" : "https://"),
      peers_(peer_tls_options(config)),
      origin_({}) {}

backend::HttpRequest PeerClient::peer_request(const std::string& peer, const BlobLocation& blob,
                                              const char* method) const {
  backend::HttpRequest req;
  req.method = method;
  req.url = peer_scheme_ + peer + blob.path();
  req.headers.push_back("X-Dragonfly-Registry: " + blob.registry);
  if (!blob.authorization.empty()) req.headers.push_back("Authorization: " + blob.authorization);
  req.connect_timeout = milliseconds(config_.peer_timeout_ms);
  req.first_byte_timeout = milliseconds(config_.peer_timeout_ms);
  req.stall_timeout = milliseconds(config_.peer_stall_ms);
  // A member whose port refuses is most likely a daemon still starting
  // (nodes of a rollout start together): waiting up to the same deadline
  // for it beats fetching its units from the origin a second time. A dead
  // one costs that deadline once, then it is out of rendezvous.
  req.refused_retry = milliseconds(config_.peer_timeout_ms);
  return req;
}

void PeerClient::sign(backend::HttpRequest& req, const BlobLocation& blob, const std::string& range) const {
  if (auth_) req.headers.push_back(std::string(kPeerAuthHeader) + ": " + auth_->sign(req.method, blob.path(), range));
}

Status PeerClient::fetch_range(const std::string& peer, const BlobLocation& blob, uint64_t blob_size,
                               uint64_t offset, std::span<uint8_t> dst, RangeAsk ask, Referral* referral) {
  if (dst.empty()) return Status::Ok();
  backend::HttpRequest req = peer_request(peer, blob, "GET");
  req.headers.push_back(range_header(offset, dst.size()));
  // Lets an owner that has not met the blob yet answer before it asked the
  // origin for the size (p2p/peer_server.cc).
  req.headers.push_back("X-Nydus-Blob-Size: " + std::to_string(blob_size));
  if (ask.held_only) req.headers.push_back("X-Nydus-Held-Only: 1");
  if (ask.no_redirect) req.headers.push_back("X-Nydus-No-Redirect: 1");
  if (!self_.empty()) req.headers.push_back("X-Nydus-Peer: " + self_);
  // Prefetch: the owner may serve on-demand askers first (p2p/rate_limiter.h).
  if (backend::reading_ahead()) req.headers.push_back(std::string(kLowPriorityHeader) + ": low");
  sign(req, blob, range_value(offset, dst.size()));
  req.sink = dst;
  NYDUS_ASSIGN(const backend::HttpResponse res, peers_.perform(req));
  const std::string where = "peer " + peer + " blob " + blob.digest.substr(0, 12);
  if (ask.held_only && res.status == 404) return Status::not_found(where + ": range not held");
  if (res.status == 307) {
    const std::string* to = res.header("x-nydus-holder");
    if (!to || to->empty() || !split_host_port(*to, "holder").ok())
      return Status::io(where + ": redirect without a valid X-Nydus-Holder");
    if (referral) {
      referral->holder = *to;
      referral->detour = res.header("x-nydus-detour") != nullptr;
    }
    return Status::not_found(where + ": sent to holder " + *to);
  }
  if (res.status == 503 && res.header("x-nydus-wait")) {
    if (referral) referral->wait = true;
    return Status::not_found(where + ": told to come back later");
  }
  if (res.status != 206) return Status::io(where + ": answered " + std::to_string(res.status) + " to a range request");
  ContentRange cr;
  const std::string* value = res.header("content-range");
  if (!value || !parse_content_range(*value, &cr) || cr.first != offset || cr.last != offset + dst.size() - 1 ||
      cr.total != blob_size)
    return Status::io(where + ": Content-Range '" + (value ? *value : "") + "' does not match the range asked for");
  if (res.sink_bytes != dst.size() || res.body_overflow)
    return Status::io(where + ": body of " + std::to_string(res.sink_bytes) + " bytes for a range of " +
                      std::to_string(dst.size()));
  return Status::Ok();
}

Result<uint64_t> PeerClient::fetch_size(const std::string& peer, const BlobLocation& blob) {
  backend::HttpRequest req = peer_request(peer, blob, "HEAD");
  // The peer may have to ask the origin first: allow it the stall time.
  req.first_byte_timeout = milliseconds(config_.peer_stall_ms);
  sign(req, blob, "");
  NYDUS_ASSIGN(const backend::HttpResponse res, peers_.perform(req));
  if (res.status == 404) return Status::not_found("peer " + peer + ": blob " + blob.digest + " not found");
  if (res.status != 200) return Status::io("peer " + peer + ": HEAD answered " + std::to_string(res.status));
  uint64_t size = 0;
  const std::string* length = res.header("content-length");
  if (!length || !parse_u64(*length, &size)) return Status::io("peer " + peer + ": HEAD without a valid Content-Length");
  return size;
}

bool PeerClient::ping(const std::string& peer) {
  backend::HttpRequest req;
  req.url = peer_scheme_ + peer + "/server/ping";
  req.connect_timeout = milliseconds(config_.peer_timeout_ms);
  req.timeout = milliseconds(std::max<uint32_t>(config_.peer_timeout_ms * 5, 500));
  auto res = peers_.perform(req);
  return res.ok() && res->status == 200;
}

Result<backend::HttpResponse> PeerClient::origin_request(const BlobLocation& blob,
                                                        const std::function<void(backend::HttpRequest&)>& prepare,
                                                        std::string* url) {
  *url = blob.origin_url();
  for (int hop = 0; hop < 3; ++hop) {
    backend::HttpRequest req;
    req.url = *url;
    if (hop == 0 && !blob.authorization.empty()) req.headers.push_back("Authorization: " + blob.authorization);
    prepare(req);
    NYDUS_ASSIGN(backend::HttpResponse res, origin_.perform(req));
    if (res.status < 300 || res.status >= 400) return res;
    const std::string* location = res.header("location");
    if (!location || location->empty()) return Status::io("origin " + *url + ": redirect without Location");
    *url = *location;
  }
  return Status::io("origin " + blob.origin_url() + ": too many redirects");
}

Status PeerClient::fetch_origin(const BlobLocation& blob, uint64_t offset, uint64_t length,
                                const StoredBlob::Sink& sink) {
  if (length == 0) return Status::Ok();
  std::string url;
  uint64_t delivered = 0;  // redirects carry no body to on_data: only the final answer counts
  Status sink_error;
  bool whole_blob_cut = false;
  auto res = origin_request(
      blob,
      [&](backend::HttpRequest& req) {
        req.headers.push_back(range_header(offset, length));
        req.connect_timeout = std::chrono::seconds(5);
        req.stall_timeout = std::chrono::seconds(10);
        req.first_byte_timeout = std::chrono::seconds(10);
        req.on_data = [&](long answer, std::span<const uint8_t> bytes) {
          if (answer == 200 && offset != 0) {
            sink_error = Status::io("origin " + url + " ignored the Range header (200 for a range at " +
                                    std::to_string(offset) + ")");
            return false;
          }
          // A 200 from offset 0 is the whole blob: keep the part asked for.
          if (delivered + bytes.size() > length) {
            if (answer == 206) {
              sink_error =
                  Status::io("origin " + url + " sent more than the " + std::to_string(length) + " bytes asked for");
              return false;
            }
            bytes = bytes.first(length - delivered);
          }
          delivered += bytes.size();
          Status s = sink(bytes);
          if (s.ok() && delivered == length && answer == 200) {
            whole_blob_cut = true;
            return false;  // the rest of the blob is not needed
          }
          if (!s.ok()) {
            sink_error = s;
            return false;
          }
          return true;
        };
      },
      &url);
  if (whole_blob_cut) return Status::Ok();
  if (!sink_error.ok()) return sink_error;
  if (!res.ok()) return res.status();
  if (res->status != 206 && res->status != 200) {
    if (res->status == 404) return Status::not_found("origin " + url + ": not found (404)");
    return Status::io("origin " + url + " answered " + std::to_string(res->status));
  }
  if (delivered != length)
    return Status::io("origin " + url + ": " + std::to_string(delivered) + " of " + std::to_string(length) + " bytes");
  return Status::Ok();
}

Result<uint64_t> PeerClient::origin_size(const BlobLocation& blob, long* status_out) {
  auto head = [](backend::HttpRequest& req) {
    req.method = "HEAD";
    req.connect_timeout = std::chrono::seconds(5);
    req.timeout = std::chrono::seconds(10);
  };
  std::string url;
  NYDUS_ASSIGN(const backend::HttpResponse res, origin_request(blob, head, &url));
  if (status_out) *status_out = res.status;
  if (res.status == 404) return Status::not_found("origin " + url + ": not found (404)");
  if (res.status != 200) return Status::io("origin " + url + ": HEAD answered " + std::to_string(res.status));
  uint64_t size = 0;
  const std::string* length = res.header("content-length");
  if (!length || !parse_u64(*length, &size)) return Status::io("origin " + url + ": HEAD without Content-Length");
  return size;
}

Result<backend::HttpResponse> PeerClient::forward(const std::string& method, const std::string& url,
                                                 std::vector<std::string> headers) {
  backend::HttpRequest req;
  req.method = method;
  req.url = url;
  req.headers = std::move(headers);
  req.connect_timeout = std::chrono::seconds(5);
  req.timeout = std::chrono::seconds(30);
  req.max_body_bytes = 16u << 20;
  return origin_.perform(req);
}

Result<backend::HttpResponse> PeerClient::forward_via(const std::string& peer, const std::string& method,
                                                     const std::string& origin, const std::string& path_query,
                                                     std::vector<std::string> headers) {
  backend::HttpRequest req;
  req.method = method;
  req.url = peer_scheme_ + peer + path_query;
  req.headers = std::move(headers);
  req.headers.push_back("X-Dragonfly-Registry: " + origin);
  req.headers.push_back(std::string(kViaPeerHeader) + ": 1");
  if (!self_.empty()) req.headers.push_back("X-Nydus-Peer: " + self_);
  if (auth_) {
    // The signature covers the path; the query is not part of it (the
    // server verifies against the path libmicrohttpd hands it).
    const std::string path = path_query.substr(0, path_query.find('?'));
    req.headers.push_back(std::string(kPeerAuthHeader) + ": " + auth_->sign(method, path, ""));
  }
  req.connect_timeout = milliseconds(config_.peer_timeout_ms);
  req.timeout = std::chrono::seconds(30);
  req.max_body_bytes = 16u << 20;
  return peers_.perform(req);
}

}  // namespace nydus::p2p
