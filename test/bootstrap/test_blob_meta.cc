// Blob tail parsers on the real v6 data blob be7d77… (rafs-format.md §8.3)
// and the zran blob.meta cache file (§8.5), plus hand-made entries and a
// mutation sweep.
#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "bootstrap/blob_meta.h"
#include "bootstrap/image.h"
#include "common/digest.h"
#include "test/test_util.h"

using namespace nydus;
using namespace nydus::bootstrap;

namespace {

const char* const kBlobId = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef";

std::span<const uint8_t> sub(const std::vector<uint8_t>& b, uint64_t off, uint64_t len) {
  REQUIRE(off <= b.size());
  REQUIRE(len <= b.size() - off);
  return std::span<const uint8_t>(b).subspan(off, len);
}

// Sections of a "data then header" blob, walking the tar headers backwards.
struct Section {
  std::string name;
  uint64_t offset = 0;
  uint64_t size = 0;
};

std::vector<Section> walk_tail(const std::vector<uint8_t>& blob) {
  std::vector<Section> out;
  uint64_t end = blob.size();
  while (end >= kTarHeaderSize) {
    auto hdr = parse_tar_header(sub(blob, end - kTarHeaderSize, kTarHeaderSize));
    if (!hdr.ok()) break;
    uint64_t data_end = end - kTarHeaderSize;
    REQUIRE(hdr->size <= data_end);
    out.push_back({hdr->name, data_end - hdr->size, hdr->size});
    end = data_end - hdr->size;
  }
  return out;
}

}  // namespace

TEST_CASE("blob tail: tar headers, ToC, blob.meta of the v6 fixture blob", "[bootstrap][blob_meta]") {
  auto blob = test::read_file(test::fixture(std::string("blobs/") + kBlobId));
  REQUIRE(blob.size() == 14554);
  auto image = Image::open(test::fixture("bootstrap/rafs-v6-2.2.boot"));
  REQUIRE(image.ok());
  const BlobInfo& info = (*image)->blobs().at(0);

  // Backwards walk reaches offset 0 through all four sections (§8.3).
  auto sections = walk_tail(blob);
  REQUIRE(sections.size() == 4);
  CHECK(sections[0].name == "rafs.blob.toc");
  CHECK(sections[0].offset == 0x34da);
  CHECK(sections[0].size == 512);
  CHECK(sections[1].name == "blob.digest");
  CHECK(sections[1].offset == 0x329a);
  CHECK(sections[1].size == 64);
  CHECK(sections[2].name == "blob.meta");
  CHECK(sections[2].offset == 0x207a);
  CHECK(sections[2].size == 4128);
  CHECK(sections[3].name == "image.blob");
  CHECK(sections[3].offset == 0);
  CHECK(sections[3].size == 7802);
  CHECK(info.meta_ci_offset == sections[2].offset);

  // ToC: digest over entries + tar header matches the bootstrap's blob entry.
  auto toc_bytes = sub(blob, sections[0].offset, sections[0].size);
  CHECK(digest(Digester::kSha256, sub(blob, blob.size() - info.toc_size, info.toc_size)) == info.toc_digest);
  auto toc = parse_toc(toc_bytes);
  REQUIRE(toc.ok());
  REQUIRE(toc->size() == 4);
  std::map<std::string, TocEntry> by_name;
  for (const auto& e : *toc) by_name[e.name] = e;
  REQUIRE(by_name.count("image.blob"));
  REQUIRE(by_name.count("blob.meta"));
  REQUIRE(by_name.count("blob.meta.header"));
  REQUIRE(by_name.count("blob.digest"));
  CHECK(by_name["blob.meta"].flags == 0x1);
  CHECK(by_name["blob.meta"].compressed_offset == 0x207a);
  CHECK(by_name["blob.meta"].compressed_size == 32);
  CHECK(by_name["blob.meta"].uncompressed_size == 32);
  CHECK(by_name["blob.meta.header"].compressed_offset == 0x209a);
  CHECK(by_name["blob.meta.header"].compressed_size == 4096);
  CHECK(by_name["blob.digest"].compressed_offset == 0x329a);
  CHECK(by_name["blob.digest"].uncompressed_size == 64);
  // sha256 of the last three payloads (image.blob's offset is the v2.2 quirk).
  for (const char* name : {"blob.meta", "blob.meta.header", "blob.digest"}) {
    const TocEntry& e = by_name[name];
    CHECK(digest(Digester::kSha256, sub(blob, e.compressed_offset, e.compressed_size)) == e.sha256);
  }

  // blob.meta header right after the ci payload.
  auto header = parse_blob_meta_header(
      sub(blob, info.meta_ci_offset + info.meta_ci_compressed_size, kBlobMetaHeaderSize), info);
  INFO(header.status().message());
  REQUIRE(header.ok());
  CHECK(header->features == 0x70000021);
  CHECK(header->ci_entries == 2);
  CHECK(header->ci_compressor == Compressor::kNone);
  CHECK(header->ci_offset == 0x207a);
  CHECK(header->ci_compressed_size == 32);
  CHECK(header->ci_uncompressed_size == 32);

  // v1 entries + digest array equal the bootstrap's chunk table.
  auto chunks = parse_chunk_infos(sub(blob, header->ci_offset, header->ci_uncompressed_size), *header, info,
                                  sub(blob, sections[1].offset, sections[1].size));
  INFO(chunks.status().message());
  REQUIRE(chunks.ok());
  REQUIRE(chunks->size() == 2);
  std::vector<ChunkRef> from_image;
  for (const char* name : {"lib.rs", "sync_io.rs"}) {
    auto ino = (*image)->lookup((*image)->root(), name);
    REQUIRE(ino.ok());
    auto refs = (*image)->chunks(*ino, 0, UINT64_MAX);
    REQUIRE(refs.ok());
    REQUIRE(refs->size() == 1);
    from_image.push_back(refs->front());
  }
  for (const ChunkRef& want : from_image) {
    const ChunkRef& got = (*chunks)[want.chunk_index];
    CHECK(got.blob_index == want.blob_index);
    CHECK(got.chunk_index == want.chunk_index);
    CHECK(got.compressed_offset == want.compressed_offset);
    CHECK(got.compressed_size == want.compressed_size);
    CHECK(got.uncompressed_offset == want.uncompressed_offset);
    CHECK(got.uncompressed_size == want.uncompressed_size);
    CHECK(got.compressed == want.compressed);
    CHECK(got.digest == want.digest);
    CHECK(got.located);
  }

  // Without digests the digest stays zero; a short digest array is refused.
  auto no_digest = parse_chunk_infos(sub(blob, header->ci_offset, 32), *header, info, {});
  REQUIRE(no_digest.ok());
  CHECK((*no_digest)[0].digest == Digest{});
  CHECK_FALSE(
      parse_chunk_infos(sub(blob, header->ci_offset, 32), *header, info, sub(blob, sections[1].offset, 40))
          .ok());
  CHECK_FALSE(parse_chunk_infos(sub(blob, header->ci_offset, 31), *header, info, {}).ok());

  // The header must agree with the blob entry where the bootstrap records it.
  BlobInfo other = info;
  other.chunk_count = 3;
  CHECK_FALSE(parse_blob_meta_header(sub(blob, 0x209a, 4096), other).ok());
  other = info;
  other.meta_ci_offset = 0x2000;
  CHECK_FALSE(parse_blob_meta_header(sub(blob, 0x209a, 4096), other).ok());
  CHECK(parse_blob_meta_header(sub(blob, 0x209a, 4096), BlobInfo{}).ok());
  CHECK_FALSE(parse_blob_meta_header(sub(blob, 0x209a, 4095), info).ok());
  CHECK_FALSE(parse_blob_meta_header(sub(blob, 0x2099, 4096), info).ok());
}

