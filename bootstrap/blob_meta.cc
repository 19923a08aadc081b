// Parsers for the metadata trailing a nydus data blob (rafs-format.md §5):
// blob.meta header and chunk-info array, tail tar headers, ToC.
#include "bootstrap/blob_meta.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "bootstrap/le.h"
#include "bootstrap/rafs_v6_format.h"
#include "common/bits.h"
#include "common/text.h"

namespace nydus::bootstrap {
namespace {

using le::in_bounds;
using le::load_u32;
using le::load_u64;

constexpr uint64_t kCiV1Size = 16;
constexpr uint64_t kCiV2Size = 24;
constexpr uint64_t kZranContextSize = 40;
constexpr uint64_t kDigestSize = 32;
constexpr uint64_t kTocEntrySize = 128;

// ci v2 per-entry flags (§5.2).
constexpr uint32_t kCiCompressed = 0x01;
constexpr uint32_t kCiZran = 0x02;
constexpr uint32_t kCiBatch = 0x04;
constexpr uint32_t kCiEncrypted = 0x08;
constexpr uint32_t kCiHasCrc32 = 0x10;
constexpr uint32_t kCiKnownFlags = 0x1f;

std::string meta_where(const BlobInfo& blob, const char* what) {
  std::string s = "blob";
  if (!blob.id.empty()) s += " " + blob.id;
  return s + ": " + what + ": ";
}

// Octal tar number: optional leading spaces, digits, then NUL/space/end.
bool parse_octal(std::span<const uint8_t> field, uint64_t* out) {
  size_t i = 0;
  while (i < field.size() && field[i] == ' ') ++i;
  uint64_t v = 0;
  size_t digits = 0;
  for (; i < field.size() && field[i] >= '0' && field[i] <= '7'; ++i, ++digits) {
    if (v >> 60) return false;
    v = v << 3 | (field[i] - '0');
  }
  if (digits == 0) return false;
  for (; i < field.size(); ++i)
    if (field[i] != 0 && field[i] != ' ') return false;
  *out = v;
  return true;
}

// GNU size field: octal, or base-256 (high bit of the first byte set).
bool parse_tar_size(std::span<const uint8_t> field, uint64_t* out) {
  if (!(field[0] & 0x80)) return parse_octal(field, out);
  if (field[0] & 0x40) return false;  // negative
  uint64_t v = field[0] & 0x3f;
  for (size_t i = 1; i < field.size(); ++i) {
    if (v >> 55) return false;
    v = v << 8 | field[i];
  }
  *out = v;
  return true;
}

}  // namespace

Result<BlobMetaHeader> parse_blob_meta_header(std::span<const uint8_t> header, const BlobInfo& blob) {
  const std::string where = meta_where(blob, "blob.meta header");
  if (header.size() != kBlobMetaHeaderSize)
    return Status::invalid(where + "size " + std::to_string(header.size()) + " is not 4096");
  if (load_u32(header, 0) != kBlobMetaMagic || load_u32(header, kBlobMetaHeaderSize - 4) != kBlobMetaMagic)
    return Status::invalid(where + "bad magic");
  BlobMetaHeader h;
  h.features = load_u32(header, 4);
  if (!v6::blob_features_valid(h.features))
    return Status::invalid(where + "unknown features in " + hex(h.features));
  uint32_t comp = load_u32(header, 8);
  if (!v6::compressor_from_id(comp, &h.ci_compressor))
    return Status::invalid(where + "unknown ci compressor " + std::to_string(comp));
  h.ci_entries = load_u32(header, 12);
  h.ci_offset = load_u64(header, 16);
  h.ci_compressed_size = load_u64(header, 24);
  h.ci_uncompressed_size = load_u64(header, 32);
  uint64_t zran_offset = load_u64(header, 40);
  uint64_t zran_size = load_u64(header, 48);
  uint32_t zran_count = load_u32(header, 56);

  if (h.ci_entries == 0 || h.ci_entries > v6::kMaxChunksPerBlob)
    return Status::invalid(where + "entry count " + std::to_string(h.ci_entries) + " is not in 1..2^24");
  if (h.ci_offset > UINT64_MAX - h.ci_compressed_size)
    return Status::invalid(where + "ci offset + compressed size overflows");
  if (h.ci_compressed_size > h.ci_uncompressed_size)
    return Status::invalid(where + "compressed size exceeds uncompressed size");

  const uint64_t n = h.ci_entries;
  const bool v2 = h.features & v6::kBlobChunkInfoV2;
  const bool extra_tables = h.features & (v6::kBlobZran | v6::kBlobBatch);
  if (extra_tables && !v2) return Status::invalid(where + "ZRAN/BATCH without CHUNK_INFO_V2");
  if (v2 && extra_tables) {
    if (h.ci_uncompressed_size < n * kCiV2Size)
      return Status::invalid(where + "uncompressed size too small for " + std::to_string(n) + " v2 entries");
  } else if (v2) {
    if (h.ci_uncompressed_size != n * kCiV2Size)
      return Status::invalid(where + "uncompressed size != " + std::to_string(n) + " x 24");
  } else if (!(h.features & v6::kBlobChunkdictGenerated) && h.ci_uncompressed_size != n * kCiV1Size) {
    return Status::invalid(where + "uncompressed size != " + std::to_string(n) + " x 16");
  }
  if (h.features & v6::kBlobZran) {
    if (zran_offset != n * kCiV2Size || zran_size > h.ci_uncompressed_size - zran_offset || zran_count > n ||
        zran_count * kZranContextSize > zran_size)
      return Status::invalid(where + "zran table (offset " + hex(zran_offset) + ", size " + hex(zran_size) +
                             ", " + std::to_string(zran_count) + " contexts) is inconsistent");
  }

  // Cross-check with the bootstrap's blob entry where it records the values.
  if (blob.chunk_count != 0 && !(h.features & v6::kBlobChunkdictGenerated) &&
      h.ci_entries != blob.chunk_count)
    return Status::invalid(where + std::to_string(h.ci_entries) + " entries but the blob has " +
                           std::to_string(blob.chunk_count) + " chunks");
  if (blob.meta_ci_uncompressed_size != 0 || blob.meta_ci_offset != 0) {
    if (h.ci_compressor != blob.meta_ci_compressor || h.ci_offset != blob.meta_ci_offset ||
        h.ci_compressed_size != blob.meta_ci_compressed_size ||
        h.ci_uncompressed_size != blob.meta_ci_uncompressed_size)
      return Status::invalid(where + "compressor/offset/sizes differ from the bootstrap's blob entry");
  }
  return h;
}

Result<std::vector<ChunkRef>> parse_chunk_infos(std::span<const uint8_t> payload,
                                                const BlobMetaHeader& header, const BlobInfo& blob,
                                                std::span<const uint8_t> digests) {
  const std::string where = meta_where(blob, "blob.meta");
  struct Named {
    uint32_t bit;
    const char* name;
  };
  for (Named f : {Named{v6::kBlobZran, "ZRAN"}, Named{v6::kBlobBatch, "BATCH"},
                  Named{v6::kBlobEncrypted, "ENCRYPTED"}}) {
    if (header.features & f.bit)
      return Status::unsupported(where + "chunk infos of " + f.name + " blobs are not supported");
  }
  const bool v2 = header.features & v6::kBlobChunkInfoV2;
  const uint64_t entry_size = v2 ? kCiV2Size : kCiV1Size;
  const uint64_t n = header.ci_entries;
  if (n > v6::kMaxChunksPerBlob || payload.size() / entry_size < n)
    return Status::invalid(where + "payload of " + std::to_string(payload.size()) +
                           " bytes holds fewer than " + std::to_string(n) + " entries");
  if (!digests.empty() && digests.size() / kDigestSize < n)
    return Status::invalid(where + "digest array of " + std::to_string(digests.size()) + " bytes is short");
  const uint64_t max_d =
      blob.chunk_size != 0 ? std::min<uint64_t>(blob.chunk_size, v6::kMaxChunkSize) : v6::kMaxChunkSize;

  std::vector<ChunkRef> out;
  out.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t e = i * entry_size;
    const std::string ewhere = where + "entry " + std::to_string(i) + ": ";
    uint64_t u = load_u64(payload, e), c = load_u64(payload, e + 8);
    ChunkRef r;
    r.blob_index = blob.index;
    r.chunk_index = static_cast<uint32_t>(i);
    uint64_t d_size = 0, c_size = 0;
    if (!v2) {
      r.uncompressed_offset = u & 0x00000FFFFFFFF000ull;
      d_size = ((u >> 44) | ((u & 0xF00) << 12)) + 1;
      r.compressed_offset = c & 0xFFFFFFFFFFull;
      c_size = ((c >> 44) | ((c & 0xF0000000000ull) >> 20)) + 1;
      r.compressed = c_size != d_size;  // v1 has no flags (§2 keep-if-smaller)
    } else {
      uint64_t data = load_u64(payload, e + 16);
      uint32_t flags = static_cast<uint32_t>(u >> 56);
      if (flags & ~kCiKnownFlags) return Status::invalid(ewhere + "unknown flags " + hex(flags));
      if (flags & (kCiZran | kCiBatch | kCiEncrypted))
        return Status::unsupported(ewhere + "zran/batch/encrypted chunks are not supported");
      r.uncompressed_offset = (u & 0xFFFFFFFFull) << 12;
      d_size = ((u >> 32) & 0xFFFFFF) + 1;
      r.compressed_offset = c & 0xFFFFFFFFFFull;
      c_size = c >> 40;
      r.compressed = flags & kCiCompressed;
      r.has_crc32 = flags & kCiHasCrc32;
      r.crc32 = r.has_crc32 ? static_cast<uint32_t>(data) : 0;
      if (c_size == 0) return Status::invalid(ewhere + "compressed size is 0");
      if (!r.compressed && c_size != d_size)
        return Status::invalid(ewhere + "uncompressed chunk with compressed size != uncompressed size");
    }
    if (d_size > max_d || c_size > v6::kMaxChunkSize)
      return Status::invalid(ewhere + "sizes " + std::to_string(c_size) + "/" + std::to_string(d_size) +
                             " exceed the chunk size");
    r.compressed_size = static_cast<uint32_t>(c_size);
    r.uncompressed_size = static_cast<uint32_t>(d_size);
    // Offsets are at most 44 bits and sizes 25 bits: the sums cannot wrap.
    if (blob.compressed_size != 0 && r.compressed_offset + c_size > blob.compressed_size)
      return Status::invalid(ewhere + "compressed range ends at " + hex(r.compressed_offset + c_size) +
                             ", past blob size " + hex(blob.compressed_size));
    if (blob.uncompressed_size != 0 && r.uncompressed_offset + d_size > blob.uncompressed_size)
      return Status::invalid(ewhere + "uncompressed range ends past the blob's uncompressed size");
    if (!digests.empty()) std::memcpy(r.digest.data(), digests.data() + i * kDigestSize, kDigestSize);
    out.push_back(r);
  }
  return out;
}

