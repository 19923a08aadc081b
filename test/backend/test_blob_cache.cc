// ChunkMap (upstream's `.blob.data.chunk_map`), BlobCacheFile (`.blob.data`)
// and write_blob_meta_file (`.blob.meta`): byte-exact layouts, reopen,
// concurrency, and a SIGKILL crash loop.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/blob_cache.h"
#include "backend/chunk_map.h"
#include "backend/compress.h"
#include "bootstrap/blob_meta.h"
#include "bootstrap/image.h"
#include "common/bits.h"
#include "test/test_util.h"

namespace {

namespace fs = std::filesystem;
using nydus::Code;
using nydus::Status;
using nydus::backend::BlobCacheFile;
using nydus::backend::ChunkMap;
using nydus::test::read_file;
using nydus::test::TempDir;
using nydus::test::write_file;

const char kBlobId[] = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef";

uint32_t u32_at(const std::vector<uint8_t>& b, size_t off) {
  return uint32_t(b[off]) | uint32_t(b[off + 1]) << 8 | uint32_t(b[off + 2]) << 16 | uint32_t(b[off + 3]) << 24;
}

// The header upstream's PersistMap::write_header produces, spelled out byte
// by byte (little-endian 0x424D4150, 1, 0x434D4150, all_ready).
std::vector<uint8_t> upstream_header(bool all_ready, uint32_t version = 1) {
  std::vector<uint8_t> h(4096, 0);
  const uint8_t fixed[12] = {0x50, 0x41, 0x4D, 0x42, static_cast<uint8_t>(version), 0, 0, 0,
                             0x50, 0x41, 0x4D, 0x43};
  std::memcpy(h.data(), fixed, sizeof fixed);
  if (all_ready) {
    const uint8_t ar[4] = {0x50, 0x41, 0x4D, 0x4D};
    std::memcpy(h.data() + 12, ar, 4);
  }
  return h;
}

std::unique_ptr<ChunkMap> open_map(const std::string& path, uint32_t n) {
  auto m = ChunkMap::open(path, n);
  INFO(m.status().message());
  REQUIRE(m.ok());
  return std::move(m).value();
}

std::unique_ptr<BlobCacheFile> open_cache(const std::string& dir, uint64_t size, uint32_t n,
                                          const std::string& id = kBlobId) {
  auto f = BlobCacheFile::open(dir, id, size, n);
  INFO(f.status().message());
  REQUIRE(f.ok());
  return std::move(f).value();
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

size_t open_fd_count() {
  size_t n = 0;
  for (auto it = fs::directory_iterator("/proc/self/fd"); it != fs::directory_iterator(); ++it) ++n;
  return n;
}

}  // namespace

TEST_CASE("chunk_map: new file is byte-exact upstream layout", "[backend][chunk_map]") {
  TempDir dir;
  const std::string path = nydus::backend::chunk_map_path(dir.path(), kBlobId);
  CHECK(path == dir.path() + "/" + kBlobId + ".blob.data.chunk_map");
  const size_t fds = open_fd_count();
  {
    auto map = open_map(path, 20);
    CHECK(map->chunk_count() == 20);
    CHECK(map->ready_count() == 0);
    CHECK_FALSE(map->all_ready());
    CHECK(map->version() == 1);

    auto bytes = read_file(path);
    REQUIRE(bytes.size() == 4096 + 3);  // ceil(20/8) = 3
    std::vector<uint8_t> expected = upstream_header(false);
    expected.resize(4096 + 3, 0);
    CHECK(bytes == expected);
    // The same facts as plain numbers.
    CHECK(u32_at(bytes, 0) == 0x424D4150);
    CHECK(u32_at(bytes, 4) == 1);
    CHECK(u32_at(bytes, 8) == 0x434D4150);
    CHECK(u32_at(bytes, 12) == 0);

    REQUIRE(map->set_ready(0).ok());
    REQUIRE(map->set_ready(9).ok());
    REQUIRE(map->set_ready(19).ok());
    REQUIRE(map->set_ready(19).ok());  // idempotent
    CHECK(map->ready_count() == 3);
    bytes = read_file(path);
    CHECK(bytes[4096] == 0x80);  // chunk 0: bit 0x80 of byte 0
    CHECK(bytes[4097] == 0x40);  // chunk 9: 0x80 >> 1 of byte 1
    CHECK(bytes[4098] == 0x10);  // chunk 19: 0x80 >> 3 of byte 2
    CHECK(std::equal(bytes.begin(), bytes.begin() + 4096, expected.begin()));

    for (uint32_t i = 0; i < 20; ++i) CHECK(map->is_ready(i) == (i == 0 || i == 9 || i == 19));
    CHECK_FALSE(map->is_ready(20));
    CHECK_FALSE(map->is_ready(UINT32_MAX));
    auto bad = map->set_ready(20);
    CHECK(bad.code() == Code::kInvalidInput);
    CHECK(contains(bad.message(), "exceeds chunk count 20"));
  }
  CHECK(open_fd_count() == fds);
}

TEST_CASE("chunk_map: MSB-first bit order", "[backend][chunk_map]") {
  TempDir dir;
  for (uint32_t i = 0; i < 16; ++i) {
    const std::string path = dir / ("m" + std::to_string(i));
    auto map = open_map(path, 16);
    REQUIRE(map->set_ready(i).ok());
    auto bytes = read_file(path);
    REQUIRE(bytes.size() == 4096 + 2);
    const uint8_t want = static_cast<uint8_t>(0x80u >> (i & 7));
    CHECK(bytes[4096 + (i >> 3)] == want);
    CHECK(bytes[4096 + 1 - (i >> 3)] == 0);
  }
  // Upstream's own doc example: set_ready(3) on [0, 0] gives [0b00010000, 0].
  auto map = open_map(dir / "doc", 16);
  REQUIRE(map->set_ready(3).ok());
  auto bytes = read_file(dir / "doc");
  CHECK(bytes[4096] == 0b00010000);
  CHECK(bytes[4097] == 0);
}

TEST_CASE("chunk_map: reopen keeps bits; files made by upstream are read", "[backend][chunk_map]") {
  TempDir dir;
  const std::string path = dir / "map";
  {
    auto map = open_map(path, 100);
    for (uint32_t i : {0u, 1u, 7u, 8u, 63u, 99u}) REQUIRE(map->set_ready(i).ok());
  }
  {
    auto map = open_map(path, 100);
    CHECK(map->ready_count() == 6);
    for (uint32_t i = 0; i < 100; ++i) CHECK(map->is_ready(i) == (i == 0 || i == 1 || i == 7 || i == 8 || i == 63 || i == 99));
    CHECK_FALSE(map->all_ready());
  }

  SECTION("a hand-made upstream file") {
    auto bytes = upstream_header(false);
    bytes.resize(4096 + 2, 0);
    bytes[4096] = 0b10100000;  // chunks 0 and 2
    bytes[4097] = 0b00000001;  // chunk 15
    write_file(dir / "up", bytes);
    auto map = open_map(dir / "up", 16);
    CHECK(map->ready_count() == 3);
    for (uint32_t i = 0; i < 16; ++i) CHECK(map->is_ready(i) == (i == 0 || i == 2 || i == 15));
  }
  SECTION("padding bits past the chunk count are not counted") {
    auto bytes = upstream_header(false);
    bytes.resize(4096 + 2, 0);
    bytes[4096] = 0xFF;
    bytes[4097] = 0b10011111;  // chunk 8 set, padding (chunks 11..15) set
    write_file(dir / "pad", bytes);
    auto map = open_map(dir / "pad", 11);
    CHECK(map->ready_count() == 9);
    CHECK_FALSE(map->all_ready());
    CHECK_FALSE(map->is_ready(9));
    CHECK_FALSE(map->is_ready(10));
    CHECK(u32_at(read_file(dir / "pad"), 12) == 0);
  }
  SECTION("all_ready in the header means every chunk is ready") {
    auto bytes = upstream_header(true);
    bytes.resize(4096 + 1, 0);  // bits all clear: the header wins, as upstream
    write_file(dir / "ar", bytes);
    auto map = open_map(dir / "ar", 5);
    CHECK(map->all_ready());
    CHECK(map->ready_count() == 5);
    for (uint32_t i = 0; i < 5; ++i) CHECK(map->is_ready(i));
    CHECK_FALSE(map->is_ready(5));
    REQUIRE(map->set_ready(2).ok());  // sets the bit, counter stays sane
    CHECK(map->ready_count() == 5);
    CHECK(read_file(dir / "ar")[4096] == 0x20);
  }
  SECTION("version 0 header is accepted and left as it is") {
    std::vector<uint8_t> bytes(4096 + 1, 0);
    const uint8_t v0[8] = {0x50, 0x41, 0x4D, 0x42, 0, 0, 0, 0};
    std::memcpy(bytes.data(), v0, sizeof v0);
    bytes[4096] = 0b01000000;  // chunk 1
    write_file(dir / "v0", bytes);
    auto map = open_map(dir / "v0", 3);
    CHECK(map->version() == 0);
    CHECK(map->is_ready(1));
    CHECK_FALSE(map->is_ready(0));
    REQUIRE(map->set_ready(0).ok());
    REQUIRE(map->set_ready(2).ok());
    CHECK(map->all_ready());
    auto after = read_file(dir / "v0");
    CHECK(std::equal(after.begin(), after.begin() + 4096, bytes.begin()));  // header untouched
    CHECK(after[4096] == 0b11100000);
  }
}

TEST_CASE("chunk_map: all_ready is written when the last bit is set and at open", "[backend][chunk_map]") {
  TempDir dir;
  const std::string path = dir / "map";
  {
    auto map = open_map(path, 10);
    for (uint32_t i = 0; i < 9; ++i) REQUIRE(map->set_ready(i).ok());
    CHECK_FALSE(map->all_ready());
    CHECK(u32_at(read_file(path), 12) == 0);
    REQUIRE(map->set_ready(9).ok());
    CHECK(map->all_ready());
    CHECK(map->ready_count() == 10);
  }
  auto bytes = read_file(path);
  REQUIRE(bytes.size() == 4096 + 2);
  std::vector<uint8_t> expected = upstream_header(true);
  expected.push_back(0xFF);
  expected.push_back(0xC0);
  CHECK(bytes == expected);

  // Every bit set but all_ready clear (upstream today never writes it at
  // run time): opening writes it.
  auto clear = expected;
  clear[12] = clear[13] = clear[14] = clear[15] = 0;
  write_file(path, clear);
  {
    auto map = open_map(path, 10);
    CHECK(map->all_ready());
  }
  CHECK(read_file(path) == expected);
}

TEST_CASE("chunk_map: wrong size and bad headers are refused", "[backend][chunk_map]") {
  TempDir dir;
  const std::string path = dir / "map";
  { open_map(path, 16); }
  auto r = ChunkMap::open(path, 17);  // needs 4096 + 3
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == Code::kInvalidInput);
  CHECK(contains(r.status().message(), path));
  CHECK(contains(r.status().message(), "4098"));
  CHECK(contains(r.status().message(), "4099"));
  CHECK(read_file(path).size() == 4098);  // left alone

