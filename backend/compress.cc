#include "backend/compress.h"

#include <lz4.h>
#include <zstd.h>

#include <cstring>
#include <limits>
#include <memory>
#include <string>

namespace nydus::backend {
namespace {

using bootstrap::Compressor;

std::string sizes(std::span<const uint8_t> src, size_t expected) {
  return std::to_string(src.size()) + " compressed bytes, expected " + std::to_string(expected) +
         " uncompressed";
}

Status decompress_lz4(std::span<const uint8_t> src, std::span<uint8_t> dst) {
  // LZ4's API takes int sizes; chunks are <= 16 MiB, so anything larger is
  // a metadata error, not something to truncate.
  if (src.size() > static_cast<size_t>(LZ4_MAX_INPUT_SIZE) ||
      dst.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
    return Status::corrupt("lz4_block: sizes out of range (" + sizes(src, dst.size()) + ")");
  // A bare block carries no length of its own: both sizes come from the
  // metadata, and LZ4_decompress_safe fails unless the block decodes
  // within dst and ends exactly at the end of src.
  const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(src.data()),
                                    reinterpret_cast<char*>(dst.data()),
                                    static_cast<int>(src.size()), static_cast<int>(dst.size()));
  if (n < 0) return Status::corrupt("lz4_block: corrupt block (" + sizes(src, dst.size()) + ")");
  if (static_cast<size_t>(n) != dst.size())
    return Status::corrupt("lz4_block: block decoded to " + std::to_string(n) + " bytes (" +
                           sizes(src, dst.size()) + ")");
  return Status::Ok();
}

struct DCtxDeleter {
  void operator()(ZSTD_DCtx* ctx) const { ZSTD_freeDCtx(ctx); }
};
struct CCtxDeleter {
  void operator()(ZSTD_CCtx* ctx) const { ZSTD_freeCCtx(ctx); }
};

// One context per thread: ZSTD_decompress would allocate (and zero) a
// fresh ~100 KiB context for every chunk.
ZSTD_DCtx* thread_dctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxDeleter> ctx(ZSTD_createDCtx());
  return ctx.get();
}
ZSTD_CCtx* thread_cctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxDeleter> ctx(ZSTD_createCCtx());
  return ctx.get();
}

Status decompress_zstd(std::span<const uint8_t> src, std::span<uint8_t> dst) {
  // nydus writes exactly one frame per chunk. Check the frame before
  // decoding so that trailing bytes (a wrong compressed_size in the
  // metadata) are reported rather than silently decoded as more frames.
  const size_t frame_size = ZSTD_findFrameCompressedSize(src.data(), src.size());
  if (ZSTD_isError(frame_size))
    return Status::corrupt(std::string("zstd: not a valid frame: ") + ZSTD_getErrorName(frame_size) +
                           " (" + sizes(src, dst.size()) + ")");
  if (frame_size != src.size())
    return Status::corrupt("zstd: frame is " + std::to_string(frame_size) + " bytes, chunk has " +
                           sizes(src, dst.size()));
  const unsigned long long content = ZSTD_getFrameContentSize(src.data(), src.size());
  if (content == ZSTD_CONTENTSIZE_ERROR)
    return Status::corrupt("zstd: bad frame header (" + sizes(src, dst.size()) + ")");
  if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != dst.size())
    return Status::corrupt("zstd: frame content size is " + std::to_string(content) + " (" +
                           sizes(src, dst.size()) + ")");
  ZSTD_DCtx* ctx = thread_dctx();
  if (ctx == nullptr) return Status::io("zstd: cannot allocate a decompression context");
  const size_t n = ZSTD_decompressDCtx(ctx, dst.data(), dst.size(), src.data(), src.size());
  if (ZSTD_isError(n))
    return Status::corrupt(std::string("zstd: ") + ZSTD_getErrorName(n) + " (" +
                           sizes(src, dst.size()) + ")");
  if (n != dst.size())
    return Status::corrupt("zstd: frame decoded to " + std::to_string(n) + " bytes (" +
                           sizes(src, dst.size()) + ")");
  return Status::Ok();
}

}  // namespace

Status decompress(Compressor algo, std::span<const uint8_t> src, std::span<uint8_t> dst) {
  switch (algo) {
    case Compressor::kNone:
      if (src.size() != dst.size())
        return Status::corrupt("none: stored chunk has " + std::to_string(src.size()) +
                               " bytes, expected " + std::to_string(dst.size()));
      if (!dst.empty()) std::memcpy(dst.data(), src.data(), dst.size());
      return Status::Ok();
    case Compressor::kLz4Block:
      return decompress_lz4(src, dst);
    case Compressor::kZstd:
      return decompress_zstd(src, dst);
    case Compressor::kGzip:
      return Status::unsupported("gzip (zran) chunks are not supported yet");
  }
  return Status::unsupported("unknown compressor id " + std::to_string(static_cast<uint32_t>(algo)));
}

Result<std::vector<uint8_t>> compress(Compressor algo, std::span<const uint8_t> src) {
  switch (algo) {
    case Compressor::kNone:
      return std::vector<uint8_t>(src.begin(), src.end());
    case Compressor::kLz4Block: {
      if (src.size() > static_cast<size_t>(LZ4_MAX_INPUT_SIZE))
        return Status::invalid("lz4_block: input of " + std::to_string(src.size()) +
                               " bytes is too large");
      const int input = static_cast<int>(src.size());
      std::vector<uint8_t> out(static_cast<size_t>(LZ4_compressBound(input)));
      const int n = LZ4_compress_default(reinterpret_cast<const char*>(src.data()),
                                         reinterpret_cast<char*>(out.data()), input,
                                         static_cast<int>(out.size()));
      if (n <= 0)
        return Status::io("lz4_block: compression of " + std::to_string(src.size()) +
                          " bytes failed");
      out.resize(static_cast<size_t>(n));
      return out;
    }
    case Compressor::kZstd: {
      ZSTD_CCtx* ctx = thread_cctx();
      if (ctx == nullptr) return Status::io("zstd: cannot allocate a compression context");
      std::vector<uint8_t> out(ZSTD_compressBound(src.size()));
      // Level 3 with default parameters is what upstream's
      // zstd::bulk::compress(_, 3) writes: one frame, content size in the
      // header, no checksum.
      const size_t n = ZSTD_compressCCtx(ctx, out.data(), out.size(), src.data(), src.size(), 3);
      if (ZSTD_isError(n))
        return Status::io(std::string("zstd: compression of ") + std::to_string(src.size()) +
                          " bytes failed: " + ZSTD_getErrorName(n));
      out.resize(n);
      return out;
    }
    case Compressor::kGzip:
      return Status::unsupported("gzip (zran) chunks are not supported yet");
  }
  return Status::unsupported("unknown compressor id " + std::to_string(static_cast<uint32_t>(algo)));
}

}  // namespace nydus::backend
