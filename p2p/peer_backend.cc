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
#include "p2p/p2p_node.h"

namespace nydus::p2p {
namespace {

using Clock = std::chrono::steady_clock;

// How long a read may wait for another caller's fetch of the same bytes.
constexpr auto kOriginDeadline = std::chrono::seconds(120);
// Largest piece of an origin fetch handed to the store at once, so that
// peers streaming the same range see bytes before the whole range is in.
constexpr uint64_t kOriginPiece = 256 * 1024;
// Recent peer answers remembered for report_bad().
constexpr size_t kRecentAnswers = 256;

struct PeerAnswer {
  uint64_t offset = 0, end = 0;
  std::string peer;
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
    for (const std::string& peer : node_.owners(loc_.digest, unit, cfg.max_candidates)) {
      if (peer == node_.self()) break;  // this node owns it next: go to the origin
      std::vector<uint8_t> buf(end - first);
      node_.metrics().peer_requests.fetch_add(1, std::memory_order_relaxed);
      const auto asked = Clock::now();
      Status s = node_.client().fetch_range(peer, loc_, size, first, buf);
      backend::SourceCounters& counters = metrics_.source("peer " + peer);
      if (!s.ok()) {
        node_.metrics().peer_failures.fetch_add(1, std::memory_order_relaxed);
        count(counters, 0, asked, false);
        LOG_WARN("p2p: peer %s failed for blob %s [%llu, +%llu): %s; asking the next owner", peer.c_str(),
                 loc_.digest.substr(0, 12).c_str(), static_cast<unsigned long long>(first),
                 static_cast<unsigned long long>(end - first), s.message().c_str());
        node_.membership().report_failure(peer, false);
        continue;
      }
      count(counters, buf.size(), asked, true);
      remember(first, end, peer);
      if (Status w = blob->write(first, buf); !w.ok())
        LOG_DEBUG("p2p: keeping peer bytes of %s in the store: %s", loc_.digest.substr(0, 12).c_str(),
                  w.message().c_str());
      std::memcpy(dst.data(), buf.data() + (offset - first), length);
      return static_cast<size_t>(length);
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
      for (const PeerAnswer& a : recent_)
        if (a.offset < offset + length && offset < a.end) culprits.push_back(a.peer);
    }
    if (auto blob = node_.store().find(loc_.digest)) blob->invalidate(offset, length);
    for (const std::string& peer : culprits) {
      LOG_WARN("p2p: bytes [%llu, +%llu) of blob %s from peer %s failed verification; dropping them and demoting the peer",
               static_cast<unsigned long long>(offset), static_cast<unsigned long long>(length),
               loc_.digest.substr(0, 12).c_str(), peer.c_str());
      node_.membership().report_failure(peer, true);
    }
    if (culprits.empty())
      LOG_WARN("p2p: bytes [%llu, +%llu) of blob %s failed verification; dropped from the piece store",
               static_cast<unsigned long long>(offset), static_cast<unsigned long long>(length),
               loc_.digest.substr(0, 12).c_str());
  }

 private:
  // The store's entry for the blob, its size learnt from a peer (the unit-0
  // owners) or the origin when the store does not know the blob.
  Result<std::shared_ptr<StoredBlob>> stored() {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (blob_) return blob_;
    }
    auto blob = node_.stored_blob(loc_.digest, [this]() -> Result<uint64_t> {
      for (const std::string& peer : node_.owners(loc_.digest, 0, node_.config().max_candidates)) {
        if (peer == node_.self()) break;
        auto size = node_.client().fetch_size(peer, loc_);
        if (size.ok()) return size;
        node_.membership().report_failure(peer, false);
      }
      return origin_->size();
    });
    if (!blob.ok()) return blob.status();
    std::lock_guard<std::mutex> g(mu_);
    blob_ = *blob;
    return blob_;
  }

  void remember(uint64_t offset, uint64_t end, const std::string& peer) {
    std::lock_guard<std::mutex> g(mu_);
    recent_.push_back({offset, end, peer});
    if (recent_.size() > kRecentAnswers) recent_.pop_front();
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
  std::deque<PeerAnswer> recent_;
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