  auto good = read_file(path);
  SECTION("bad magic with data") {
    auto b = good;
    b[0] = 0x51;
    write_file(path, b);
    auto m = ChunkMap::open(path, 16);
    REQUIRE_FALSE(m.ok());
    CHECK(contains(m.status().message(), path));
    CHECK(contains(m.status().message(), "magic"));
  }
  SECTION("zero magic but a non-zero bitmap byte") {
    std::vector<uint8_t> b(4098, 0);
    b[4097] = 1;
    write_file(path, b);
    CHECK_FALSE(ChunkMap::open(path, 16).ok());
  }
  SECTION("bad magic2") {
    auto b = good;
    b[8] = 0;
    write_file(path, b);
    auto m = ChunkMap::open(path, 16);
    REQUIRE_FALSE(m.ok());
    CHECK(contains(m.status().message(), "magic2"));
  }
  SECTION("a directory") {
    fs::remove(path);
    fs::create_directory(path);
    CHECK_FALSE(ChunkMap::open(path, 16).ok());
  }
}

TEST_CASE("chunk_map: an all-zero file (crash during creation) is repaired", "[backend][chunk_map]") {
  TempDir dir;
  const std::string path = dir / "map";
  write_file(path, std::vector<uint8_t>(4096 + 4, 0));
  {
    auto map = open_map(path, 30);
    CHECK(map->ready_count() == 0);
    REQUIRE(map->set_ready(29).ok());
  }
  auto bytes = read_file(path);
  auto expected = upstream_header(false);
  expected.resize(4096 + 4, 0);
  expected[4096 + 3] = 0x04;  // chunk 29: 0x80 >> 5
  CHECK(bytes == expected);
}

