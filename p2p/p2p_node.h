// P2pNode: the one P2P engine of a daemon. It owns the piece store, the
// membership, the peer client and the peer server, and is shared by every
// RAFS instance of the daemon (a shared-mode daemon runs one node for all
// its mounts). Instances reach it through PeerBackend (p2p/peer_backend.h).
//
// Lifetime: start() brings up membership, the peer server and the mirror
// endpoint (listening when it returns); the destructor stops the servers
// (in-flight uploads are cut), then the fetch workers, then membership. Instances must be gone
// before the node.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "p2p/membership.h"
#include "p2p/p2p_config.h"
#include "p2p/p2p_metrics.h"
#include "p2p/peer_auth.h"
#include "p2p/peer_client.h"
#include "p2p/peer_tls.h"
#include "p2p/rate_limiter.h"
#include "p2p/piece_store.h"
#include "p2p/placement.h"

namespace nydus::p2p {

class PeerServer;
class FetchPool;

class P2pNode {
 public:
  // Hooks into the daemon around the node, for the health port (each may
  // be null): why the daemon is not ready to serve ("" when it is: /ready),
  // and the daemon's metrics in Prometheus text (/metrics).
  struct DaemonHooks {
    std::function<std::string()> not_ready;
    std::function<std::string()> prometheus;
  };
  static Result<std::unique_ptr<P2pNode>> start(const P2pConfig& config, DaemonHooks hooks = {});
  ~P2pNode();

  const P2pConfig& config() const { return config_; }
  PieceStore& store() { return *store_; }
  Membership& membership() { return *membership_; }
  PeerClient& client() { return *client_; }
  P2pMetrics& metrics() { return metrics_; }
  // The peer-request signer and checker; null without p2p.secret_file.
  PeerAuth* auth() { return auth_.get(); }
  // Mutual TLS on the peer port; null without p2p.tls_cert/key/ca.
  PeerTls* tls() { return tls_.get(); }
  // Upload pacing and the data responses in flight, shared by the peer
  // port and the mirror (p2p.upload_rate*, p2p.max_uploads).
  UploadLimits& upload_limits() { return upload_limits_; }
  UploadSlots& upload_slots() { return upload_slots_; }
  const std::string& self() const { return membership_->self(); }

  // The usable members in rendezvous order for unit `unit` of `digest`,
  // at most `limit`; this node is among them when it is a member.
  std::vector<std::string> owners(const std::string& digest, uint64_t unit, size_t limit) const;
  // True within that window after a membership change (askers ask previous
  // owners first then).
  bool membership_changed_recently() const;
  // The asker's plan for bytes of `unit` this node lacks (p2p/placement.h).
  MissPlan plan_miss(const std::string& digest, uint64_t unit) const;
  // Within kOwnerDetourWindow of start().
  bool just_started() const;
  // The owner's detour to the next owner just after start (p2p/placement.h).
  std::string fallback_owner(const std::string& digest, uint64_t unit, const std::string& asker) const;

  // The store's blob `digest`, created with the size `size_fn` returns
  // when the store does not know it yet.
  Result<std::shared_ptr<StoredBlob>> stored_blob(const std::string& digest,
                                                  const std::function<Result<uint64_t>()>& size_fn);

  // Asks the unit's owner `owner` for [offset, offset + dst.size()) of the
  // blob (granule-aligned). When the owner sends the asker to a holder (a
  // hot unit, or the next owner just after it started), that holder is
  // asked for held bytes only, unless this node has demoted it, and on
  // along the holders it names (p2p/hot_units.h). A node keeps only bytes
  // it verified: a holder has the chunks it read, `needed` here (absolute,
  // inside the range; {0, 0} = all of it), so it is asked for the whole
  // granules inside `needed`, and the owner, not to send this asker away,
  // for the rest (at most a granule at each end); the next owner of a
  // detour (it fetched whole granules) for all of it. A holder that lacks the
  // bytes of a hot unit (the owner names it as soon as its upload left,
  // before the holder verified it) or is told to wait: the owner again
  // shortly; after a detour: the owner serves. `direct`: the owner is asked
  // not to send this asker away at all (bytes from a holder failed
  // verification). *source: the member whose bytes fill most of `dst`.
  Status fetch_from_owner(const std::string& owner, const BlobLocation& loc, uint64_t blob_size, uint64_t offset,
                          std::span<uint8_t> dst, std::string* source, bool direct = false,
                          std::pair<uint64_t, uint64_t> needed = {0, 0});