TEST_CASE("blob.meta cache file with a zran index (rafs-format.md 8.5)", "[bootstrap][blob_meta]") {
  auto file = test::read_file(
      test::fixture("zran/233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta"));
  auto header = parse_blob_meta_file(file, BlobInfo{});
  INFO(header.status().message());
  REQUIRE(header.ok());
  CHECK(header->features == 0xF);
  CHECK(header->ci_entries == 163);
  CHECK(header->ci_uncompressed_size == 0xa1290);
  CHECK(file.size() == ((header->ci_uncompressed_size + 4095) / 4096) * 4096 + 4096);

  auto infos = parse_chunk_infos(sub(file, 0, header->ci_uncompressed_size), *header, BlobInfo{}, {});
  CHECK(infos.status().code() == Code::kUnsupported);
  CHECK(infos.status().message().find("ZRAN") != std::string::npos);

  // Wrong size, truncated.
  auto shorter = file;
  shorter.resize(file.size() - 4096);
  CHECK_FALSE(parse_blob_meta_file(shorter, BlobInfo{}).ok());
  CHECK_FALSE(parse_blob_meta_file(sub(file, 0, 100), BlobInfo{}).ok());
}

namespace {

std::vector<uint8_t> make_header(uint32_t features, uint32_t entries, uint64_t ci_size) {
  std::vector<uint8_t> h(4096);
  uint32_t magic = kBlobMetaMagic;
  std::memcpy(&h[0], &magic, 4);
  std::memcpy(&h[4092], &magic, 4);
  std::memcpy(&h[4], &features, 4);
  std::memcpy(&h[12], &entries, 4);
  std::memcpy(&h[24], &ci_size, 8);
  std::memcpy(&h[32], &ci_size, 8);
  return h;
}

void put64(std::vector<uint8_t>& b, size_t off, uint64_t v) { std::memcpy(&b[off], &v, 8); }

}  // namespace

