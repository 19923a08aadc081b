// ChunkReader: turns a bootstrap::ChunkRef into verified uncompressed bytes,
// through the local blob cache when one is configured.
//
// Read path of one chunk:
//   1. blob cache hit (`<work_dir>/<blob_id>.blob.data` with its bit set in
//      `.blob.data.chunk_map`, backend/blob_cache.h): served from disk,
//      checked against its digest only with `cache_validate`;
//   2. single-flight: when another thread is already fetching the chunk,
//      wait for its result (bounded by `wait_deadline`), never a second
//      request;
//   3. otherwise this thread fetches it, together with the following
//      chunks of the same read plan (`following`) that are contiguous in
//      the blob, not cached and not in flight, in ONE ranged backend read
//      of at most `merge_bytes` (upstream's amplify_io); merging only
//      happens with a cache, which is where the extra chunks go;
//   4. decompress, verify (digest and CRC-32C; always for fetched data
//      when `verify_fetched`, else only with `validate_digest`), and a
//      chunk failing verification is fetched again alone, up to
//      `fetch_attempts` times in all: wrong bytes are never returned;
//   5. commit to the cache (data first, then the ready bit) and hand the
//      bytes to the waiters.
// Chunks whose location is not in the bootstrap (ChunkRef::located ==
// false) are resolved through the blob's blob.meta table, loaded once per
// blob from `<work_dir>/<blob_id>.blob.meta` or from the blob itself (and
// then saved there when the cache is on, as upstream does).
//
// Validation: the uncompressed bytes must match the chunk digest with the
// blob's digester, and the CRC-32C when the chunk records one. For chunks
// resolved through blob.meta the digest comes from the blob's digest array
// (blob.digest, found through its ToC and checked against the bootstrap's
// toc_digest); a blob without one is checked by decompression and CRC-32C
// only, and a WARN line says so once per blob.
//
// Prefetch (ensure_cached) goes through the same single-flight and cache;
// on-demand reads outrank it: a prefetch fetch waits (briefly, repeatedly)
// while on-demand fetches are in flight.
//
// Errors name the blob and chunk; a missing blob is reported (logged) once
// per blob, not once per read (an INFO line follows if it appears later).
// A cache that cannot be opened for a blob (bad work_dir, size mismatch) is
// logged once and that blob is served uncached. Thread-safe: any number of
// concurrent reads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <atomic>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend_metrics.h"
#include "backend/blob_backend.h"
#include "backend/blob_cache.h"
#include "backend/read_trace.h"
#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::backend {

struct ChunkReaderOptions {
  bool validate_digest = false;  // v1 `digest_validate`: verify every chunk read
  std::string work_dir;          // where `<blob_id>.blob.meta` may live; "" = none
  bool cache = false;            // blobcache/filecache in work_dir
  bool cache_validate = false;   // verify chunks read from the cache
  bool verify_fetched = false;   // verify every chunk fetched from the backend
  uint64_t merge_bytes = 0;      // amplify_io: largest merged backend read (0 = no merging)
  uint32_t fetch_attempts = 1;   // tries for a chunk that fails verification
  std::chrono::milliseconds wait_deadline{60000};  // longest wait for another thread's fetch
  CacheMetrics* metrics = nullptr;  // optional; must outlive the reader
  // Optional; must outlive the reader. Gets one entry per backend request
  // this reader issues: every chunk fetch, and the blob.meta, ToC and
  // digest-array reads of the blob itself, with chunks == 0
  // (backend/read_trace.h).
  ReadTrace* trace = nullptr;
};

// How much of one blob is in the local cache.
struct BlobCacheState {
  std::string blob_id;
  bool cached = false;       // a cache file is open for it
  uint32_t ready_chunks = 0;
  uint32_t chunk_count = 0;
  bool fully_cached = false;
  std::string data_path;     // <work_dir>/<id>.blob.data
};

