// Digests, CRC-32C and chunk (de)compression, against published vectors
// and the upstream-made fixtures.
#include <zstd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "backend/compress.h"
#include "common/digest.h"
#include "common/file_bytes.h"
#include "test/test_util.h"

namespace nydus::test {

// The unique chunks of a RAFS v5 bootstrap, by chunk index, decoded by hand
// from the 80-byte chunk records (rafs-format.md §3.2, §3.7, §3.9) so these
// tests do not depend on the bootstrap reader. Also used by
// test_chunk_reader.cc.
std::map<uint32_t, bootstrap::ChunkRef> v5_chunks_by_index(const std::string& bootstrap_path) {
  auto file = FileBytes::open(bootstrap_path);
  REQUIRE(file.ok());
  auto b = file->bytes();
  auto u16 = [&](size_t off) { uint16_t v; REQUIRE(off + 2 <= b.size()); std::memcpy(&v, &b[off], 2); return v; };
  auto u32 = [&](size_t off) { uint32_t v; REQUIRE(off + 4 <= b.size()); std::memcpy(&v, &b[off], 4); return v; };
  auto u64 = [&](size_t off) { uint64_t v; REQUIRE(off + 8 <= b.size()); std::memcpy(&v, &b[off], 8); return v; };
  auto align8 = [](uint64_t v) { return (v + 7) & ~uint64_t{7}; };
  REQUIRE(u32(0) == 0x52414653);
  const uint64_t table = u64(32);
  const uint32_t entries = u32(56);
  std::map<uint32_t, bootstrap::ChunkRef> chunks;
  for (uint32_t i = 0; i < entries; ++i) {
    const uint64_t rec = uint64_t{u32(table + 4 * i)} << 3;
    const uint32_t mode = u32(rec + 60);
    if ((mode & 0170000) != 0100000) continue;
    const uint64_t flags = u64(rec + 80);
    uint64_t off = rec + 128 + align8(u16(rec + 100)) + align8(u16(rec + 102));
    if (flags & 0x4) off += 8 + align8(u64(off));
    const uint32_t count = u32(rec + 96);
    for (uint32_t k = 0; k < count; ++k, off += 80) {
      bootstrap::ChunkRef c;
      std::memcpy(c.digest.data(), &b[off], 32);
      c.blob_index = u32(off + 32);
      const uint32_t cflags = u32(off + 36);
      c.compressed = cflags & 0x1;
      c.has_crc32 = cflags & 0x10;
      c.compressed_size = u32(off + 40);
      c.uncompressed_size = u32(off + 44);
      c.compressed_offset = u64(off + 48);
      c.uncompressed_offset = u64(off + 56);
      c.file_offset = 0;  // shared chunks differ only here; irrelevant for the blob
      c.chunk_index = u32(off + 72);
      c.crc32 = u32(off + 76);
      chunks[c.chunk_index] = c;
    }
  }
  return chunks;
}

}  // namespace nydus::test

namespace {

using nydus::Code;
using nydus::bootstrap::Compressor;
using nydus::bootstrap::Digester;

std::span<const uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Compressible but not trivial: words from a small vocabulary.
std::vector<uint8_t> text_bytes(size_t n, uint32_t seed) {
  static const char* kWords[] = {"chunk ", "blob ", "nydus ", "rafs ", "digest\n", "zstd ", "lz4 "};
  std::mt19937 rng(seed);
  std::vector<uint8_t> v;
  while (v.size() < n) {
    const char* w = kWords[rng() % 7];
    v.insert(v.end(), w, w + std::strlen(w));
  }
  v.resize(n);
  return v;
}

std::vector<uint8_t> read_file(const std::string& path) {
  auto f = nydus::FileBytes::open(path);
  REQUIRE(f.ok());
  return {f->bytes().begin(), f->bytes().end()};
}

}  // namespace

