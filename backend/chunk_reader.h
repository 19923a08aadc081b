// ChunkReader: turns a bootstrap::ChunkRef into verified uncompressed bytes.
//
// Read path: backend reader for the blob -> raw bytes at
// compressed_offset -> decompress if the chunk is compressed -> verify the
// digest (when validation is on) -> copy into the caller's buffer. Chunks
// whose location is not in the bootstrap (ChunkRef::located == false) are
// resolved through the blob's blob.meta table, loaded once per blob from
// `<work_dir>/<blob_id>.blob.meta` or from the blob itself.
//
// Errors name the blob and chunk; a missing blob is reported (logged) once
// per blob, not once per read. Thread-safe: any number of concurrent reads.
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
  Result<std::shared_ptr<BlobReader>> reader_for(uint32_t blob_index);
  Result<bootstrap::ChunkRef> locate(const bootstrap::ChunkRef& chunk);

  const std::vector<bootstrap::BlobInfo> blobs_;
  const std::unique_ptr<BlobBackend> backend_;
  const ChunkReaderOptions options_;

  std::mutex mu_;  // guards the maps below
  std::unordered_map<uint32_t, std::shared_ptr<BlobReader>> readers_;
  std::unordered_map<uint32_t, bool> missing_logged_;
  std::unordered_map<uint32_t, std::shared_ptr<const std::vector<bootstrap::ChunkRef>>> chunk_infos_;
};

}  // namespace nydus::backend