TEST_CASE("chunk_map: chunk_count 0 touches no file", "[backend][chunk_map]") {
  TempDir dir;
  const std::string path = dir / "map";
  auto map = open_map(path, 0);
  CHECK_FALSE(fs::exists(path));
  CHECK(map->all_ready());
  CHECK(map->ready_count() == 0);
  CHECK(map->chunk_count() == 0);
  CHECK_FALSE(map->is_ready(0));
  CHECK(map->set_ready(0).code() == Code::kInvalidInput);
}

TEST_CASE("chunk_map: concurrent set_ready counts every bit exactly once", "[backend][chunk_map]") {
  TempDir dir;
  const std::string path = dir / "map";
  constexpr uint32_t kN = 20003;
  constexpr int kThreads = 8;
  auto map = open_map(path, kN);
  // A second instance on the same file stands in for another process.
  auto other = open_map(path, kN);

  auto run = [&](uint32_t parity) {
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<uint32_t> order;
        for (uint32_t i = parity; i < kN; i += 2) order.push_back(i);
        std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<unsigned>(t * 7 + parity)));
        ChunkMap& m = (t == kThreads - 1) ? *other : *map;
        for (uint32_t i : order)
          if (!m.set_ready(i).ok() || !m.is_ready(i)) ++failures;
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures == 0);
  };

  run(0);
  // Double counting would push this above the number of even indices; the
  // bits `other` set must be counted too (ready_count() reads the bitmap).
  CHECK(map->ready_count() == (kN + 1) / 2);
  CHECK(other->ready_count() == (kN + 1) / 2);
  CHECK_FALSE(map->all_ready());
  for (uint32_t i = 0; i < kN; ++i) {
    CHECK(map->is_ready(i) == (i % 2 == 0));
    CHECK(other->is_ready(i) == (i % 2 == 0));
  }
  CHECK(u32_at(read_file(path), 12) == 0);
  run(1);
  CHECK(map->ready_count() == kN);
  CHECK(map->all_ready());
  CHECK(other->all_ready());  // counted as well, or sees the header

  auto bytes = read_file(path);
  REQUIRE(bytes.size() == 4096 + (kN + 7) / 8);
  CHECK(u32_at(bytes, 12) == 0x4D4D4150);
  for (size_t i = 4096; i + 1 < bytes.size(); ++i) REQUIRE(bytes[i] == 0xFF);
  CHECK(bytes.back() == static_cast<uint8_t>(0xFF00u >> (kN % 8)));  // padding bits stay clear
}