TEST_CASE("blake3 and sha256 match published vectors", "[digest]") {
  CHECK(nydus::to_hex(nydus::digest(Digester::kBlake3, {})) ==
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
  CHECK(nydus::to_hex(nydus::digest(Digester::kBlake3, bytes_of("abc"))) ==
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
  CHECK(nydus::to_hex(nydus::digest(Digester::kSha256, bytes_of("abc"))) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(nydus::to_hex(nydus::digest(Digester::kSha256, {})) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_CASE("Hasher over pieces equals the one-shot digest", "[digest]") {
  // Over 1 KiB so blake3 crosses chunk and subtree boundaries.
  const auto data = random_bytes(300 * 1024 + 17, 1);
  for (Digester algo : {Digester::kBlake3, Digester::kSha256}) {
    const auto expected = nydus::digest(algo, data);
    for (size_t piece : {size_t{1}, size_t{63}, size_t{1024}, size_t{65537}}) {
      nydus::Hasher h(algo);
      for (size_t off = 0; off < data.size(); off += piece)
        h.update(std::span<const uint8_t>(data).subspan(off, std::min(piece, data.size() - off)));
      CHECK(h.finish() == expected);
      // finish() does not consume: a second call gives the same digest.
      CHECK(h.finish() == expected);
    }
    nydus::Hasher empty(algo);
    CHECK(empty.finish() == nydus::digest(algo, {}));
  }
}

TEST_CASE("to_hex", "[digest]") {
  const uint8_t b[] = {0x00, 0x01, 0xab, 0xff};
  CHECK(nydus::to_hex(b) == "0001abff");
  CHECK(nydus::to_hex({}) == "");
}

TEST_CASE("crc32c matches the Castagnoli check values", "[digest]") {
  CHECK(nydus::crc32c(bytes_of("123456789")) == 0xE3069283u);
  CHECK(nydus::crc32c({}) == 0u);
  // RFC 3720 (iSCSI) appendix B.4.
  std::vector<uint8_t> zeros(32, 0x00), ones(32, 0xFF), inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<uint8_t>(i);
    dec[i] = static_cast<uint8_t>(31 - i);
  }
  CHECK(nydus::crc32c(zeros) == 0x8A9136AAu);
  CHECK(nydus::crc32c(ones) == 0x62A8AB43u);
  CHECK(nydus::crc32c(inc) == 0x46DD794Eu);
  CHECK(nydus::crc32c(dec) == 0x113FDB5Cu);
}

TEST_CASE("crc32c: the instruction path equals the table on every length and alignment", "[digest]") {
  const std::vector<uint8_t> bytes = random_bytes(4096 + 64, 11);
  CHECK(nydus::crc32c_portable(bytes_of("123456789")) == 0xE3069283u);
  for (size_t start = 0; start < 9; ++start)
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{15}, size_t{16}, size_t{63},
                     size_t{1000}, size_t{4096}}) {
      const std::span<const uint8_t> part(bytes.data() + start, n);
      INFO("start " << start << " length " << n);
      CHECK(nydus::crc32c(part) == nydus::crc32c_portable(part));
    }
}

TEST_CASE("compress and decompress round trip", "[compress]") {
  for (Compressor algo : {Compressor::kNone, Compressor::kLz4Block, Compressor::kZstd}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{4096}, size_t{1} << 20}) {
      for (const auto& input : {random_bytes(n, 7), text_bytes(n, 9)}) {
        INFO(nydus::bootstrap::compressor_name(algo) << " " << n << " bytes");
        auto packed = nydus::backend::compress(algo, input);
        REQUIRE(packed.ok());
        std::vector<uint8_t> out(n, 0xEE);
        REQUIRE(nydus::backend::decompress(algo, *packed, out).ok());
        CHECK(out == input);
      }
    }
  }
  // Text shrinks a lot; the frame is what upstream writes.
  const auto text = text_bytes(1 << 20, 3);
  auto z = nydus::backend::compress(Compressor::kZstd, text);
  REQUIRE(z.ok());
  CHECK(z->size() < text.size() / 4);
  CHECK(ZSTD_getFrameContentSize(z->data(), z->size()) == text.size());
  auto l = nydus::backend::compress(Compressor::kLz4Block, text);
  REQUIRE(l.ok());
  CHECK(l->size() < text.size() / 2);
}

