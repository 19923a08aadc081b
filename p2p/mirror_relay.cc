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
                         uint64_t length, bool verify_whole)
    : node_(node), loc_(std::move(loc)), blob_(std::move(blob)), first_(first), length_(length) {
  if (verify_whole) hasher_ = std::make_unique<Hasher>(bootstrap::Digester::kSha256);
}

MirrorRelay::~MirrorRelay() = default;

Result<size_t> MirrorRelay::read(uint64_t pos, uint8_t* out, size_t max) {
  if (pos >= length_) return size_t{0};
  const uint64_t offset = first_ + pos;
  if (offset < slice_offset_ || offset >= slice_offset_ + slice_.size()) NYDUS_TRY(load(offset));
  const uint64_t n = std::min<uint64_t>(max, slice_offset_ + slice_.size() - offset);
  const uint8_t* bytes = slice_.data() + (offset - slice_offset_);
  if (hasher_) {
    if (pos != hashed_) return Status::invalid("mirror: a verified blob must be read in order");
    hasher_->update({bytes, n});
    hashed_ += n;
    if (hashed_ == length_ && to_hex(hasher_->finish()) != loc_.digest) {
      node_.metrics().verify_failures.fetch_add(1, std::memory_order_relaxed);
      blame();
      return Status::corrupt("blob " + loc_.digest.substr(0, 12) + ": the whole blob's sha256 does not match its "
                             "digest; response cut before its last bytes so the client retries");
    }
  }
  std::memcpy(out, bytes, n);
  return static_cast<size_t>(n);
}

void MirrorRelay::blame() {
  if (!peer_sources_.empty()) {
    for (const std::string& peer : peer_sources_) {
      LOG_WARN("p2p: blob %s sent whole to a mirror client failed its sha256; demoting peer %s, which sent part "
               "of it", loc_.digest.substr(0, 12).c_str(), peer.c_str());
      node_.membership().report_failure(peer, true);
    }
    return;
  }
  LOG_WARN("p2p: blob %s sent whole to a mirror client from this node's store failed its sha256; dropping those "
           "ranges from the store", loc_.digest.substr(0, 12).c_str());
  for (const auto& [begin, end] : store_ranges_) blob_->invalidate(begin, end - begin);
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
    store_ranges_.emplace_back(offset, end);
    return blob_->read(offset, slice_);
  }
  const std::vector<std::string> owners = node_.owners(loc_.digest, unit, node_.config().max_candidates);
  if (load_from_peers(offset, end, owners)) return Status::Ok();
  // This node owns the unit, or no owner answered: the origin, once, through the store.
  m.fallbacks_to_origin.fetch_add(1, std::memory_order_relaxed);
  Status s = node_.ensure_from_origin(*blob_, loc_, offset, end - offset,
                                      std::chrono::steady_clock::now() + kOriginDeadline);
  if (s.ok()) {
    store_ranges_.emplace_back(offset, end);
    return blob_->read(offset, slice_);
  }
  // The origin is out of reach from here: the owners after this one fetch
  // it for everybody (they reach the origin, or hold the unit already).
  auto self = std::find(owners.begin(), owners.end(), node_.self());
  if (self != owners.end() && load_from_peers(offset, end, {self + 1, owners.end()})) {
    LOG_INFO("p2p: blob %s [%llu, +%llu): the origin failed here (%s); served by the next owner",
             loc_.digest.substr(0, 12).c_str(), static_cast<unsigned long long>(offset),
             static_cast<unsigned long long>(end - offset), s.message().c_str());
    return Status::Ok();
  }
  return s;
}

bool MirrorRelay::load_from_peers(uint64_t offset, uint64_t end, const std::vector<std::string>& owners) {
  P2pMetrics& m = node_.metrics();
  const uint64_t size = blob_->size();
  for (const std::string& peer : owners) {
    if (peer == node_.self()) return false;  // ours to fetch
    m.peer_requests.fetch_add(1, std::memory_order_relaxed);
    std::string source;
    Status s = node_.fetch_from_owner(peer, loc_, size, offset, slice_, &source);
    if (s.ok()) {
      node_.membership().report_success(source);
      if (std::find(peer_sources_.begin(), peer_sources_.end(), source) == peer_sources_.end())
        peer_sources_.push_back(source);
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
