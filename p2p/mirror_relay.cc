#include "p2p/mirror_relay.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/log.h"
#include "p2p/p2p_node.h"

namespace nydus::p2p {
namespace {
// How long the origin may take for one slice when this node fetches it.
constexpr auto kOriginDeadline = std::chrono::seconds(120);
}  // namespace

MirrorRelay::MirrorRelay(P2pNode& node, BlobLocation loc, std::shared_ptr<StoredBlob> blob, uint64_t first,
                         uint64_t length)
    : node_(node), loc_(std::move(loc)), blob_(std::move(blob)), first_(first), length_(length) {}

Result<size_t> MirrorRelay::read(uint64_t pos, uint8_t* out, size_t max) {
  if (pos >= length_) return size_t{0};
  const uint64_t offset = first_ + pos;
  if (offset < slice_offset_ || offset >= slice_offset_ + slice_.size()) NYDUS_TRY(load(offset));
  const uint64_t n = std::min<uint64_t>(max, slice_offset_ + slice_.size() - offset);
  std::memcpy(out, slice_.data() + (offset - slice_offset_), n);
  return static_cast<size_t>(n);
}

Status MirrorRelay::load(uint64_t offset) {
  const uint64_t unit_size = node_.config().unit_size;
  const uint64_t unit = offset / unit_size;
  const uint64_t end = std::min(first_ + length_, (unit + 1) * unit_size);
  slice_.resize(end - offset);
  slice_offset_ = offset;
  P2pMetrics& m = node_.metrics();
  if (blob_->is_ready(offset, end - offset)) {
    m.store_hits.fetch_add(1, std::memory_order_relaxed);
    return blob_->read(offset, slice_);
  }
  if (load_from_peers(offset, end, node_.owners(loc_.digest, unit, node_.config().max_candidates)))
    return Status::Ok();
  // This node owns the unit, or no owner answered: the origin, once, through the store.
  m.fallbacks_to_origin.fetch_add(1, std::memory_order_relaxed);
  NYDUS_TRY(node_.ensure_from_origin(*blob_, loc_, offset, end - offset,
                                     std::chrono::steady_clock::now() + kOriginDeadline));
  return blob_->read(offset, slice_);
}

bool MirrorRelay::load_from_peers(uint64_t offset, uint64_t end, const std::vector<std::string>& owners) {
  P2pMetrics& m = node_.metrics();
  const uint64_t size = blob_->size();
  for (const std::string& peer : owners) {
    if (peer == node_.self()) return false;  // ours to fetch
    m.peer_requests.fetch_add(1, std::memory_order_relaxed);
    std::string holder;
    Status s = node_.client().fetch_range(peer, loc_, size, offset, slice_, {}, &holder);
    if (!holder.empty()) {
      // A hot unit: the owner named a node that downloaded it; back to the
      // owner, not to be sent away again, when that one lacks it.
      s = Status::not_found("holder " + holder + " is out of rendezvous here");
      if (node_.membership().usable(holder)) {
        m.redirects_followed.fetch_add(1, std::memory_order_relaxed);
        s = node_.client().fetch_range(holder, loc_, size, offset, slice_, {.held_only = true});
      }
      if (!s.ok()) s = node_.client().fetch_range(peer, loc_, size, offset, slice_, {.no_redirect = true});
    }
    if (s.ok()) {
      node_.membership().report_success(peer);
      return true;
    }
    m.peer_failures.fetch_add(1, std::memory_order_relaxed);
    node_.membership().report_failure(peer, false);
    LOG_WARN("p2p: peer %s failed for blob %s [%llu, +%llu) asked by a client of the mirror: %s; asking the next "
             "owner", peer.c_str(), loc_.digest.substr(0, 12).c_str(), static_cast<unsigned long long>(offset),
             static_cast<unsigned long long>(end - offset), s.message().c_str());
  }
  return false;
}

}  // namespace nydus::p2p