TEST_CASE("blob cache: commit/read round trip and reopen", "[backend][blob_cache]") {
  TempDir dir;
  const std::string work = dir / "cache/sub";  // created on demand
  constexpr uint64_t kSize = 3 * 4096 + 100;
  const size_t fds = open_fd_count();
  std::vector<uint8_t> c0(4096, 0xA1), c1(5000, 0xB2), c2(100, 0xC3);
  {
    auto cache = open_cache(work, kSize, 3);
    CHECK(fs::is_directory(work));
    CHECK(cache->data_path() == work + "/" + kBlobId + ".blob.data");
    CHECK(fs::file_size(cache->data_path()) == kSize);
    CHECK(fs::file_size(work + "/" + kBlobId + ".blob.data.chunk_map") == 4097);
    CHECK(cache->ready_count() == 0);

    std::vector<uint8_t> buf(4096);
    auto miss = cache->read(0, 0, buf);
    CHECK(miss.code() == Code::kNotFound);

    REQUIRE(cache->commit(0, 0, c0).ok());
    REQUIRE(cache->commit(2, 3 * 4096, c2).ok());
    CHECK(cache->is_ready(0));
    CHECK_FALSE(cache->is_ready(1));
    CHECK(cache->is_ready(2));
    CHECK(cache->ready_count() == 2);
    CHECK_FALSE(cache->fully_cached());

    REQUIRE(cache->read(0, 0, buf).ok());
    CHECK(buf == c0);
    std::vector<uint8_t> small(100);
    REQUIRE(cache->read(2, 3 * 4096, small).ok());
    CHECK(small == c2);

    // A ready chunk is not rewritten.
    std::vector<uint8_t> other(4096, 0x11);
    REQUIRE(cache->commit(0, 0, other).ok());
    REQUIRE(cache->read(0, 0, buf).ok());
    CHECK(buf == c0);

    // Bounds.
    CHECK(cache->commit(1, kSize - 10, c1).code() == Code::kInvalidInput);
    CHECK(cache->commit(1, UINT64_MAX - 10, c1).code() == Code::kInvalidInput);
    CHECK(cache->commit(3, 0, c2).code() == Code::kInvalidInput);
    CHECK(cache->read(3, 0, small).code() == Code::kInvalidInput);
    CHECK(cache->read(0, kSize - 50, small).code() == Code::kInvalidInput);
    CHECK_FALSE(cache->is_ready(1));
  }
  {
    auto cache = open_cache(work, kSize, 3);
    CHECK(cache->ready_count() == 2);
    std::vector<uint8_t> buf(4096);
    REQUIRE(cache->read(0, 0, buf).ok());
    CHECK(buf == c0);
    REQUIRE(cache->commit(1, 4096, c1).ok());
    CHECK(cache->fully_cached());
    std::vector<uint8_t> b1(5000);
    REQUIRE(cache->read(1, 4096, b1).ok());
    CHECK(b1 == c1);
  }
  // The data file holds the chunks at their uncompressed offsets.
  auto data = read_file(work + "/" + kBlobId + ".blob.data");
  REQUIRE(data.size() == kSize);
  CHECK(std::equal(c0.begin(), c0.end(), data.begin()));
  CHECK(std::equal(c1.begin(), c1.end(), data.begin() + 4096));
  CHECK(std::equal(c2.begin(), c2.end(), data.begin() + 3 * 4096));
  CHECK(u32_at(read_file(work + "/" + kBlobId + ".blob.data.chunk_map"), 12) == 0x4D4D4150);
  CHECK(open_fd_count() == fds);
}

