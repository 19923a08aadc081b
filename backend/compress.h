// Chunk (de)compression in nydus framing (rafs-format.md §2): none, bare
// LZ4 blocks (lz4_block), one zstd frame per chunk. gzip is recognized and
// refused with kUnsupported. Pure functions, thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::backend {

// Decompresses `src` into exactly dst.size() bytes. Any mismatch (output
// shorter or longer than dst, corrupt stream) is kCorrupt.
Status decompress(bootstrap::Compressor algo, std::span<const uint8_t> src, std::span<uint8_t> dst);

// Compresses `src`; returns the compressed bytes. Callers apply the
// keep-if-smaller rule themselves.
Result<std::vector<uint8_t>> compress(bootstrap::Compressor algo, std::span<const uint8_t> src);

}  // namespace nydus::backend