class ChunkReader {
 public:
  ChunkReader(std::vector<bootstrap::BlobInfo> blobs, std::unique_ptr<BlobBackend> backend,
              ChunkReaderOptions options);

  // Writes the whole uncompressed chunk into `dst` (dst.size() must equal
  // chunk.uncompressed_size). kCorrupt on digest or decompression failure,
  // kNotFound when the blob is missing, kIo on transport errors.
  // `following`: chunks the same read plan needs next, in order; the
  // fetch may carry those of them that are contiguous in the blob.
  Status read_chunk(const bootstrap::ChunkRef& chunk, std::span<uint8_t> dst,
                    std::span<const bootstrap::ChunkRef> following = {});

  // Bytes [offset_in_chunk, offset_in_chunk + dst.size()) of the chunk. A
  // cached chunk is read in just that range (unless cached chunks are
  // validated, which needs all of it); otherwise as read_chunk.
  Status read_chunk_range(const bootstrap::ChunkRef& chunk, uint64_t offset_in_chunk, std::span<uint8_t> dst,
                          std::span<const bootstrap::ChunkRef> following = {});

  // Prefetch: makes sure `chunks` (in blob order) are in the cache, merging
  // contiguous ones into backend reads of at most merge_bytes. Waits while
  // on-demand fetches are in flight. Returns the first error; chunks
  // already cached or in flight are skipped. `fetched_bytes` (optional)
  // is increased by the raw (compressed) bytes this call fetched.
  Status ensure_cached(std::span<const bootstrap::ChunkRef> chunks, uint64_t merge_bytes,
                       uint64_t* fetched_bytes = nullptr);

  // The located form of `chunk` (resolving it through blob.meta when the
  // bootstrap does not locate it).
  Result<bootstrap::ChunkRef> located(const bootstrap::ChunkRef& chunk);

  // Cache state per blob (opens the cache files when not open yet).
  std::vector<BlobCacheState> cache_state();
  bool cache_enabled() const { return options_.cache; }

  BlobBackend& backend() { return *backend_; }
  const ChunkReaderOptions& options() const { return options_; }
  const std::vector<bootstrap::BlobInfo>& blobs() const { return blobs_; }

 private:
  // A blob's chunk-info table (from blob.meta), indexed by chunk index.
  // has_digests: ChunkRef::digest was filled from the blob's digest array.
  struct ChunkTable {
    std::vector<bootstrap::ChunkRef> chunks;
    bool has_digests = false;
  };

  // One fetch in progress: its leader fills data/status and sets done.
  // An uncompressed chunk. Not zero-filled when allocated: it is written
  // whole (decompressed into) before anyone reads it, and zeroing 1 MiB
  // per fetched chunk was 5 % of the CPU of 8 nodes starting together.
  struct ChunkBytes {
    explicit ChunkBytes(size_t n = 0) : bytes(n ? std::make_unique_for_overwrite<uint8_t[]>(n) : nullptr), size(n) {}
    std::span<uint8_t> span() const { return {bytes.get(), size}; }
    std::unique_ptr<uint8_t[]> bytes;
    size_t size;
  };
  struct Flight {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Status status;
    ChunkBytes data;  // the uncompressed chunk, when status is ok
  };

