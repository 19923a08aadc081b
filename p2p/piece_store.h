// PieceStore: the raw (compressed) blob bytes this node holds for P2P.
//
// Layout in `dir`, one pair of files per blob, keyed by the blob's sha256
// digest only (the same blob from two registries or repositories is one
// object):
//   <hex>.piece      the blob's bytes at their offsets (sparse file)
//   <hex>.piece.map  a header (magic, version, granule size, blob size) and a
//                    readiness bitmap, one bit per granule
// A granule's bit is set only after its bytes were written (data first,
// then the bit), so a restarted daemon serves exactly the granules it had.
// The map is untrusted input on open: a damaged, truncated or mismatching
// map (or a data file shorter than its ready granules need) makes that blob
// be dropped with one WARN line; the store still opens.
//
// Single-flight: StoredBlob::ensure() claims the missing granules of a range
// that nobody is fetching and fetches them as granule-aligned runs; granules
// another caller is fetching are waited for, and taken over if that caller
// fails. Bytes are written and granules marked ready as they arrive, so
// wait_ready() lets a streaming reader follow a fetch in progress.
//
// Capacity: `capacity_bytes` bounds the ready bytes of all blobs; when new
// bytes push the total over it, whole blobs are evicted, least recently used
// first. A blob is pinned (never evicted) while anyone outside the store
// holds its shared_ptr. Last use survives restarts (the map file's mtime).
//
// Thread-safety: PieceStore and StoredBlob may be used from any number of
// threads at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace nydus::p2p {

struct PieceStoreOptions {
  std::string dir;               // created when absent
  uint64_t capacity_bytes = 0;   // 0 = unbounded
  uint32_t granule_size = 4096;  // power of two, 512 .. 1 MiB; readiness and origin-fetch alignment
};

// A run of bytes [offset, offset + length).
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t end() const { return offset + length; }
  bool operator==(const ByteRange&) const = default;
};

class StoredBlob {
 public:
  // Appends the next bytes of a fetch, in order. An error stops the fetch.
  using Sink = std::function<Status(std::span<const uint8_t>)>;
  // Fetches [offset, offset + length) (granule-aligned, clipped to size())
  // and hands the bytes to `sink` in order, as they arrive. `sink` is valid
  // only during the call. Delivering fewer bytes, or more (the sink refuses
  // them, nothing past the run is written), fails the ensure() with kIo.
  using FetchFn = std::function<Status(uint64_t offset, uint64_t length, const Sink& sink)>;
  using Clock = std::chrono::steady_clock;

  virtual ~StoredBlob() = default;

  // "<64 hex digits>", without the "sha256:" prefix.
  virtual const std::string& digest() const = 0;
  virtual uint64_t size() const = 0;
  // The data file, for sendfile(). Bytes of ready granules never change.
  virtual int data_fd() const = 0;

  // How many bytes from `offset` on are ready without a gap, at most `max`.
  virtual uint64_t ready_run(uint64_t offset, uint64_t max) const = 0;
  bool is_ready(uint64_t offset, uint64_t length) const { return ready_run(offset, length) == length; }
  // True when every granule of [offset, offset + length) is ready or being
  // fetched by someone (so wait_ready() will follow it); false past size().
  virtual bool is_covered(uint64_t offset, uint64_t length) const = 0;
  // The granule-aligned runs of [offset, offset + length) not ready yet.
  virtual std::vector<ByteRange> missing(uint64_t offset, uint64_t length) const = 0;
  virtual uint64_t ready_bytes() const = 0;

  // Makes [offset, offset + length) ready (see the single-flight note
  // above). Returns the first fetch error when a granule this call claimed
  // could not be fetched, kTimeout when `deadline` passed while waiting for
  // another caller, kInvalidInput when the range is past size().
  virtual Status ensure(uint64_t offset, uint64_t length, const FetchFn& fetch, Clock::time_point deadline) = 0;

  // Waits until at least one byte at `offset` is ready and returns the ready
  // run (at most `max`; 0 at once when max == 0). kTimeout at `deadline`;
  // kIo when the granule at `offset` is neither ready nor being fetched
  // (nobody will fill it); kInvalidInput when offset >= size().
  virtual Result<uint64_t> wait_ready(uint64_t offset, uint64_t max, Clock::time_point deadline) = 0;

  // Copies ready bytes; kInvalidInput when part of the range is not ready.
  virtual Status read(uint64_t offset, std::span<uint8_t> dst) const = 0;

  // Stores bytes obtained elsewhere (a peer's, after verification). Marks
  // ready the granules the range covers whole (or up to the blob's end);
  // skips granules already ready and granules a fetch is filling (a
  // granule's bytes are written only by the one caller that claimed it).
  virtual Status write(uint64_t offset, std::span<const uint8_t> data) = 0;

  // Forgets every granule overlapping the range (bytes found bad).
  virtual void invalidate(uint64_t offset, uint64_t length) = 0;
};

class PieceStore {
 public:
  static Result<std::unique_ptr<PieceStore>> open(PieceStoreOptions options);
  virtual ~PieceStore() = default;

  // The blob named `digest` ("sha256:<hex>" or "<hex>"; anything else is
  // kInvalidInput), created empty with `size` when absent. kInvalidInput
  // when the store holds it with another size.
  virtual Result<std::shared_ptr<StoredBlob>> open_blob(const std::string& digest, uint64_t size) = 0;
  // The blob when the store holds it (possibly with no ready byte), else null.
  virtual std::shared_ptr<StoredBlob> find(const std::string& digest) = 0;

  virtual uint64_t used_bytes() const = 0;     // ready bytes of all blobs
  virtual uint64_t evicted_blobs() const = 0;  // since open
  virtual uint32_t granule_size() const = 0;
};

// The map file's format, exposed for the fuzz target and tests: parses a map
// file's bytes and returns the blob size and readiness bits, or a Status
// naming what is wrong. Layout (little-endian; spelled out in piece_map.cc):
// "NYP2PMAP", u32 version 1, u32 granule size, u64 blob size, u32 0,
// u32 CRC-32C of the preceding 28 bytes, then the bitmap, exactly
// ceil(granules / 8) bytes with padding bits 0. Only that canonical form
// parses, so serialize_piece_map(*parse_piece_map(b)) == b.
inline constexpr size_t kPieceMapHeaderSize = 32;
inline constexpr uint32_t kMinGranuleSize = 512;
inline constexpr uint32_t kMaxGranuleSize = 1u << 20;
// Bounds the bitmap (32 MiB) and the per-blob memory: a blob may have at
// most this many granules (1 TiB at the default 4 KiB granule).
inline constexpr uint64_t kMaxGranules = uint64_t{1} << 28;
bool valid_granule_size(uint64_t granule_size);
uint64_t piece_map_bitmap_bytes(uint64_t blob_size, uint32_t granule_size);

struct PieceMap {
  uint32_t granule_size = 0;
  uint64_t blob_size = 0;
  std::vector<uint8_t> bitmap;  // bit i (LSB first in byte i / 8) = granule i ready
  bool operator==(const PieceMap&) const = default;
};
Result<PieceMap> parse_piece_map(std::span<const uint8_t> bytes);
std::vector<uint8_t> serialize_piece_map(const PieceMap& map);

}  // namespace nydus::p2p