TEST_CASE("blob cache: data file size rules", "[backend][blob_cache]") {
  TempDir dir;
  const std::string data = dir / (std::string(kBlobId) + ".blob.data");
  const std::string map = dir / (std::string(kBlobId) + ".blob.data.chunk_map");
  constexpr uint64_t kSize = 64 << 20;

  SECTION("new file is sparse") {
    auto cache = open_cache(dir.path(), kSize, 16);
    struct stat st {};
    REQUIRE(::stat(data.c_str(), &st) == 0);
    CHECK(static_cast<uint64_t>(st.st_size) == kSize);
    CHECK(static_cast<uint64_t>(st.st_blocks) * 512 < kSize / 2);
  }
  SECTION("smaller file is extended, its bytes and bits kept") {
    {
      auto cache = open_cache(dir.path(), 8192, 2);
      REQUIRE(cache->commit(0, 0, std::vector<uint8_t>(4096, 0x42)).ok());
    }
    REQUIRE(::truncate(data.c_str(), 4096) == 0);
    auto cache = open_cache(dir.path(), 8192, 2);
    CHECK(fs::file_size(data) == 8192);
    CHECK(cache->is_ready(0));
    std::vector<uint8_t> buf(4096);
    REQUIRE(cache->read(0, 0, buf).ok());
    CHECK(buf == std::vector<uint8_t>(4096, 0x42));
  }
  SECTION("larger file is refused with upstream's message") {
    write_file(data, std::vector<uint8_t>(8193, 0));
    auto r = BlobCacheFile::open(dir.path(), kBlobId, 8192, 2);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kInvalidInput);
    CHECK(contains(r.status().message(), "blob data file size doesn't match: got 0x2001, expect 0x2000"));
    CHECK(contains(r.status().message(), data));
    CHECK(fs::file_size(data) == 8193);
  }
  SECTION("missing data file: a stale chunk_map is discarded") {
    {
      auto cache = open_cache(dir.path(), 8192, 2);
      REQUIRE(cache->commit(0, 0, std::vector<uint8_t>(4096, 0x42)).ok());
    }
    fs::remove(data);
    auto cache = open_cache(dir.path(), 8192, 2);
    CHECK_FALSE(cache->is_ready(0));
    CHECK(cache->ready_count() == 0);
    CHECK(read_file(map)[4096] == 0);
  }
  SECTION("chunk_map of another chunk count fails the open") {
    { open_cache(dir.path(), 8192, 2); }
    auto r = BlobCacheFile::open(dir.path(), kBlobId, 8192, 9);
    REQUIRE_FALSE(r.ok());
    CHECK(contains(r.status().message(), map));
  }
  SECTION("bad ids and work dirs") {
    CHECK(BlobCacheFile::open(dir.path(), "../x", 10, 1).status().code() == Code::kInvalidInput);
    CHECK(BlobCacheFile::open(dir.path(), "", 10, 1).status().code() == Code::kInvalidInput);
    CHECK(BlobCacheFile::open(dir.path(), "a/b", 10, 1).status().code() == Code::kInvalidInput);
    write_file(dir / "file", {1});
    auto r = BlobCacheFile::open(dir / "file", kBlobId, 10, 1);
    CHECK(r.status().code() == Code::kNotDir);
    CHECK(contains(r.status().message(), dir / "file"));
  }
}

