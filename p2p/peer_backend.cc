#include "p2p/peer_backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "common/log.h"
#include "common/uninit_bytes.h"
#include "p2p/p2p_node.h"

namespace nydus::p2p {
namespace {

using Clock = std::chrono::steady_clock;

// How long a read may wait for another caller's fetch of the same bytes.
constexpr auto kOriginDeadline = std::chrono::seconds(120);
// Largest piece of an origin fetch made as one registry request. A range
// never crosses a placement unit, so with units up to this size one range
// is one request (one round trip to the registry; 256 KiB pieces made a
// 1 MiB range cost four). Peers asking for the same bytes meanwhile get
// them when the piece is in; their own origin fetches stream (peer_server).
constexpr uint64_t kOriginPiece = 4u << 20;

// Bytes a peer sent, held back from the piece store until the chunk
// reader has verified them (report_good), so that this node never relays a
// byte that failed, or has not yet passed, verification.
struct PeerAnswer {
  uint64_t offset = 0, end = 0;  // granule-aligned (end may be the blob's end)
  std::string peer;
  UninitBytes bytes;
};
// Bounds of the held-back answers, and of the granules verified in part
// (a chunk starts or ends inside them): verified bytes that never complete
// a granule within these bounds are simply not kept.
// The chunk reader verifies an answer right after the read that fetched
// it, so only answers of reads in flight are waiting: 16 bounds the memory
// at 16 units per blob.
constexpr size_t kMaxHeldAnswers = 16;
constexpr size_t kMaxPartialGranules = 4096;

// A granule of which some bytes are verified: the bytes and which ranges
// (offsets inside the granule, merged) they are.
struct PartialGranule {
  std::vector<uint8_t> bytes;
  std::vector<std::pair<uint64_t, uint64_t>> covered;
};

class PeerReader final : public backend::BlobReader {
 public:
  PeerReader(std::shared_ptr<backend::BlobReader> origin, P2pNode& node, BlobLocation location,
             backend::BackendMetrics& metrics)
      : origin_(std::move(origin)), node_(node), loc_(std::move(location)), metrics_(metrics),
        store_counters_(metrics.source("p2p store")) {}

  Result<uint64_t> size() override {
    NYDUS_ASSIGN(auto blob, stored());
    return blob->size();
  }

  Result<size_t> try_read(uint64_t offset, std::span<uint8_t> dst) override {
    if (dst.empty()) return size_t{0};
    NYDUS_ASSIGN(auto blob, stored());
    const uint64_t size = blob->size();
    if (offset >= size) return size_t{0};
    const P2pConfig& cfg = node_.config();
    const uint64_t unit = offset / cfg.unit_size;
    const uint64_t unit_end = std::min(size, (unit + 1) * cfg.unit_size);
    const uint64_t length = std::min<uint64_t>(dst.size(), unit_end - offset);
    dst = dst.first(length);

    const auto start = Clock::now();
    if (blob->is_ready(offset, length)) {
      NYDUS_TRY(blob->read(offset, dst));
      node_.metrics().store_hits.fetch_add(1, std::memory_order_relaxed);
      count(store_counters_, length, start, true);
      return static_cast<size_t>(length);
    }

    // The granule-aligned range peers are asked for.
    const uint64_t g = node_.store().granule_size();
    const uint64_t first = offset / g * g;
    const uint64_t end = std::min(size, (offset + length + g - 1) / g * g);
    // Bytes that failed verification once come from the owners directly
    // (no holders, no redirects); twice, from the origin.
    const uint32_t failures = failures_of(offset, offset + length);
    MissPlan plan = failures >= 2 ? MissPlan{} : node_.plan_miss(loc_.digest, unit);
    if (failures == 1) plan.previous_holder = plan.next_holder = "";
    const BlobLocation ask = asking();
    // Right after a membership change the unit may have moved away from a
    // peer that holds it, and just after this node started, the unit it
    // owns was served by the next owner: ask those first, for held bytes only.
    for (const std::string* holder : {&plan.previous_holder, &plan.next_holder}) {
      if (holder->empty()) continue;
      UninitBytes buf(end - first);
      node_.metrics().peer_requests.fetch_add(1, std::memory_order_relaxed);
      const auto asked = Clock::now();
      Status s = node_.client().fetch_range(*holder, ask, size, first, buf, {.held_only = true, .no_redirect = true});
      if (s.ok()) return accept(*holder, first, end, std::move(buf), asked, offset, dst);
      if (s.code() != Code::kNotFound) node_.membership().report_failure(*holder, false);
    }
    for (const std::string& peer : plan.peers) {
      UninitBytes buf(end - first);
      node_.metrics().peer_requests.fetch_add(1, std::memory_order_relaxed);
      const auto asked = Clock::now();
      std::string source;
      Status s = node_.fetch_from_owner(peer, ask, size, first, buf, &source, /*direct=*/failures == 1,
                                        {offset, offset + length});
      if (!s.ok()) {
        node_.metrics().peer_failures.fetch_add(1, std::memory_order_relaxed);
        count(metrics_.source("peer " + source), 0, asked, false);
        LOG_WARN("p2p: peer %s failed for blob %s [%llu, +%llu): %s; asking the next owner", peer.c_str(),
                 loc_.digest.substr(0, 12).c_str(), static_cast<unsigned long long>(first),
                 static_cast<unsigned long long>(end - first), s.message().c_str());
        node_.membership().report_failure(peer, false);
        continue;
      }
      node_.membership().report_success(source);
      return accept(source, first, end, std::move(buf), asked, offset, dst);
    }

    // The origin, through the store's single-flight.
    node_.metrics().fallbacks_to_origin.fetch_add(1, std::memory_order_relaxed);
    auto fetch = [this](uint64_t off, uint64_t len, const StoredBlob::Sink& sink) -> Status {
      std::vector<uint8_t> piece;
      for (uint64_t done = 0; done < len;) {
        piece.resize(std::min(kOriginPiece, len - done));
        NYDUS_TRY(origin_->read_exact(off + done, piece));
        NYDUS_TRY(sink(piece));
        done += piece.size();
      }
      return Status::Ok();
    };
    NYDUS_TRY(blob->ensure(offset, length, fetch, Clock::now() + kOriginDeadline));
    NYDUS_TRY(blob->read(offset, dst));
    return static_cast<size_t>(length);
  }