TEST_CASE("decompress refuses wrong sizes with kCorrupt", "[compress]") {
  const auto input = text_bytes(10000, 5);
  for (Compressor algo : {Compressor::kNone, Compressor::kLz4Block, Compressor::kZstd}) {
    INFO(nydus::bootstrap::compressor_name(algo));
    auto packed = nydus::backend::compress(algo, input);
    REQUIRE(packed.ok());
    for (size_t n : {input.size() - 1, input.size() + 1, size_t{0}}) {
      std::vector<uint8_t> out(n);
      auto s = nydus::backend::decompress(algo, *packed, out);
      CHECK(s.code() == Code::kCorrupt);
      CHECK_THAT(s.message(), Catch::Contains(nydus::bootstrap::compressor_name(algo)));
      CHECK_THAT(s.message(), Catch::Contains(std::to_string(n)));
    }
    // A compressed size that is off (metadata disagrees with the stream).
    if (algo != Compressor::kNone) {
      std::vector<uint8_t> out(input.size());
      std::span<const uint8_t> all(*packed);
      CHECK(nydus::backend::decompress(algo, all.first(all.size() - 1), out).code() == Code::kCorrupt);
      std::vector<uint8_t> longer(*packed);
      longer.push_back(0);
      CHECK(nydus::backend::decompress(algo, longer, out).code() == Code::kCorrupt);
    }
  }
}

TEST_CASE("decompress refuses corrupt streams with kCorrupt", "[compress]") {
  const auto input = text_bytes(20000, 6);
  std::vector<uint8_t> out(input.size());
  const auto garbage = random_bytes(3000, 11);
  CHECK(nydus::backend::decompress(Compressor::kLz4Block, garbage, out).code() == Code::kCorrupt);
  CHECK(nydus::backend::decompress(Compressor::kZstd, garbage, out).code() == Code::kCorrupt);
  CHECK(nydus::backend::decompress(Compressor::kZstd, {}, out).code() == Code::kCorrupt);
  CHECK(nydus::backend::decompress(Compressor::kLz4Block, {}, out).code() == Code::kCorrupt);

  auto z = nydus::backend::compress(Compressor::kZstd, input);
  REQUIRE(z.ok());
  auto bad_magic = *z;
  bad_magic[0] ^= 0xFF;
  CHECK(nydus::backend::decompress(Compressor::kZstd, bad_magic, out).code() == Code::kCorrupt);
  // Two frames back to back: ZSTD_decompress would accept them, nydus
  // framing (one frame per chunk) does not.
  auto half = nydus::backend::compress(Compressor::kZstd, std::span<const uint8_t>(input).first(10000));
  REQUIRE(half.ok());
  auto two = *half;
  two.insert(two.end(), half->begin(), half->end());
  std::vector<uint8_t> whole(20000);
  auto s = nydus::backend::decompress(Compressor::kZstd, two, whole);
  CHECK(s.code() == Code::kCorrupt);

  // Any byte flip must never crash; most are detected.
  auto l = nydus::backend::compress(Compressor::kLz4Block, input);
  REQUIRE(l.ok());
  for (size_t i = 0; i < l->size(); i += 7) {
    auto flipped = *l;
    flipped[i] ^= 0x5A;
    (void)nydus::backend::decompress(Compressor::kLz4Block, flipped, out);
  }
  for (size_t i = 0; i < z->size(); i += 7) {
    auto flipped = *z;
    flipped[i] ^= 0x5A;
    (void)nydus::backend::decompress(Compressor::kZstd, flipped, out);
  }
}

TEST_CASE("zstd frame without content size decodes to exactly dst", "[compress]") {
  const auto input = text_bytes(5000, 8);
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  REQUIRE(cctx != nullptr);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
  std::vector<uint8_t> frame(ZSTD_compressBound(input.size()));
  size_t n = ZSTD_compress2(cctx, frame.data(), frame.size(), input.data(), input.size());
  ZSTD_freeCCtx(cctx);
  REQUIRE(!ZSTD_isError(n));
  frame.resize(n);
  REQUIRE(ZSTD_getFrameContentSize(frame.data(), frame.size()) == ZSTD_CONTENTSIZE_UNKNOWN);
  std::vector<uint8_t> out(input.size());
  REQUIRE(nydus::backend::decompress(Compressor::kZstd, frame, out).ok());
  CHECK(out == input);
  std::vector<uint8_t> bigger(input.size() + 1);
  CHECK(nydus::backend::decompress(Compressor::kZstd, frame, bigger).code() == Code::kCorrupt);
  std::vector<uint8_t> smaller(input.size() - 1);
  CHECK(nydus::backend::decompress(Compressor::kZstd, frame, smaller).code() == Code::kCorrupt);
}

