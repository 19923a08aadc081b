// ChunkReader: turns a bootstrap::ChunkRef into verified uncompressed bytes.
//
// Read path: backend reader for the blob -> raw bytes at
// compressed_offset -> decompress if the chunk is compressed -> verify the
// digest (when validation is on) -> copy into the caller's buffer. Chunks
// whose location is not in the bootstrap (ChunkRef::located == false) are
// resolved through the blob's blob.meta table, loaded once per blob from
// `<work_dir>/<blob_id>.blob.meta` or from the blob itself.
//
// Validation (validate_digest): the uncompressed bytes must match the
// chunk digest with the blob's digester, and the CRC-32C when the chunk
// records one. For chunks resolved through blob.meta the digest comes from
// the blob's digest array (blob.digest, found through its ToC and checked
// against the bootstrap's toc_digest); a blob without one is checked by
// decompression and CRC-32C only, and a WARN line says so once per blob.
//
// Errors name the blob and chunk; a missing blob is reported (logged) once
// per blob, not once per read (an INFO line follows if it appears later).
// A chunk-info table is loaded once per blob and kept; failures to load it
// are not cached. Compressed bytes go through a per-thread scratch buffer
// (kept up to 4 MiB between reads); stored chunks are read straight into
// the caller's buffer. Thread-safe: any number of concurrent reads.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/blob_backend.h"
#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::backend {

struct ChunkReaderOptions {
  bool validate_digest = false;  // v1 `digest_validate`
  std::string work_dir;          // where `<blob_id>.blob.meta` may live; "" = none
};

class ChunkReader {
 public:
  ChunkReader(std::vector<bootstrap::BlobInfo> blobs, std::unique_ptr<BlobBackend> backend,
              ChunkReaderOptions options);

  // Writes the whole uncompressed chunk into `dst` (dst.size() must equal
  // chunk.uncompressed_size). kCorrupt on digest or decompression failure,
  // kNotFound when the blob is missing, kIo on transport errors.
  Status read_chunk(const bootstrap::ChunkRef& chunk, std::span<uint8_t> dst);

  BlobBackend& backend() { return *backend_; }
  const std::vector<bootstrap::BlobInfo>& blobs() const { return blobs_; }

 private:
  // A blob's chunk-info table (from blob.meta), indexed by chunk index.
  // has_digests: ChunkRef::digest was filled from the blob's digest array.
  struct ChunkTable {
    std::vector<bootstrap::ChunkRef> chunks;
    bool has_digests = false;
  };

  Result<std::shared_ptr<BlobReader>> reader_for(uint32_t blob_index);
  // Resolves an unlocated chunk through the blob's chunk-info table. Sets
  // *digest_known when the result carries a digest to verify against.
  Result<bootstrap::ChunkRef> locate(const bootstrap::ChunkRef& chunk, bool* digest_known);
  Result<std::shared_ptr<const ChunkTable>> chunk_table(uint32_t blob_index);
  Result<ChunkTable> load_chunk_table(uint32_t blob_index);
  // Logs a missing blob once (ERROR), later occurrences at debug level.
  void note_missing(uint32_t blob_index, const Status& status);
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
};

}  // namespace nydus::backend
