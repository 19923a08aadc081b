// Counters of the P2P node: what it uploaded to whom, how its peer server
// answered, what failed verification. Download counters (bytes by source:
// piece store, each peer, origin) live in each instance's
// backend::BackendMetrics, next to the registry's own sources.
//
// Thread-safety: atomics; per-peer entries are created under a mutex and
// never removed, so references stay valid.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>

namespace nydus::p2p {

struct PeerUpload {
  explicit PeerUpload(std::string peer_address) : peer(std::move(peer_address)) {}
  const std::string peer;  // the asker's address (no port: askers use ephemeral ports)
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> bytes{0};
};

class P2pMetrics {
 public:
  std::atomic<uint64_t> upload_requests{0};    // blob GETs answered with data
  std::atomic<uint64_t> upload_bytes{0};       // body bytes those answers carried
  std::atomic<uint64_t> upload_errors{0};      // answers aborted or refused (4xx/5xx)
  std::atomic<uint64_t> owner_hits{0};         // asked-for range already in the piece store
  std::atomic<uint64_t> owner_misses{0};       // ... not (fetched from the origin)
  std::atomic<uint64_t> origin_requests{0};    // origin GETs made by the piece store for askers
  std::atomic<uint64_t> origin_bytes{0};
  std::atomic<uint64_t> passthrough_requests{0};  // manifests etc. forwarded unchanged
  std::atomic<uint64_t> origin_via_peers{0};  // origin requests sent through a peer (origin unreachable here)
  std::atomic<uint64_t> peer_requests{0};      // ranges this node asked peers for
  std::atomic<uint64_t> peer_failures{0};      // ... that failed (transport, deadline, bad answer)
  std::atomic<uint64_t> verify_failures{0};    // peer or store bytes that failed verification
  std::atomic<uint64_t> store_hits{0};         // ranges read from the local piece store
  std::atomic<uint64_t> fallbacks_to_origin{0};  // ranges the instance fetched from the origin itself
  std::atomic<uint64_t> redirects_followed{0};   // redirects to a holder this node followed
  std::atomic<uint64_t> redirects_sent{0};       // askers this node's server sent to holders
  std::atomic<uint64_t> waits_sent{0};           // askers of a hot unit told to come back (no holder yet)
  std::atomic<uint64_t> waits_followed{0};       // such answers this node waited out
  std::atomic<uint64_t> fallback_redirects{0};   // askers sent to the next owner just after start
  // Peer-port refusals by reason (p2p/peer_auth.h).
  std::atomic<uint64_t> refused_unsigned{0};
  std::atomic<uint64_t> refused_bad_signature{0};  // malformed or wrong signature
  std::atomic<uint64_t> refused_stale{0};
  std::atomic<uint64_t> refused_replayed{0};
  std::atomic<uint64_t> refused_no_certificate{0};         // mutual TLS: no client certificate
  std::atomic<uint64_t> refused_untrusted_certificate{0};  // ... one not of the cluster CA
  std::atomic<uint64_t> refused_access{0};  // mirror clients the origin would not serve the blob
  std::atomic<uint64_t> refused_busy{0};    // data requests past max_uploads (503)
  std::atomic<uint64_t> refused_draining{0};  // peer requests while draining (503)
  // Requests by client kind (both endpoints).
  std::atomic<uint64_t> requests_from_peers{0};
  std::atomic<uint64_t> requests_from_nydusd{0};
  std::atomic<uint64_t> requests_from_containerd{0};
  std::atomic<uint64_t> requests_from_others{0};

  PeerUpload& upload(const std::string& peer) {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& u : uploads_)
      if (u.peer == peer) return u;
    return uploads_.emplace_back(peer);
  }
  template <typename Fn>
  void for_each_upload(Fn fn) const {
    std::lock_guard<std::mutex> g(mu_);
    for (const auto& u : uploads_) fn(u);
  }

 private:
  mutable std::mutex mu_;
  std::deque<PeerUpload> uploads_;
};

}  // namespace nydus::p2p
