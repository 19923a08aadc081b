// ChunkMap: the persistent per-blob readiness bitmap
// `<work_dir>/<blob_id>.blob.data.chunk_map`, byte-compatible with upstream
// nydusd's IndexedChunkMap/PersistMap (storage/src/cache/state/
// persist_map.rs), so a cache written by either daemon is reused by the
// other (nydusd-contract.md §6).
//
// File layout, little-endian:
//   [0, 4096)   header: u32 magic 0x424D4150, u32 version (1),
//               u32 magic2 0x434D4150, u32 all_ready (0x4D4D4150 once every
//               chunk is ready, else 0), 4080 zero bytes
//   [4096, ..)  bitmap, ceil(n/8) bytes: chunk i is bit 0x80 >> (i & 7) of
//               byte 4096 + (i >> 3) (MSB first); set = the chunk's bytes in
//               `<blob_id>.blob.data` are valid. Bits are never cleared.
// The file size must be exactly 4096 + ceil(n/8); anything else is refused
// with an error naming the file and both sizes (as upstream, which then
// fails the blob).
//
// Creation (file missing or empty): ftruncate to the full size, fsync,
// write the header, fsync. A file whose every byte is zero is the trace of
// a crash between those steps and gets its header rewritten; a file with a
// wrong magic and any non-zero byte is refused. A version-0 header (no
// magic2/all_ready fields) is accepted and left as it is: its bits are
// counted, but all_ready is never written into it.
//
// Opening an existing file: when the header's all_ready holds its magic,
// every chunk is ready without looking at the bits. Otherwise the bits of
// chunks 0..n-1 are counted (padding bits past n are ignored; upstream
// counts them, but it never sets them), and if all are set all_ready is
// written and the file fsynced.
//
// Bits are set with an atomic read-modify-write (std::atomic_ref fetch_or)
// on a MAP_SHARED mapping, so several threads, and several processes
// (including an upstream nydusd) mapping the same file, may set bits
// concurrently. When this instance sets the last missing bit it msyncs the
// bitmap, then writes all_ready and msyncs the header (the order upstream
// used before it commented the header write out; either is compatible).
// Durability: ChunkMap itself never fsyncs per bit. Bits and data survive a
// crash of the process (they live in the page cache); after power loss
// the bitmap may be newer than the data file, as with upstream.
//
// chunk_count == 0: upstream's PersistMap refuses it ("chunk count should
// be greater than 0"). We open such a map without touching the disk: no
// file is created or read (a 4096-byte map would be one upstream refuses),
// all_ready() is true, is_ready() is false for every index and set_ready()
// is an out-of-range error. A blob without chunks has nothing to read, so
// refusing it would only fail a mount for nothing.
//
// Thread-safety: every method may be called from any thread at any time.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"
#include "common/unique_fd.h"

namespace nydus::backend {

inline constexpr uint32_t kChunkMapMagic = 0x424D4150;
inline constexpr uint32_t kChunkMapMagic2 = 0x434D4150;
inline constexpr uint32_t kChunkMapAllReady = 0x4D4D4150;
inline constexpr uint32_t kChunkMapVersion = 1;
inline constexpr size_t kChunkMapHeaderSize = 4096;

// The file upstream uses for a blob: `<work_dir>/<blob_id>.blob.data.chunk_map`.
std::string chunk_map_path(const std::string& work_dir, const std::string& blob_id);

class ChunkMap {
 public:
  // Opens `path`, creating it when missing or empty (see the header
  // comment). kInvalidInput for a file of the wrong size, a bad header or a
  // non-regular file; kIo for system-call failures. Every message names
  // the file.
  static Result<std::unique_ptr<ChunkMap>> open(const std::string& path, uint32_t chunk_count);

  ~ChunkMap();
  ChunkMap(const ChunkMap&) = delete;
  ChunkMap& operator=(const ChunkMap&) = delete;

  // True when chunk `index` is ready (its bit, or the header's all_ready,
  // is set). False for index >= chunk_count(). Sees bits set by other
  // processes sharing the file.
  bool is_ready(uint32_t index) const;

  // Sets the chunk's bit (idempotent). Call only after the chunk's bytes
  // are in the data file. kInvalidInput when index >= chunk_count().
  Status set_ready(uint32_t index);

  // True when every chunk is ready: this instance has seen (at open, or in
  // a ready_count()) or set every bit, or the header says all_ready. Bits
  // another instance or process sets are noticed only by ready_count(), so
  // until then this may stay false while is_ready(i) is true for every i.
  bool all_ready() const;

  // Ready chunks: the set bits of the bitmap, counted now, so bits other
  // instances on the same file (shared-mode mounts of one image, other
  // processes) set are included. If that finds every bit set, all_ready()
  // becomes true and the header is written as set_ready() would. Reads the
  // whole bitmap (chunk_count() / 8 bytes): for metrics, not per request.
  uint32_t ready_count();

  uint32_t chunk_count() const { return count_; }
  const std::string& path() const { return path_; }
  // The version field of the header (1 for files we create; 0 is accepted).
  uint32_t version() const { return version_; }

 private:
  ChunkMap(std::string path, UniqueFd fd, uint8_t* base, size_t size, uint32_t count,
           uint32_t version, uint32_t not_ready);

  bool header_all_ready() const;
  // Called once, by the thread whose set_ready() or ready_count() took the
  // not-ready counter to 0.
  void mark_all_ready();
  // Set bits of the bitmap, padding bits excluded.
  uint32_t count_set_bits() const;

  const std::string path_;
  const UniqueFd fd_;
  // MAP_SHARED mapping of the whole file; nullptr when count_ == 0.
  uint8_t* const base_;
  const size_t size_;
  const uint32_t count_;
  const uint32_t version_;
  std::atomic<uint32_t> not_ready_;
};

}  // namespace nydus::backend