  void report_bad(uint64_t offset, uint64_t length) override {
    node_.metrics().verify_failures.fetch_add(1, std::memory_order_relaxed);
    std::vector<std::string> culprits;
    {
      std::lock_guard<std::mutex> g(mu_);
      for (auto it = held_.begin(); it != held_.end();) {
        if (it->offset < offset + length && offset < it->end) {
          culprits.push_back(it->peer);
          it = held_.erase(it);
        } else {
          ++it;
        }
      }
    }
    // Bytes that came from the store itself (a damaged file) go too.
    if (culprits.empty())
      if (auto blob = node_.store().find(loc_.digest)) blob->invalidate(offset, length);
    // One source: it sent wrong bytes, out for the long backoff. Bytes of
    // one chunk from two sources (the chunk crosses a unit boundary): which
    // part was wrong is unknown, so neither is demoted; the chunk's next
    // fetch goes to the origin, and a liar is caught by its next
    // single-source answer.
    std::sort(culprits.begin(), culprits.end());
    culprits.erase(std::unique(culprits.begin(), culprits.end()), culprits.end());
    if (culprits.size() == 1) {
      LOG_WARN("p2p: bytes [%llu, +%llu) of blob %s from peer %s failed verification; dropping them and demoting the peer",
               static_cast<unsigned long long>(offset), static_cast<unsigned long long>(length),
               loc_.digest.substr(0, 12).c_str(), culprits[0].c_str());
      node_.membership().report_failure(culprits[0], true);
      add_failure(offset, offset + length, 1);
    } else if (culprits.size() > 1) {
      LOG_WARN("p2p: bytes [%llu, +%llu) of blob %s from peers %s and %s failed verification; fetching them from the origin",
               static_cast<unsigned long long>(offset), static_cast<unsigned long long>(length),
               loc_.digest.substr(0, 12).c_str(), culprits[0].c_str(), culprits[1].c_str());
      add_failure(offset, offset + length, 2);
    }
    if (culprits.empty())
      LOG_WARN("p2p: bytes [%llu, +%llu) of blob %s failed verification; dropped from the piece store",
               static_cast<unsigned long long>(offset), static_cast<unsigned long long>(length),
               loc_.digest.substr(0, 12).c_str());
  }