  // Makes [offset, offset + length) of `blob` ready from the origin named
  // by `loc`, through the store's single-flight (StoredBlob::ensure),
  // counting origin requests and bytes.
  Status ensure_from_origin(StoredBlob& blob, const BlobLocation& loc, uint64_t offset, uint64_t length,
                            std::chrono::steady_clock::time_point deadline);

  // When this node cannot reach the origin (its link cut, a partition) but
  // other members can: `method` `path_query` asked of the origin `origin`
  // by the members in rendezvous order of the path, each passing it on
  // with the client's own credentials in `headers`. The first answer that
  // is neither a transport failure nor a member's 502; the last failure
  // when none. Manifests, tags and the mirror's access checks go this way.
  Result<backend::HttpResponse> origin_via_peers(const std::string& method, const std::string& origin,
                                                 const std::string& path_query,
                                                 const std::vector<std::string>& headers);
  // The blob's size from the owners of its unit 0 (HEAD, the first that
  // answers), for when the origin cannot tell (`origin_error`, logged with
  // the answer); a peer's word, taken only when nothing better is at hand.
  Result<uint64_t> size_from_owners(const BlobLocation& loc, const std::string& origin_error);

  // Leaves the cluster gracefully: new peer data requests get 503 (askers
  // go to the next owner and leave this node out), /ready answers 503,
  // and this waits up to drain_timeout_ms for uploads in flight. Idempotent;
  // the node keeps reading for its own instances meanwhile.
  void drain();
  bool draining() const { return draining_.load(std::memory_order_acquire); }
  // "" when the node is ready to serve peers, else why not.
  std::string not_ready() const;
  // The daemon's metrics in Prometheus text; "" without the hook.
  std::string prometheus() const { return hooks_.prometheus ? hooks_.prometheus() : std::string(); }

  // Runs `task` on a fetch worker (origin fetches that feed streaming
  // uploads). Tasks still queued at shutdown are dropped; running ones end
  // within their HTTP deadlines.
  void submit(std::function<void()> task);

 private:
  explicit P2pNode(P2pConfig config);
  std::chrono::milliseconds previous_owner_window() const;
  // Calls fn(MemberView) on this moment's membership.
  template <typename Fn>
  auto with_view(Fn fn) const {
    auto members = membership_->members();
    auto previous = membership_->previous_members(previous_owner_window());
    const std::function<bool(const std::string&)> usable = [this](const std::string& m) {
      return membership_->usable(m);
    };
    return fn(MemberView{*members, previous.get(), membership_->self(), usable});
  }

  const P2pConfig config_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  DaemonHooks hooks_;  // set before the servers start
  std::atomic<bool> draining_{false};
  P2pMetrics metrics_;
  UploadLimits upload_limits_;
  UploadSlots upload_slots_;
  std::unique_ptr<PeerAuth> auth_;
  std::unique_ptr<PeerTls> tls_;  // outlives the servers (declared before them, destroyed after)
  std::unique_ptr<PieceStore> store_;
  std::unique_ptr<Membership> membership_;
  std::unique_ptr<PeerClient> client_;
  std::unique_ptr<FetchPool> pool_;
  std::unique_ptr<PeerServer> server_;
  std::unique_ptr<PeerServer> mirror_;
  std::unique_ptr<PeerServer> health_;
};

}  // namespace nydus::p2p
