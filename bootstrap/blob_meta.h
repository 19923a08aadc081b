// Parsers for the metadata a nydus data blob carries after its chunk data
// (rafs-format.md §5): the blob.meta chunk-info table with its 4096-byte
// header, the 512-byte trailing tar headers, and the ToC. All inputs are
// untrusted byte spans; every function is pure and thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::bootstrap {

inline constexpr uint32_t kBlobMetaMagic = 0xB10BB10B;
inline constexpr size_t kBlobMetaHeaderSize = 4096;
inline constexpr size_t kTarHeaderSize = 512;

struct BlobMetaHeader {
  uint32_t features = 0;
  Compressor ci_compressor = Compressor::kNone;
  uint32_t ci_entries = 0;
  uint64_t ci_offset = 0;
  uint64_t ci_compressed_size = 0;
  uint64_t ci_uncompressed_size = 0;
};

// Decodes and checks the 4096-byte header (both magics, entry count and
// sizes consistent with `blob`, when `blob` records them).
Result<BlobMetaHeader> parse_blob_meta_header(std::span<const uint8_t> header,
                                              const BlobInfo& blob);

// Decodes the uncompressed chunk-info array (v1 16-byte or v2 24-byte
// entries, chosen by the CHUNK_INFO_V2 feature) into ChunkRefs indexed by
// chunk index. `digests` (blob.digest, 32 bytes per chunk) is optional;
// without it ChunkRef::digest stays zero. Every entry is checked: sizes
// <= 16 MiB, uncompressed size <= chunk size, offsets do not overflow,
// compressed range inside `blob.compressed_size` when known.
Result<std::vector<ChunkRef>> parse_chunk_infos(std::span<const uint8_t> payload,
                                                const BlobMetaHeader& header,
                                                const BlobInfo& blob,
                                                std::span<const uint8_t> digests);

// The `<blob_id>.blob.meta` cache file: payload padded to 4 KiB, then the
// header (nydusd-contract.md §6). Returns the header; the payload is the
// first header.ci_uncompressed_size bytes of `file`.
Result<BlobMetaHeader> parse_blob_meta_file(std::span<const uint8_t> file, const BlobInfo& blob);

// One trailing tar header ("data then header", §5.4).
struct TarSection {
  std::string name;
  uint64_t size = 0;
};
// Checks the checksum and magic; fails on anything that is not a header.
Result<TarSection> parse_tar_header(std::span<const uint8_t> header512);

struct TocEntry {
  std::string name;     // image.blob, blob.meta, blob.meta.header, blob.digest, image.boot
  uint32_t flags = 0;   // 0x1 none, 0x2 zstd, 0x4 lz4_block
  Digest sha256{};
  uint64_t compressed_offset = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
};
// Parses ToC entries (a multiple of 128 bytes, without the tar header).
Result<std::vector<TocEntry>> parse_toc(std::span<const uint8_t> entries);

}  // namespace nydus::bootstrap