  // Verified bytes of held-back peer answers go into the store: granules
  // they cover whole at once, granules a chunk starts or ends in once the
  // neighbouring chunk's bytes are verified too (from this answer or
  // another), so that only verified bytes are ever kept and relayed.
  void report_good(uint64_t offset, uint64_t length) override {
    std::shared_ptr<StoredBlob> blob;
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> to_store;
    {
      std::lock_guard<std::mutex> g(mu_);
      std::erase_if(suspects_, [&](const Suspect& r) { return r.begin < offset + length && offset < r.end; });
      blob = blob_;
      if (!blob) return;
      const uint64_t granule = node_.store().granule_size();
      const uint64_t size = blob->size();
      for (const PeerAnswer& a : held_) {
        const uint64_t vb = std::max(offset, a.offset), ve = std::min(offset + length, a.end);
        if (vb >= ve) continue;
        const uint8_t* bytes = a.bytes.data() + (vb - a.offset);
        // Whole granules inside [vb, ve) (the blob's short last granule counts as whole).
        const uint64_t whole_b = (vb + granule - 1) / granule * granule;
        const uint64_t whole_e = ve == size ? ve : ve / granule * granule;
        if (whole_b < whole_e)
          to_store.emplace_back(whole_b, std::vector<uint8_t>(bytes + (whole_b - vb), bytes + (whole_e - vb)));
        // The edges: parts of granules, completed across answers.
        auto add_part = [&](uint64_t b, uint64_t e) {
          if (b >= e) return;
          const uint64_t gi = b / granule, gb = gi * granule, ge = std::min(gb + granule, size);
          PartialGranule& p = partial_[gi];
          if (p.bytes.empty()) p.bytes.resize(ge - gb);
          std::memcpy(p.bytes.data() + (b - gb), bytes + (b - vb), e - b);
          add_range(p.covered, b - gb, e - gb);
          if (p.covered.size() == 1 && p.covered[0].first == 0 && p.covered[0].second == ge - gb) {
            to_store.emplace_back(gb, std::move(p.bytes));
            partial_.erase(gi);
          }
        };
        if (whole_b >= whole_e) {
          // [vb, ve) lies within one or two granules, none whole.
          const uint64_t cut = std::min(ve, (vb / granule + 1) * granule);
          add_part(vb, cut);
          add_part(cut, ve);
        } else {
          add_part(vb, whole_b);
          add_part(whole_e, ve);
        }
      }
      if (partial_.size() > kMaxPartialGranules) partial_.clear();
    }
    for (const auto& [from, bytes] : to_store)
      if (Status w = blob->write(from, bytes); !w.ok())
        LOG_DEBUG("p2p: keeping verified peer bytes of %s: %s", loc_.digest.substr(0, 12).c_str(), w.message().c_str());
  }

 private:
  // The store's entry for the blob. A blob the store does not know yet
  // gets its size from the origin (a HEAD: no body bytes), and only when
  // the origin cannot answer from the unit-0 owners: a peer's word on the
  // size is untrusted (a wrong size would make every honest peer's answer
  // look wrong), so it is taken only when there is nothing better.
  Result<std::shared_ptr<StoredBlob>> stored() {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (blob_) return blob_;
    }
    auto blob = node_.stored_blob(loc_.digest, [this]() -> Result<uint64_t> {
      auto size = origin_->size();
      if (size.ok() || size.status().code() == Code::kNotFound) return size;
      auto from_peers = node_.size_from_owners(asking(), size.status().message());
      return from_peers.ok() ? from_peers : size;
    });
    if (!blob.ok()) return blob.status();
    std::lock_guard<std::mutex> g(mu_);
    blob_ = *blob;
    return blob_;
  }

  // The blob as peers are asked for it: with the Authorization this node's
  // origin reader uses now, which the owner passes on to the origin (a
  // private repository's blob is fetched by its owner too). Credentials
  // thus reach peers: the peer port belongs on a trusted network (or
  // behind issue 12's guard), as a dfdaemon mirror with auth_through.
  BlobLocation asking() const {
    BlobLocation l = loc_;
    l.authorization = origin_->origin_authorization();
    return l;
  }

  // How often bytes overlapping [offset, end) failed verification since
  // they last passed it (at most kMaxHeldAnswers ranges are remembered).
  uint32_t failures_of(uint64_t offset, uint64_t end) {
    std::lock_guard<std::mutex> g(mu_);
    uint32_t most = 0;
    for (const Suspect& r : suspects_)
      if (r.begin < end && offset < r.end) most = std::max(most, r.failures);
    return most;
  }
  void add_failure(uint64_t offset, uint64_t end, uint32_t count) {
    std::lock_guard<std::mutex> g(mu_);
    uint32_t before = 0;
    std::erase_if(suspects_, [&](const Suspect& r) {
      if (r.begin >= end || offset >= r.end) return false;
      before = std::max(before, r.failures);
      offset = std::min(offset, r.begin);
      end = std::max(end, r.end);
      return true;
    });
    suspects_.push_back({offset, end, before + count});
    if (suspects_.size() > kMaxHeldAnswers) suspects_.pop_front();
  }