TEST_CASE("blob cache: concurrent commits and reads", "[backend][blob_cache]") {
  TempDir dir;
  constexpr uint32_t kChunks = 256;
  constexpr uint64_t kChunk = 4096;
  auto cache = open_cache(dir.path(), kChunks * kChunk, kChunks);
  auto pattern = [](uint32_t i) { return std::vector<uint8_t>(kChunk, static_cast<uint8_t>(i * 37 + 1)); };
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<uint8_t> buf(kChunk);
      for (int k = 0; k < 2000; ++k) {
        const uint32_t i = rng() % kChunks;
        if (cache->is_ready(i)) {
          if (!cache->read(i, i * kChunk, buf).ok() || buf != pattern(i)) ++bad;
        } else if (!cache->commit(i, i * kChunk, pattern(i)).ok()) {
          ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(bad == 0);
  for (uint32_t i = 0; i < kChunks; ++i) REQUIRE(cache->commit(i, i * kChunk, pattern(i)).ok());
  CHECK(cache->fully_cached());
  CHECK(cache->ready_count() == kChunks);
}

TEST_CASE("blob cache: SIGKILL mid-commit never leaves a bit over torn data", "[backend][blob_cache][crash]") {
  TempDir dir;
  constexpr uint32_t kChunks = 40;
  std::vector<uint64_t> offsets, sizes;
  uint64_t end = 0;
  for (uint32_t i = 0; i < kChunks; ++i) {
    offsets.push_back(end);
    sizes.push_back((512 << 10) + i * 1031);
    end = nydus::round_up_4k(end + sizes.back());
  }
  const uint64_t blob_size = end;
  std::vector<std::vector<uint8_t>> chunks(kChunks);
  for (uint32_t i = 0; i < kChunks; ++i) {
    chunks[i].resize(sizes[i]);
    for (size_t j = 0; j < sizes[i]; ++j) chunks[i][j] = static_cast<uint8_t>((i * 131 + j * 7 + (j >> 9)) | 1);
  }
  const std::string data = dir / (std::string(kBlobId) + ".blob.data");
  const std::string map = dir / (std::string(kBlobId) + ".blob.data.chunk_map");

  auto start_over = [&] {
    // No chunk byte is 0, so holes (unwritten or torn bytes) cannot pass
    // for a chunk.
    fs::remove(map);
    fs::remove(data);
  };
  // One child run: open, tell the parent through `fd`, commit every chunk
  // in `order`.
  auto child = [&](const std::vector<uint32_t>& order, int fd) {
    auto f = BlobCacheFile::open(dir.path(), kBlobId, blob_size, kChunks);
    if (!f.ok()) ::_exit(2);
    if (::write(fd, "x", 1) != 1) ::_exit(4);
    for (uint32_t i : order)
      if (!(*f)->commit(i, offsets[i], chunks[i]).ok()) ::_exit(3);
    ::_exit(0);
  };
  struct Child {
    pid_t pid = -1;
    int fd = -1;  // read end: one byte once the child has opened the cache
  };
  auto spawn = [&](const std::vector<uint32_t>& order) {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(p[0]);
      child(order, p[1]);
    }
    ::close(p[1]);
    return Child{pid, p[0]};
  };
  auto reap = [&](Child& c) {
    int wstatus = 0;
    REQUIRE(::waitpid(c.pid, &wstatus, 0) == c.pid);
    ::close(c.fd);
    if (WIFEXITED(wstatus)) REQUIRE(WEXITSTATUS(wstatus) == 0);
    return wstatus;
  };
  auto wait_opened = [](const Child& c) {
    char byte;
    return ::read(c.fd, &byte, 1) == 1;
  };
  using Clock = std::chrono::steady_clock;
  auto us_since = [](Clock::time_point t) {
    return std::max<int64_t>(100, std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t).count());
  };
  std::vector<uint32_t> order(kChunks);
  for (uint32_t i = 0; i < kChunks; ++i) order[i] = i;

  // Time one uninterrupted run (open, then commits), so the kills spread
  // over each phase.
  start_over();
  auto t0 = Clock::now();
  Child c = spawn(order);
  REQUIRE(wait_opened(c));
  const int64_t open_us = us_since(t0);
  t0 = Clock::now();
  REQUIRE(WIFEXITED(reap(c)));
  const int64_t commit_us = us_since(t0);

  std::mt19937 rng(20240611);
  int partial_rounds = 0, checked_chunks = 0;
  // At least 60 rounds; more (up to 400) until 5 kills have landed between
  // the first and the last commit, however loaded the machine is.
  int round = 0;
  for (; round < 60 || (partial_rounds < 5 && round < 400); ++round) {
    // Every other round continues from the previous kill's state.
    if (round % 2 == 0) start_over();
    std::shuffle(order.begin(), order.end(), rng);
    c = spawn(order);
    if (round % 5 == 4) {
      // Somewhere in open (chunk_map creation, header repair).
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (open_us + open_us / 4)));
    } else {
      REQUIRE(wait_opened(c));
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (commit_us + commit_us / 4)));
    }
    ::kill(c.pid, SIGKILL);
    reap(c);

    auto cache = open_cache(dir.path(), blob_size, kChunks);
    const uint32_t ready = cache->ready_count();
    if (ready > 0 && ready < kChunks) ++partial_rounds;
    uint32_t seen = 0;
    for (uint32_t i = 0; i < kChunks; ++i) {
      if (!cache->is_ready(i)) continue;
      ++seen;
      std::vector<uint8_t> buf(sizes[i]);
      REQUIRE(cache->read(i, offsets[i], buf).ok());
      INFO("round " << round << " chunk " << i);
      REQUIRE(buf == chunks[i]);
      ++checked_chunks;
    }
    CHECK(seen == ready);
  }
  INFO(round << " rounds; open " << open_us << " us, commits " << commit_us << " us; partial rounds " << partial_rounds << ", chunks checked " << checked_chunks);
  CHECK(partial_rounds > 0);  // the kills did land mid-run
  CHECK(checked_chunks > 0);
}

