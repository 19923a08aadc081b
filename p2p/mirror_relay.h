// MirrorRelay: a stock client's blob range (nydusd through its mirror,
// containerd through hosts.toml), served through the P2P path rather than
// straight from the origin, so a stock client on any node costs the origin
// no more than one of our own daemons would.
//
// The range is produced slice by slice, one placement unit at a time, as
// the client reads it: bytes this node's piece store holds go out from
// there; otherwise the unit's owners are asked in rendezvous order (signed
// requests, as every peer request; an owner fetches what it lacks from the
// origin once for everybody); when this node is the owner, or every owner
// failed, the origin through this node's store (single-flight); when this
// node cannot reach the origin, the owners after it in rendezvous order.
// At most one unit is held in memory.
//
// A range carries no digest to check, so bytes from peers are not verified
// here (peers are cluster members that signed with the cluster secret). A
// whole blob is: with verify_whole, every byte is hashed on the way out and
// the last slice is sent only if the sha256 is the blob's digest. On a
// mismatch read() fails (the client sees a cut response and retries), the
// peers that sent slices are demoted for bad data, and when none did, the
// ranges this node's store supplied are dropped from it.
//
// Thread-safety: one client connection; not shared.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/digest.h"
#include "common/uninit_bytes.h"
#include "p2p/blob_location.h"

namespace nydus::p2p {

class P2pNode;
class StoredBlob;

class MirrorRelay {
 public:
  // [first, first + length) of `blob` (the store's entry: it knows the size).
  MirrorRelay(P2pNode& node, BlobLocation loc, std::shared_ptr<StoredBlob> blob, uint64_t first, uint64_t length,
              bool verify_whole = false);
  ~MirrorRelay();

  // Up to `max` bytes at range position `pos` (0 = `first`) into `out`;
  // the count, or an error (the response is then cut).
  Result<size_t> read(uint64_t pos, uint8_t* out, size_t max);

 private:
  // Loads the slice of the range that starts at blob offset `offset` and
  // ends at the next unit boundary (or the range's end).
  Status load(uint64_t offset);
  // Into slice_ from the first owner that answers; false when this node is
  // the owner or none answered.
  bool load_from_peers(uint64_t offset, uint64_t end, const std::vector<std::string>& owners);
  // The whole blob went out but its sha256 is wrong: demote, drop.
  void blame();

  P2pNode& node_;
  const BlobLocation loc_;
  const std::shared_ptr<StoredBlob> blob_;
  const uint64_t first_;
  const uint64_t length_;
  uint64_t slice_offset_ = 0;  // blob offset of slice_[0]
  UninitBytes slice_;  // written whole by each load before it is read
  std::unique_ptr<Hasher> hasher_;          // verify_whole only
  uint64_t hashed_ = 0;                     // bytes hashed so far (read() is sequential)
  std::vector<std::string> peer_sources_;   // peers that supplied slices
  std::vector<std::pair<uint64_t, uint64_t>> store_ranges_;  // [offset, end) supplied by this node's store
};

}  // namespace nydus::p2p