TEST_CASE("chunk info v1/v2 bit layouts", "[bootstrap][blob_meta]") {
  BlobInfo blob;
  blob.index = 3;
  blob.chunk_size = 1 << 24;

  SECTION("v1 extremes") {
    auto hdr = parse_blob_meta_header(make_header(0x1, 2, 32), blob);
    REQUIRE(hdr.ok());
    std::vector<uint8_t> p(32);
    // Entry 0: d_off 0xFFFFFFFF000, d_size 2^24 (all 24 bits of size-1 set),
    // c_off 2^40-1, c_size 2^24.
    uint64_t d_size_m1 = (1 << 24) - 1, c_size_m1 = (1 << 24) - 1;
    put64(p, 0, 0x00000FFFFFFFF000ull | (d_size_m1 & 0xFFFFF) << 44 | ((d_size_m1 >> 20) << 8));
    put64(p, 8, 0xFFFFFFFFFFull | (c_size_m1 & 0xFFFFF) << 44 | (c_size_m1 >> 20) << 40);
    // Entry 1: d_off 0x5000, d_size 13400, c_off 0x12dc, c_size 2974.
    put64(p, 16, 0x5000ull | uint64_t{13400 - 1} << 44);
    put64(p, 24, 0x12dcull | uint64_t{2974 - 1} << 44);
    auto infos = parse_chunk_infos(p, *hdr, blob, {});
    REQUIRE(infos.ok());
    const ChunkRef& a = (*infos)[0];
    CHECK(a.blob_index == 3);
    CHECK(a.chunk_index == 0);
    CHECK(a.uncompressed_offset == 0xFFFFFFFF000ull);
    CHECK(a.uncompressed_size == 1u << 24);
    CHECK(a.compressed_offset == 0xFFFFFFFFFFull);
    CHECK(a.compressed_size == 1u << 24);
    CHECK_FALSE(a.compressed);
    const ChunkRef& b = (*infos)[1];
    CHECK(b.chunk_index == 1);
    CHECK(b.uncompressed_offset == 0x5000);
    CHECK(b.uncompressed_size == 13400);
    CHECK(b.compressed_offset == 0x12dc);
    CHECK(b.compressed_size == 2974);
    CHECK(b.compressed);

    // Bounded by the blob's sizes when known.
    BlobInfo small = blob;
    small.compressed_size = 0x1000;
    CHECK_FALSE(parse_chunk_infos(p, *hdr, small, {}).ok());
    small = blob;
    small.chunk_size = 0x10000;
    CHECK_FALSE(parse_chunk_infos(p, *hdr, small, {}).ok());
  }

  SECTION("v2 flags and crc") {
    auto hdr = parse_blob_meta_header(make_header(0x5, 2, 48), blob);
    REQUIRE(hdr.ok());
    std::vector<uint8_t> p(48);
    // Entry 0: compressed + crc, d_off 0x3000, d_size 0x1000, c_off 7, c_size 99.
    put64(p, 0, (uint64_t{0x11} << 56) | (uint64_t{0xFFF} << 32) | 3);
    put64(p, 8, (uint64_t{99} << 40) | 7);
    put64(p, 16, 0xdeadbeef);
    // Entry 1: stored, sizes equal.
    put64(p, 24, (uint64_t{0x0} << 56) | (uint64_t{99} << 32) | 4);
    put64(p, 32, (uint64_t{100} << 40) | 106);
    auto infos = parse_chunk_infos(p, *hdr, blob, {});
    INFO(infos.status().message());
    REQUIRE(infos.ok());
    const ChunkRef& a = (*infos)[0];
    CHECK(a.uncompressed_offset == 0x3000);
    CHECK(a.uncompressed_size == 0x1000);
    CHECK(a.compressed_offset == 7);
    CHECK(a.compressed_size == 99);
    CHECK(a.compressed);
    CHECK(a.has_crc32);
    CHECK(a.crc32 == 0xdeadbeef);
    const ChunkRef& b = (*infos)[1];
    CHECK_FALSE(b.compressed);
    CHECK_FALSE(b.has_crc32);
    CHECK(b.uncompressed_size == 100);

    auto bad = p;
    put64(bad, 0, (uint64_t{0x04} << 56) | 3);  // BATCH entry
    CHECK(parse_chunk_infos(bad, *hdr, blob, {}).status().code() == Code::kUnsupported);
    bad = p;
    put64(bad, 0, (uint64_t{0x40} << 56) | 3);  // unknown flag
    CHECK(parse_chunk_infos(bad, *hdr, blob, {}).status().code() == Code::kInvalidInput);
    bad = p;
    put64(bad, 32, (uint64_t{50} << 40) | 106);  // stored but sizes differ
    CHECK_FALSE(parse_chunk_infos(bad, *hdr, blob, {}).ok());
  }

  SECTION("header consistency") {
    CHECK_FALSE(parse_blob_meta_header(make_header(0x1, 2, 33), blob).ok());     // v1 size
    CHECK_FALSE(parse_blob_meta_header(make_header(0x5, 2, 32), blob).ok());     // v2 size
    CHECK_FALSE(parse_blob_meta_header(make_header(0x9, 2, 32), blob).ok());     // zran without v2
    CHECK_FALSE(parse_blob_meta_header(make_header(0x1001, 2, 32), blob).ok());  // unknown feature
    CHECK_FALSE(parse_blob_meta_header(make_header(0x1, 0, 0), blob).ok());      // no entries
    auto h = make_header(0x1, 2, 32);
    h[4092] ^= 1;
    CHECK_FALSE(parse_blob_meta_header(h, blob).ok());
    h = make_header(0x1, 2, 32);
    uint64_t big = 64;
    std::memcpy(&h[24], &big, 8);  // compressed > uncompressed
    CHECK_FALSE(parse_blob_meta_header(h, blob).ok());
    // Batch blobs parse at header level but their entries are refused.
    auto batch = parse_blob_meta_header(make_header(0x85, 2, 48 + 80), blob);
    REQUIRE(batch.ok());
    CHECK(parse_chunk_infos(std::vector<uint8_t>(128), *batch, blob, {}).status().code() ==
          Code::kUnsupported);
  }
}