TEST_CASE("blob.meta file: upstream layout, read back by parse_blob_meta_file", "[backend][blob_meta_file]") {
  using namespace nydus::bootstrap;
  TempDir dir;
  auto image = Image::open(nydus::test::fixture("bootstrap/rafs-v6-2.2.boot"));
  REQUIRE(image.ok());
  const BlobInfo& blob = (*image)->blobs().at(0);
  REQUIRE(blob.id == kBlobId);
  auto raw = read_file(nydus::test::fixture(std::string("blobs/") + kBlobId));

  // The ci table and its header as they sit in the blob.
  REQUIRE(blob.meta_ci_offset + blob.meta_ci_compressed_size + 4096 <= raw.size());
  std::span<const uint8_t> all(raw);
  auto ci_raw = all.subspan(blob.meta_ci_offset, blob.meta_ci_compressed_size);
  auto header = all.subspan(blob.meta_ci_offset + blob.meta_ci_compressed_size, 4096);
  std::vector<uint8_t> ci(blob.meta_ci_uncompressed_size);
  REQUIRE(nydus::backend::decompress(blob.meta_ci_compressor, ci_raw, ci).ok());

  const std::string work = dir / "work";
  auto s = nydus::backend::write_blob_meta_file(work, kBlobId, ci, header);
  INFO(s.message());
  REQUIRE(s.ok());
  const std::string path = nydus::backend::blob_meta_path(work, kBlobId);
  CHECK(path == work + "/" + kBlobId + ".blob.meta");
  auto file = read_file(path);
  const uint64_t aligned = nydus::round_up_4k(ci.size());
  REQUIRE(file.size() == 4096 + aligned);
  CHECK(std::equal(ci.begin(), ci.end(), file.begin()));
  CHECK(std::all_of(file.begin() + ci.size(), file.begin() + aligned, [](uint8_t b) { return b == 0; }));
  CHECK(std::equal(header.begin(), header.end(), file.begin() + aligned));
  CHECK(u32_at(file, aligned) == 0xb10bb10b);
  CHECK(u32_at(file, file.size() - 4) == 0xb10bb10b);

  auto parsed = parse_blob_meta_file(file, blob);
  INFO(parsed.status().message());
  REQUIRE(parsed.ok());
  auto infos = parse_chunk_infos(std::span<const uint8_t>(file).first(parsed->ci_uncompressed_size), *parsed, blob, {});
  REQUIRE(infos.ok());
  CHECK(infos->size() == blob.chunk_count);

  // Only the final name is left: no temporary files.
  size_t entries = 0;
  for (auto it = fs::directory_iterator(work); it != fs::directory_iterator(); ++it) ++entries;
  CHECK(entries == 1);

  SECTION("rewriting replaces the file whole") {
    write_file(path, std::vector<uint8_t>(100, 0x77));  // a torn leftover from someone else
    REQUIRE(nydus::backend::write_blob_meta_file(work, kBlobId, ci, header).ok());
    CHECK(read_file(path) == file);
  }
  SECTION("inconsistent input writes nothing") {
    fs::remove(path);
    std::vector<uint8_t> bad_header(header.begin(), header.end());
    bad_header[0] ^= 1;
    CHECK(nydus::backend::write_blob_meta_file(work, kBlobId, ci, bad_header).code() == Code::kInvalidInput);
    CHECK(nydus::backend::write_blob_meta_file(work, kBlobId, std::span<const uint8_t>(ci).first(ci.size() - 1),
                                               header)
              .code() == Code::kInvalidInput);
    CHECK(nydus::backend::write_blob_meta_file(work, kBlobId, ci, header.first(4095)).code() ==
          Code::kInvalidInput);
    CHECK(nydus::backend::write_blob_meta_file(work, "../evil", ci, header).code() == Code::kInvalidInput);
    CHECK_FALSE(fs::exists(path));
    CHECK(fs::is_empty(work));
  }
}

