// On-disk pieces of a nydus data blob tail (rafs-format.md §5) that the blob
// writer produces and tests reproduce byte for byte. Private to builder/ and
// its tests. Pure functions, thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "bootstrap/image.h"

namespace nydus::builder::blobfmt {

// BlobFeatures (§1.5) the writer sets.
inline constexpr uint32_t kFeatureAligned = 0x0000'0001;
inline constexpr uint32_t kFeatureInlinedChunkDigest = 0x0000'0020;
inline constexpr uint32_t kFeatureHasTarHeader = 0x1000'0000;
inline constexpr uint32_t kFeatureHasToc = 0x2000'0000;
inline constexpr uint32_t kFeatureCapTarToc = 0x4000'0000;
// What nydus-image 2.2+ writes for a v6 blob with `--features blob-toc`
// (the fixture blob be7d77… carries exactly this).
inline constexpr uint32_t kV6BlobFeatures = kFeatureAligned | kFeatureInlinedChunkDigest |
                                            kFeatureHasTarHeader | kFeatureHasToc |
                                            kFeatureCapTarToc;

inline constexpr size_t kTarHeaderSize = 512;
inline constexpr size_t kTocEntrySize = 128;
inline constexpr size_t kMetaHeaderSize = 4096;
inline constexpr size_t kCiV1EntrySize = 16;

// ToC entry flags (§1.8).
inline constexpr uint32_t kTocNone = 0x1;
inline constexpr uint32_t kTocZstd = 0x2;
inline constexpr uint32_t kTocLz4Block = 0x4;

// The 512-byte trailing tar header nydus-image writes after a section: a
// GNU header from the Rust `tar` crate (Header::new_gnu, set_path,
// set_entry_type(Regular), set_size, set_cksum): name, mode/uid/gid left
// NUL, size in 11 octal digits + NUL (base-256 when >= 8 GiB), mtime
// "00000000000\0", checksum in 7 octal digits + NUL, type '0', magic
// "ustar " version " \0". `name` must be shorter than 100 bytes.
std::array<uint8_t, kTarHeaderSize> tar_header(std::string_view name, uint64_t size);

// One 16-byte blob.meta v1 chunk-info entry (§5.2) for a chunk whose
// offsets and sizes fit the v1 fields (uncompressed offset 4 KiB aligned
// below 2^44, compressed offset below 2^40, sizes 1..16 MiB).
std::array<uint8_t, kCiV1EntrySize> ci_v1_entry(uint64_t compressed_offset, uint32_t compressed_size,
                                                uint64_t uncompressed_offset, uint32_t uncompressed_size);

// The 4096-byte blob.meta header (BlobCompressionContextHeader).
std::array<uint8_t, kMetaHeaderSize> meta_header(uint32_t features, bootstrap::Compressor ci_compressor,
                                                 uint32_t entries, uint64_t ci_offset,
                                                 uint64_t ci_compressed_size, uint64_t ci_uncompressed_size);

// One 128-byte ToC entry; `name` at most 16 bytes.
std::array<uint8_t, kTocEntrySize> toc_entry(std::string_view name, uint32_t flags,
                                             const bootstrap::Digest& sha256, uint64_t compressed_offset,
                                             uint64_t compressed_size, uint64_t uncompressed_size);

}  // namespace nydus::builder::blobfmt