  // A good answer from `peer` for [first, end): counted, the asked part
  // [offset, offset + dst.size()) copied out, the rest held until verified.
  size_t accept(const std::string& peer, uint64_t first, uint64_t end, UninitBytes buf,
                Clock::time_point asked, uint64_t offset, std::span<uint8_t> dst) {
    count(metrics_.source("peer " + peer), buf.size(), asked, true);
    std::memcpy(dst.data(), buf.data() + (offset - first), dst.size());
    hold(first, end, peer, std::move(buf));
    return dst.size();
  }

  void hold(uint64_t offset, uint64_t end, const std::string& peer, UninitBytes bytes) {
    std::lock_guard<std::mutex> g(mu_);
    // A newer answer supersedes older ones for the same bytes (the chunk
    // reader fetched them again): only the newest can be to blame.
    std::erase_if(held_, [&](const PeerAnswer& a) { return a.offset < end && offset < a.end; });
    held_.push_back(PeerAnswer{offset, end, peer, std::move(bytes)});
    if (held_.size() > kMaxHeldAnswers) held_.pop_front();
  }

  // Adds [b, e) to a sorted list of disjoint ranges, merging touching ones.
  static void add_range(std::vector<std::pair<uint64_t, uint64_t>>& ranges, uint64_t b, uint64_t e) {
    ranges.emplace_back(b, e);
    std::sort(ranges.begin(), ranges.end());
    std::vector<std::pair<uint64_t, uint64_t>> merged;
    for (const auto& r : ranges) {
      if (!merged.empty() && r.first <= merged.back().second) merged.back().second = std::max(merged.back().second, r.second);
      else merged.push_back(r);
    }
    ranges = std::move(merged);
  }

  void count(backend::SourceCounters& c, uint64_t bytes, Clock::time_point start, bool ok) {
    const auto took = Clock::now() - start;
    c.requests.fetch_add(1, std::memory_order_relaxed);
    c.latency_ms_total.fetch_add(
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()),
        std::memory_order_relaxed);
    if (ok) c.bytes.fetch_add(bytes, std::memory_order_relaxed);
    else c.errors.fetch_add(1, std::memory_order_relaxed);
    metrics_.record_read(bytes, took, ok);
  }

  const std::shared_ptr<backend::BlobReader> origin_;
  P2pNode& node_;
  const BlobLocation loc_;
  backend::BackendMetrics& metrics_;
  backend::SourceCounters& store_counters_;
  std::mutex mu_;
  std::shared_ptr<StoredBlob> blob_;  // pinned while the reader lives
  std::deque<PeerAnswer> held_;  // recent peer answers, for report_good/report_bad
  std::unordered_map<uint64_t, PartialGranule> partial_;  // by granule index
  // Ranges whose bytes failed verification: fetched from owners directly
  // after one failure, from the origin after two; forgotten once verified.
  struct Suspect {
    uint64_t begin = 0, end = 0;
    uint32_t failures = 0;
  };
  std::deque<Suspect> suspects_;
};

class PeerBackend final : public backend::BlobBackend {
 public:
  PeerBackend(std::unique_ptr<backend::BlobBackend> origin, P2pNode& node, PeerBackendOptions options,
              backend::BackendMetrics* metrics)
      : origin_(std::move(origin)), node_(node), options_(std::move(options)),
        metrics_(metrics ? metrics : &own_metrics_) {}

  Result<std::shared_ptr<backend::BlobReader>> reader(const std::string& blob_id) override {
    NYDUS_ASSIGN(auto inner, origin_->reader(blob_id));
    if (!is_sha256_hex(blob_id)) return inner;  // not addressable by digest: no P2P for it
    std::lock_guard<std::mutex> g(mu_);
    auto& slot = readers_[blob_id];
    if (!slot)
      slot = std::make_shared<PeerReader>(inner, node_,
                                          BlobLocation{options_.registry_url, options_.repo, blob_id, ""}, *metrics_);
    return slot;
  }

  std::string type() const override { return origin_->type(); }
  Status update_auth(const std::string& auth) override { return origin_->update_auth(auth); }

 private:
  const std::unique_ptr<backend::BlobBackend> origin_;
  P2pNode& node_;
  const PeerBackendOptions options_;
  backend::BackendMetrics own_metrics_;
  backend::BackendMetrics* const metrics_;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<backend::BlobReader>> readers_;
};

}  // namespace

std::unique_ptr<backend::BlobBackend> make_peer_backend(std::unique_ptr<backend::BlobBackend> origin, P2pNode& node,
                                                        PeerBackendOptions options, backend::BackendMetrics* metrics) {
  return std::make_unique<PeerBackend>(std::move(origin), node, std::move(options), metrics);
}

}  // namespace nydus::p2p
