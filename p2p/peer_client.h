// PeerClient: this node asking other nodes (and, for what nobody holds,
// the origin registry) for raw blob bytes, over the registry blob protocol.
//
// Peer requests carry the origin in X-Dragonfly-Registry, so any peer can
// fetch what it lacks, and they have short deadlines: `peer_timeout_ms` to
// connect and receive the response headers, `peer_stall_ms` of silence
// inside the body. A peer's answer is checked before a byte is used: status
// 206, a Content-Range naming exactly the range asked for and the blob size
// expected, and exactly that many body bytes. Anything else is an error
// (the caller demotes the peer and asks the next one).
//
// With a PeerAuth (set_auth), every range and size request is signed
// (p2p/peer_auth.h); pings are not (/server/ping is open).
//
// Thread-safety: any number of concurrent calls; set_self and set_auth
// before the first.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/blob_backend.h"
#include "backend/http_client.h"
#include "common/status.h"
#include "p2p/blob_location.h"
#include "p2p/p2p_config.h"
#include "p2p/peer_auth.h"
#include "p2p/piece_store.h"

namespace nydus::p2p {

// Sent with a range request made ahead of use (prefetch): "low".
inline constexpr const char* kLowPriorityHeader = "X-Nydus-Priority";
// A peer port request to be passed to the origin unchanged, whatever its
// path: the asker cannot reach the origin itself (P2pNode::origin_via_peers).
inline constexpr const char* kViaPeerHeader = "X-Nydus-Via-Peer";

// A 503 that means "come back shortly" (a hot unit with no holder yet,
// p2p/hot_units.h), not "ask the next owner".
inline constexpr const char* kWaitHeader = "X-Nydus-Wait";

// How to ask a peer for a range (p2p/hot_units.h, p2p/peer_server.cc).
struct RangeAsk {
  bool held_only = false;    // answer only from the piece store (404 -> kNotFound), never the origin
  bool no_redirect = false;  // a last resort: do not send this asker away (to a holder, or to wait)
};

// Where a peer sent the asker instead of answering (kNotFound): to a
// holder of a hot unit, to the next owner just after its start (`detour`),
// or back later.
struct Referral {
  std::string holder;
  bool detour = false;
  bool wait = false;
};

class PeerClient {
 public:
  explicit PeerClient(const P2pConfig& config);

  // Bytes [offset, offset + dst.size()) of the blob from `peer`
  // ("ADDR:PORT"); `blob_size` is what the Content-Range must say.
  // A redirect to a holder of a hot unit, or a wait, is kNotFound with
  // the referral in `*referral` (when given).
  Status fetch_range(const std::string& peer, const BlobLocation& blob, uint64_t blob_size, uint64_t offset,
                     std::span<uint8_t> dst, RangeAsk ask = {}, Referral* referral = nullptr);
  // This node's peer address, sent with every range request so an owner
  // can name it as a holder later.
  void set_self(const std::string& self) { self_ = self; }
  // Signs peer requests with `auth` (owned by the caller, outlives this).
  void set_auth(const PeerAuth* auth) { auth_ = auth; }
  // The blob's size as `peer` reports it (HEAD).
  Result<uint64_t> fetch_size(const std::string& peer, const BlobLocation& blob);
  // GET /server/ping answered 200 within the peer timeout.
  bool ping(const std::string& peer);

  // The origin: bytes [offset, offset + length) handed to `sink` as they
  // arrive, following redirects as origin_request does. Exactly `length`
  // bytes or an error.
  Status fetch_origin(const BlobLocation& blob, uint64_t offset, uint64_t length, const StoredBlob::Sink& sink);
  // The origin's size of the blob (HEAD, following redirects). kNotFound on
  // 404; other statuses are kIo with the status in the message, and
  // `*status` (optional) receives it so a server can pass 401/403 on.
  Result<uint64_t> origin_size(const BlobLocation& blob, long* status = nullptr);
  // Any other request passed to the origin unchanged (manifests, tags):
  // the whole answer, body at most 16 MiB, redirects not followed.
  Result<backend::HttpResponse> forward(const std::string& method, const std::string& url,
                                        std::vector<std::string> headers);
  // The same, asked of the origin `origin` by `peer` on this node's behalf
  // (a signed request with kViaPeerHeader; the peer answers as the origin
  // did, 502 when it cannot reach it either). `path_query` is the request
  // target at the origin ("/v2/...", with its query).
  Result<backend::HttpResponse> forward_via(const std::string& peer, const std::string& method,
                                            const std::string& origin, const std::string& path_query,
                                            std::vector<std::string> headers);

 private:
  backend::HttpRequest peer_request(const std::string& peer, const BlobLocation& blob, const char* method) const;
  // Adds the signature header when a PeerAuth is set; `range` is the Range
  // value sent ("" for none).
  void sign(backend::HttpRequest& req, const BlobLocation& blob, const std::string& range) const;
  // One request for the blob at its origin, built by `prepare` for each
  // hop: up to two redirects are followed by hand, the Authorization sent
  // to the origin only (registries redirect to pre-signed storage URLs that
  // refuse it). The first answer that is not a redirect; *url is the URL
  // that gave it (or is being asked, while `prepare`'s callbacks run).
  Result<backend::HttpResponse> origin_request(const BlobLocation& blob,
                                               const std::function<void(backend::HttpRequest&)>& prepare,
                                               std::string* url);

  const P2pConfig config_;
  const std::string peer_scheme_;  // "https://" with mutual TLS, else "http://"
  std::string self_;
  const PeerAuth* auth_ = nullptr;
  backend::HttpClient peers_;
  backend::HttpClient origin_;
};

// "bytes A-B/TOTAL" -> {A, B, TOTAL}; nullopt for anything else.
struct ContentRange {
  uint64_t first = 0, last = 0, total = 0;
};
bool parse_content_range(const std::string& value, ContentRange* out);

}  // namespace nydus::p2p