  Result<std::shared_ptr<BlobReader>> reader_for(uint32_t blob_index);
  // The blob's cache file, opened on first use; nullptr when the cache is
  // off or cannot be used for this blob (logged once).
  BlobCacheFile* cache_for(uint32_t blob_index);
  Status read_from_cache(BlobCacheFile& cache, const bootstrap::ChunkRef& chunk, std::span<uint8_t> dst);
  // Fetches `group` (located, contiguous, this thread leads all their
  // flights) in one backend read; completes every flight.
  void fetch_group(const std::vector<bootstrap::ChunkRef>& group,
                   const std::vector<std::shared_ptr<Flight>>& flights);
  // Appends to `group` the leading `candidates` that are contiguous with it
  // in the blob, not cached, not in flight, within `limit` bytes in all;
  // claims their flights. Returns how many candidates it consumed.
  size_t extend_group(std::vector<bootstrap::ChunkRef>& group, std::vector<std::shared_ptr<Flight>>& flights,
                      std::span<const bootstrap::ChunkRef> candidates, BlobCacheFile& cache, uint64_t limit);
  // Digest (unless unknown: all zero) and CRC-32C of an uncompressed chunk.
  Status verify(const bootstrap::ChunkRef& chunk, std::span<const uint8_t> data);
  // Raw bytes -> uncompressed, verified chunk in `out`.
  Status decode_and_verify(const bootstrap::ChunkRef& chunk, std::span<const uint8_t> raw,
                           std::span<uint8_t> out, bool from_network);
  // decode_and_verify without telling the reader about corrupt bytes.
  Status decode_checked(const bootstrap::ChunkRef& chunk, std::span<const uint8_t> raw,
                        std::span<uint8_t> out, bool from_network);
  Status fetch_single(const bootstrap::ChunkRef& chunk, std::span<uint8_t> out);
  // Claims the flight for `key`: (flight, true) when this thread leads it.
  std::pair<std::shared_ptr<Flight>, bool> claim(uint64_t key);
  void finish(uint64_t key, const std::shared_ptr<Flight>& flight, Status status, ChunkBytes data);
  Status wait_for(Flight& flight, const bootstrap::ChunkRef& chunk, std::span<uint8_t> dst);
  bool verify_wanted(bool from_network) const {
    return options_.validate_digest || (from_network && options_.verify_fetched);
  }
  // Resolves an unlocated chunk through the blob's chunk-info table. Sets
  // *digest_known when the result carries a digest to verify against.
  Result<bootstrap::ChunkRef> locate(const bootstrap::ChunkRef& chunk, bool* digest_known);
  Result<std::shared_ptr<const ChunkTable>> chunk_table(uint32_t blob_index);
  Result<ChunkTable> load_chunk_table(uint32_t blob_index);
  // Logs a missing blob once (ERROR), later occurrences at debug level.
  void note_missing(uint32_t blob_index, const Status& status);
  // Logs a failed backend fetch at ERROR, at most once a second per blob
  // (the line counts the ones left out).
  void note_fetch_failure(uint32_t blob_index, const Status& status);
  // Logs `message` at WARN the first time `key` is seen for this blob.
  void warn_once(uint32_t blob_index, const char* key, const std::string& message);

  const std::vector<bootstrap::BlobInfo> blobs_;
  const std::unique_ptr<BlobBackend> backend_;
  const ChunkReaderOptions options_;

  std::mutex mu_;  // guards the maps below (never held across I/O)
  std::unordered_map<uint32_t, std::shared_ptr<BlobReader>> readers_;
  std::unordered_map<uint32_t, bool> missing_logged_;
  std::unordered_map<uint32_t, std::shared_ptr<const ChunkTable>> chunk_infos_;
  // One loader per blob at a time, so a table is read from the blob once
  // even when many threads miss it together.
  std::unordered_map<uint32_t, std::shared_ptr<std::mutex>> table_load_mu_;
  std::unordered_map<std::string, bool> warned_;  // "<blob index>/<key>"
  struct FailureLog {
    std::chrono::steady_clock::time_point last{};
    uint64_t suppressed = 0;
  };
  std::unordered_map<uint32_t, FailureLog> failure_log_;
  // Cache files per blob; a null entry means "tried, not usable".
  std::unordered_map<uint32_t, std::unique_ptr<BlobCacheFile>> caches_;

  std::mutex flights_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Flight>> flights_;  // key: blob << 32 | chunk
  std::atomic<int> demand_fetches_{0};  // on-demand backend fetches in flight
  CacheMetrics own_metrics_;
  CacheMetrics* const metrics_;
};

}  // namespace nydus::backend
