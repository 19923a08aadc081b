// BlobWriter: writes one nydus data blob the way nydus-image 2.2+ does
// (rafs-format.md §5, fixture blobs/be7d77…): chunk data, then (v6) the
// blob.meta chunk-info table with its 4096-byte header, the blob.digest
// array and the ToC, each section followed by a 512-byte tar header.
//
// Chunks are deduplicated inside the blob by digest (an identical chunk is
// stored once and its ChunkRef reused). The blob id is the sha256 of every
// byte written except the raw blob.digest payload. Output goes to a
// temporary file in the target directory, renamed to `<blob_id>` by
// finish() (or to BlobWriterOptions::final_path); a writer destroyed before
// finish() removes its temporary file. Single-threaded: one writer per
// thread. The expensive part of adding a chunk (digest, CRC, compression)
// can run on other threads through prepare_chunk(); add_prepared_chunk()
// then only deduplicates and appends, in the caller's order.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::builder {

struct BlobWriterOptions {
  bootstrap::Compressor compressor = bootstrap::Compressor::kZstd;
  bootstrap::Digester digester = bootstrap::Digester::kBlake3;
  uint32_t chunk_size = 1 << 20;
  uint32_t fs_version = 6;     // 6: blob.meta + digest + ToC sections; 5: chunk data only
  uint32_t blob_index = 0;     // recorded in every ChunkRef
  // With compressor none, pad chunk data to 4 KiB so that compressed and
  // uncompressed offsets coincide and the blob can serve as an EROFS device.
  bool align_uncompressed_data = true;
  // Where finish() renames the blob; "" = `<dir>/<blob_id>`. Must be on
  // the file system of `dir` (rename(2)).
  std::string final_path;
};

// One chunk digested, and unless deferred, CRC'd and compressed (with the
// keep-if-smaller rule) ahead of BlobWriter::add_prepared_chunk().
struct PreparedChunk {
  bootstrap::Digest digest{};
  // false: only `digest` is set; the writer computes the rest if the chunk
  // turns out to be new (callers skip that work for likely duplicates).
  bool packed_ready = false;
  uint32_t crc32 = 0;
  bool compressed = false;      // `packed` holds the compressed bytes
  std::vector<uint8_t> packed;  // empty unless compressed
};

// Pure and thread-safe. `pack` false computes only the digest.
Result<PreparedChunk> prepare_chunk(const BlobWriterOptions& options, std::span<const uint8_t> data, bool pack);
// Completes a digest-only PreparedChunk (CRC and compression).
Status pack_chunk(const BlobWriterOptions& options, std::span<const uint8_t> data, PreparedChunk* chunk);

class BlobWriter {
 public:
  // Creates a temporary file in `dir`.
  static Result<std::unique_ptr<BlobWriter>> create(const std::string& dir, BlobWriterOptions options);
  virtual ~BlobWriter() = default;

  // Adds one chunk of uncompressed data (at most chunk_size bytes). Returns
  // its ChunkRef (file_offset left 0 for the caller to set); a chunk whose
  // digest was seen before returns the earlier ChunkRef.
  virtual Result<bootstrap::ChunkRef> add_chunk(std::span<const uint8_t> data) = 0;
  // The same with the digest (and maybe compression) done by
  // prepare_chunk() with this writer's options; `data` is the uncompressed
  // chunk. Gives byte-identical output to add_chunk(data).
  virtual Result<bootstrap::ChunkRef> add_prepared_chunk(std::span<const uint8_t> data, PreparedChunk chunk) = 0;

  // Writes the trailing sections, renames the file to `<dir>/<blob_id>` and
  // returns the blob table entry (id, sizes, counts, features, meta fields).
  // A blob with no chunks is not written at all (returns an info with an
  // empty id).
  virtual Result<bootstrap::BlobInfo> finish() = 0;
  // finish() in two steps, so a caller can prepare what depends on the blob
  // id before the blob appears under its final name: seal() writes the
  // trailing sections, syncs the file and returns the blob table entry;
  // commit() renames it. A writer destroyed before commit() removes its
  // temporary file.
  virtual Result<bootstrap::BlobInfo> seal() = 0;
  virtual Status commit() = 0;

  virtual uint64_t chunks_added() const = 0;   // including dedup hits
  virtual uint64_t chunks_stored() const = 0;
  virtual uint64_t bytes_in() const = 0;
  virtual uint64_t bytes_out() const = 0;
};

}  // namespace nydus::builder