TEST_CASE("gzip is recognized and refused", "[compress]") {
  std::vector<uint8_t> out(10);
  const uint8_t src[] = {0x1f, 0x8b, 8, 0};
  auto s = nydus::backend::decompress(Compressor::kGzip, src, out);
  CHECK(s.code() == Code::kUnsupported);
  CHECK(s.message() == "gzip (zran) chunks are not supported yet");
  CHECK(nydus::backend::compress(Compressor::kGzip, src).status().code() == Code::kUnsupported);
  CHECK(nydus::backend::decompress(static_cast<Compressor>(77), src, out).code() == Code::kUnsupported);
}

TEST_CASE("v6 fixture: zstd chunks decode and match their digests", "[compress][fixture]") {
  const auto blob = read_file(nydus::test::fixture(
      "blobs/be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"));
  std::span<const uint8_t> b(blob);
  struct Case {
    size_t off, csize, dsize;
    const char* blake3;
    const char* sha256;
  };
  const Case cases[] = {
      {0, 4828, 16931, "f7e2735f1c6ae9cde91e537416b09d8bb71b306a421d19cc1012a51f93a7fe69",
       "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69"},
      {0x12dc, 2974, 13400, "812465bcc9e88393598311dc5fc93abaeccef0185bcd99f9701d17ebdf9adc3f",
       "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96"},
  };
  for (const auto& c : cases) {
    std::vector<uint8_t> out(c.dsize);
    REQUIRE(nydus::backend::decompress(Compressor::kZstd, b.subspan(c.off, c.csize), out).ok());
    CHECK(nydus::to_hex(nydus::digest(Digester::kBlake3, out)) == c.blake3);
    CHECK(nydus::to_hex(nydus::digest(Digester::kSha256, out)) == c.sha256);
    // Our compressor writes what upstream wrote (same libzstd, level 3).
    auto again = nydus::backend::compress(Compressor::kZstd, out);
    REQUIRE(again.ok());
    CHECK(std::vector<uint8_t>(b.begin() + c.off, b.begin() + c.off + c.csize) == *again);
  }
}

TEST_CASE("v5 fixture: the lz4_block blob is LZ4_compress_default of each chunk", "[compress][fixture]") {
  const auto plain = read_file(nydus::test::fixture(
      "repeatable/blobs/7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"));
  const auto lz4 = read_file(nydus::test::fixture(
      "repeatable/blobs/d7b86b1e74e316fe945741d1a9fa1b271459fe41481e304977659e0c6ecf56ac"));
  const auto chunks =
      nydus::test::v5_chunks_by_index(nydus::test::fixture("repeatable/sha256-nocompress-repeatable"));
  REQUIRE(chunks.size() == 23);
  std::vector<uint8_t> concatenated;
  uint64_t expect_offset = 0;
  for (const auto& [index, c] : chunks) {
    INFO("chunk " << index);
    // Uncompressed blob: chunks back to back, stored raw.
    CHECK(c.compressed_offset == expect_offset);
    CHECK(c.compressed_size == c.uncompressed_size);
    CHECK_FALSE(c.compressed);
    REQUIRE(c.compressed_offset + c.compressed_size <= plain.size());
    expect_offset += c.compressed_size;
    std::span<const uint8_t> data(plain.data() + c.compressed_offset, c.uncompressed_size);
    CHECK(nydus::digest(Digester::kSha256, data) == c.digest);

    auto packed = nydus::backend::compress(Compressor::kLz4Block, data);
    REQUIRE(packed.ok());
    const size_t slice_off = concatenated.size();
    // Keep-if-smaller, as the builder does.
    const bool keep = packed->size() < data.size();
    if (keep) concatenated.insert(concatenated.end(), packed->begin(), packed->end());
    else concatenated.insert(concatenated.end(), data.begin(), data.end());
    REQUIRE(concatenated.size() <= lz4.size());
    std::span<const uint8_t> slice(lz4.data() + slice_off, concatenated.size() - slice_off);
    CHECK(std::equal(slice.begin(), slice.end(), concatenated.begin() + slice_off));
    std::vector<uint8_t> out(c.uncompressed_size);
    REQUIRE(nydus::backend::decompress(keep ? Compressor::kLz4Block : Compressor::kNone, slice, out).ok());
    CHECK(std::equal(out.begin(), out.end(), data.begin()));
  }
  CHECK(expect_offset == plain.size());
  CHECK(concatenated == lz4);
}