Result<BlobMetaHeader> parse_blob_meta_file(std::span<const uint8_t> file, const BlobInfo& blob) {
  const std::string where = meta_where(blob, "blob.meta file");
  if (file.size() < kBlobMetaHeaderSize || file.size() % 4096 != 0)
    return Status::invalid(where + "size " + std::to_string(file.size()) + " is not a multiple of 4096");
  auto header = parse_blob_meta_header(file.subspan(file.size() - kBlobMetaHeaderSize), blob);
  if (!header.ok()) return header.status();
  const uint64_t payload = header->ci_uncompressed_size;
  if (payload > file.size() || round_up_4k(payload) + kBlobMetaHeaderSize != file.size())
    return Status::invalid(where + "size " + std::to_string(file.size()) + " != round4k(" +
                           std::to_string(payload) + ") + 4096");
  return header;
}

Result<TarSection> parse_tar_header(std::span<const uint8_t> h) {
  if (h.size() != kTarHeaderSize)
    return Status::invalid("tar header: size " + std::to_string(h.size()) + " is not 512");
  if (std::all_of(h.begin(), h.end(), [](uint8_t c) { return c == 0; }))
    return Status::invalid("tar header: all-zero block (end of archive), not a header");
  uint64_t stored = 0;
  if (!parse_octal(h.subspan(148, 8), &stored))
    return Status::invalid("tar header: unreadable checksum field");
  uint64_t sum_unsigned = 0;
  int64_t sum_signed = 0;
  for (size_t i = 0; i < h.size(); ++i) {
    uint8_t c = (i >= 148 && i < 156) ? ' ' : h[i];
    sum_unsigned += c;
    sum_signed += static_cast<int8_t>(c);
  }
  // Historic tars summed signed chars; accept either.
  if (stored != sum_unsigned && static_cast<int64_t>(stored) != sum_signed)
    return Status::invalid("tar header: checksum " + std::to_string(stored) + " != computed " +
                           std::to_string(sum_unsigned));
  static constexpr uint8_t kGnuMagic[8] = {'u', 's', 't', 'a', 'r', ' ', ' ', 0};
  static constexpr uint8_t kPosixMagic[8] = {'u', 's', 't', 'a', 'r', 0, '0', '0'};
  bool gnu = std::memcmp(h.data() + 257, kGnuMagic, 8) == 0;
  bool posix = std::memcmp(h.data() + 257, kPosixMagic, 8) == 0;
  if (!gnu && !posix) return Status::invalid("tar header: no ustar magic");
  uint8_t type = h[156];
  if (type != '0' && type != 0)
    return Status::invalid("tar header: type flag " + std::to_string(type) + " is not a regular file");
  TarSection s;
  auto name = reinterpret_cast<const char*>(h.data());
  s.name.assign(name, strnlen(name, 100));
  if (posix) {
    auto prefix = reinterpret_cast<const char*>(h.data() + 345);
    size_t plen = strnlen(prefix, 155);
    if (plen != 0) s.name = std::string(prefix, plen) + "/" + s.name;
  }
  if (s.name.empty()) return Status::invalid("tar header: empty name");
  if (!parse_tar_size(h.subspan(124, 12), &s.size))
    return Status::invalid("tar header: unreadable size field");
  return s;
}

