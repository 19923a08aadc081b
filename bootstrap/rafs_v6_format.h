// Constants and small checks shared by the RAFS v6 reader (rafs_v6.cc) and
// the blob.meta parsers (blob_meta.cc). Values from rafs-format.md §1.
// Private to bootstrap/.
#pragma once

#include <cstdint>

#include "bootstrap/image.h"

namespace nydus::bootstrap::v6 {

inline constexpr uint64_t kMaxChunkSize = 16u << 20;  // §1.10
inline constexpr uint64_t kMinChunkSize = 4096;
inline constexpr uint32_t kMaxChunksPerBlob = 1u << 24;           // §1.10
inline constexpr uint64_t kMaxBlobUncompressedSize = 1ull << 44;  // §4.5
inline constexpr uint64_t kMaxBlobCompressedSize = 1ull << 40;

// BlobFeatures (§1.5).
inline constexpr uint32_t kBlobAligned = 0x1;
inline constexpr uint32_t kBlobInlinedFsMeta = 0x2;
inline constexpr uint32_t kBlobChunkInfoV2 = 0x4;
inline constexpr uint32_t kBlobZran = 0x8;
inline constexpr uint32_t kBlobSeparate = 0x10;
inline constexpr uint32_t kBlobInlinedChunkDigest = 0x20;
inline constexpr uint32_t kBlobTarfs = 0x40;
inline constexpr uint32_t kBlobBatch = 0x80;
inline constexpr uint32_t kBlobEncrypted = 0x100;
inline constexpr uint32_t kBlobChunkdictGenerated = 0x200;
inline constexpr uint32_t kBlobExternal = 0x800;
inline constexpr uint32_t kBlobV5NoExtTable = 0x80000000;

// BlobChunkFlags (§1.6), 80-byte chunk record.
inline constexpr uint32_t kChunkCompressed = 0x01;
inline constexpr uint32_t kChunkHole = 0x02;
inline constexpr uint32_t kChunkEncrypted = 0x04;
inline constexpr uint32_t kChunkBatch = 0x08;
inline constexpr uint32_t kChunkHasCrc32 = 0x10;
inline constexpr uint32_t kChunkKnownFlags = 0x1f;

// §1.5: bits 12..15 are unknown incompatible bits; the v5-internal bit is
// never valid on disk.
inline constexpr bool blob_features_valid(uint32_t f) {
  return (f & 0xf000u) == 0 && (f & kBlobV5NoExtTable) == 0;
}

// The first feature in `f` this reader cannot serve yet (rafs-format.md
// §5.7), or nullptr. `*bit` receives its value.
inline const char* unsupported_blob_feature(uint32_t f, uint32_t* bit) {
  struct Named {
    uint32_t bit;
    const char* name;
  };
  static constexpr Named kUnsupported[] = {
      {kBlobZran, "ZRAN"},   {kBlobSeparate, "SEPARATE"},   {kBlobTarfs, "TARFS"},
      {kBlobBatch, "BATCH"}, {kBlobEncrypted, "ENCRYPTED"}, {kBlobExternal, "EXTERNAL"},
  };
  for (const auto& n : kUnsupported) {
    if (f & n.bit) {
      *bit = n.bit;
      return n.name;
    }
  }
  return nullptr;
}

// Numeric compressor id (§1.1) -> enum; false for unknown ids.
inline bool compressor_from_id(uint32_t id, Compressor* out) {
  if (id > 3) return false;
  *out = static_cast<Compressor>(id);
  return true;
}

inline bool digester_from_id(uint32_t id, Digester* out) {
  if (id > 1) return false;
  *out = static_cast<Digester>(id);
  return true;
}

}  // namespace nydus::bootstrap::v6