TEST_CASE("tar headers and ToC refuse malformed input", "[bootstrap][blob_meta]") {
  auto blob = test::read_file(test::fixture(std::string("blobs/") + kBlobId));
  auto hdr = sub(blob, blob.size() - 512, 512);
  std::vector<uint8_t> good(hdr.begin(), hdr.end());
  REQUIRE(parse_tar_header(good).ok());

  CHECK_FALSE(parse_tar_header(std::vector<uint8_t>(512)).ok());  // end-of-archive block
  CHECK_FALSE(parse_tar_header(std::vector<uint8_t>(511)).ok());
  auto bad = good;
  bad[0] ^= 1;  // checksum no longer matches
  CHECK_FALSE(parse_tar_header(bad).ok());
  bad = good;
  bad[257] = 'X';
  CHECK_FALSE(parse_tar_header(bad).ok());
  bad = good;
  bad[148] = 'z';
  CHECK_FALSE(parse_tar_header(bad).ok());

  auto toc = sub(blob, 0x34da, 512);
  std::vector<uint8_t> t(toc.begin(), toc.end());
  CHECK(parse_toc(t).ok());
  CHECK_FALSE(parse_toc(sub(blob, 0x34da, 500)).ok());
  auto garbage = t;
  for (size_t i = 80; i < 128; ++i) garbage[i] = 0xA5;  // reserved bytes are ignored
  garbage[4] = 0x77;
  CHECK(parse_toc(garbage).ok());
  auto flags = t;
  flags[0] = 0x3;  // two compressors
  CHECK_FALSE(parse_toc(flags).ok());
  auto noname = t;
  noname[8] = 0;
  CHECK_FALSE(parse_toc(noname).ok());
  CHECK(parse_toc({})->empty());
}

TEST_CASE("blob tail parsers survive mutations", "[bootstrap][blob_meta][robust]") {
  auto blob = test::read_file(test::fixture(std::string("blobs/") + kBlobId));
  auto tail = std::vector<uint8_t>(blob.begin() + 0x207a, blob.end());  // ci .. end
  uint64_t seed = 0x243f6a8885a308d3ull;
  auto next = [&] {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
  };
  size_t ok = 0;
  for (int v = 0; v < 3000; ++v) {
    auto m = tail;
    size_t pos = v < 1500 ? (v * 7) % m.size() : next() % m.size();
    m[pos] ^= static_cast<uint8_t>(1u << (next() % 8));
    std::span<const uint8_t> s(m);
    (void)parse_tar_header(s.subspan(s.size() - 512));
    (void)parse_tar_header(s.subspan(s.size() - 1536, 512));  // blob.digest's header
    (void)parse_toc(s.subspan(s.size() - 1024, 512));
    auto h = parse_blob_meta_header(s.subspan(32, 4096), BlobInfo{});
    if (h.ok()) {
      auto c = parse_chunk_infos(s.subspan(0, 32), *h, BlobInfo{}, s.subspan(0x329a - 0x207a, 64));
      if (c.ok()) ++ok;
    }
    (void)parse_blob_meta_file(s.subspan(0, 4096), BlobInfo{});
    (void)parse_blob_meta_file(s.subspan(32, 4096), BlobInfo{});
  }
  CHECK(ok > 0);
}