TEST_CASE("blob.meta file: reproduces an upstream-written cache file byte for byte", "[backend][blob_meta_file]") {
  const std::string id = "233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a";
  auto upstream = read_file(nydus::test::fixture("zran/" + id + ".blob.meta"));
  REQUIRE(upstream.size() > 4096);
  auto header = std::span<const uint8_t>(upstream).last(4096);
  auto parsed = nydus::bootstrap::parse_blob_meta_header(header, nydus::bootstrap::BlobInfo{});
  REQUIRE(parsed.ok());
  auto ci = std::span<const uint8_t>(upstream).first(parsed->ci_uncompressed_size);

  TempDir dir;
  REQUIRE(nydus::backend::write_blob_meta_file(dir.path(), id, ci, header).ok());
  CHECK(read_file(nydus::backend::blob_meta_path(dir.path(), id)) == upstream);
}

TEST_CASE("chunk_map: bits another instance sets are counted, and completing them marks all_ready", "[backend][chunk_map]") {
  // Two shared-mode mounts of one image: two ChunkMaps on one file, each
  // caching some of the chunks.
  TempDir dir;
  const std::string path = dir / "map";
  constexpr uint32_t kN = 100;
  auto a = open_map(path, kN);
  auto b = open_map(path, kN);
  for (uint32_t i = 0; i < kN; ++i) REQUIRE((i % 3 == 0 ? a : b)->set_ready(i).ok());
  // Neither instance set every bit itself.
  CHECK_FALSE(a->all_ready());
  CHECK_FALSE(b->all_ready());
  CHECK(a->ready_count() == kN);
  CHECK(a->all_ready());
  CHECK(u32_at(read_file(path), 12) == 0x4D4D4150);  // the header says so for the next open
  CHECK(b->all_ready());                            // b sees the header
  CHECK(b->ready_count() == kN);
  auto reopened = open_map(path, kN);
  CHECK(reopened->all_ready());
}