Result<std::vector<TocEntry>> parse_toc(std::span<const uint8_t> entries) {
  if (entries.size() % kTocEntrySize != 0)
    return Status::invalid("ToC: size " + std::to_string(entries.size()) + " is not a multiple of 128");
  std::vector<TocEntry> out;
  out.reserve(entries.size() / kTocEntrySize);
  for (uint64_t off = 0; off < entries.size(); off += kTocEntrySize) {
    const std::string where = "ToC entry " + std::to_string(off / kTocEntrySize) + ": ";
    TocEntry t;
    t.flags = load_u32(entries, off);
    // Exactly one of none/zstd/lz4_block (§1.8); reserved bytes are ignored
    // because old builders left struct padding garbage there.
    if (t.flags != 0x1 && t.flags != 0x2 && t.flags != 0x4)
      return Status::invalid(where + "unknown compression flags " + hex(t.flags));
    auto name = reinterpret_cast<const char*>(entries.data() + off + 8);
    t.name.assign(name, strnlen(name, 16));
    if (t.name.empty()) return Status::invalid(where + "empty name");
    std::memcpy(t.sha256.data(), entries.data() + off + 24, 32);
    t.compressed_offset = load_u64(entries, off + 56);
    t.compressed_size = load_u64(entries, off + 64);
    t.uncompressed_size = load_u64(entries, off + 72);
    if (t.compressed_offset > UINT64_MAX - t.compressed_size)
      return Status::invalid(where + "offset + size overflows");
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace nydus::bootstrap
