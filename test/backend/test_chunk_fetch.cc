// ChunkReader's fetch path with a blob cache: single-flight, merging of
// neighbouring chunks (amplify_io), verification of fetched bytes with
// refetch, restart reuse of the cache, and prefetch. Images are built by our
// builder into a temp dir and served by the localfs backend, wrapped in a
// decorator that counts reads and injects delays or wrong bytes (fault
// injection only; the bytes themselves are real).
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/blob_cache.h"
#include "backend/chunk_reader.h"
#include "backend/localfs_backend.h"
#include "backend/prefetcher.h"
#include "bootstrap/image.h"
#include "builder/image_builder.h"
#include "common/digest.h"
#include "fs/prefetch_plan.h"
#include "test/test_util.h"

namespace nydus::test {
namespace {

namespace stdfs = std::filesystem;
using backend::BlobBackend;
using backend::BlobReader;
using backend::ChunkReader;
using backend::ChunkReaderOptions;
using bootstrap::ChunkRef;

// Counts try_read calls; can sleep in each, or flip a byte in the next
// `corrupt_reads` answers.
struct Faults {
  std::atomic<int> reads{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<int> delay_ms{0};
  std::atomic<int> corrupt_reads{0};
};

class FaultyReader final : public BlobReader {
 public:
  FaultyReader(std::shared_ptr<BlobReader> inner, Faults& faults) : inner_(std::move(inner)), faults_(faults) {}
  Result<size_t> try_read(uint64_t offset, std::span<uint8_t> dst) override {
    faults_.reads++;
    if (int ms = faults_.delay_ms.load()) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    auto n = inner_->try_read(offset, dst);
    if (n.ok() && *n > 0) {
      faults_.bytes += *n;
      if (faults_.corrupt_reads.load() > 0 && faults_.corrupt_reads.fetch_sub(1) > 0) dst[*n / 2] ^= 0x5a;
    }
    return n;
  }
  Result<uint64_t> size() override { return inner_->size(); }

 private:
  std::shared_ptr<BlobReader> inner_;
  Faults& faults_;
};

class FaultyBackend final : public BlobBackend {
 public:
  FaultyBackend(std::unique_ptr<BlobBackend> inner, Faults& faults) : inner_(std::move(inner)), faults_(faults) {}
  Result<std::shared_ptr<BlobReader>> reader(const std::string& id) override {
    NYDUS_ASSIGN(auto r, inner_->reader(id));
    return std::shared_ptr<BlobReader>(std::make_shared<FaultyReader>(std::move(r), faults_));
  }
  std::string type() const override { return "faulty"; }

 private:
  std::unique_ptr<BlobBackend> inner_;
  Faults& faults_;
};

// An image of `files` random files of `file_size` bytes, 64 KiB chunks,
// zstd, blake3.
struct BuiltImage {
  TempDir dir;
  std::unique_ptr<bootstrap::Image> image;
  std::vector<std::vector<uint8_t>> contents;  // by file index "f<i>"
  std::string blob_dir() const { return dir.path() + "/blobs"; }
};

std::unique_ptr<BuiltImage> build(int files, size_t file_size) {
  auto out = std::make_unique<BuiltImage>();
  const stdfs::path src = stdfs::path(out->dir.path()) / "src";
  stdfs::create_directories(src);
  stdfs::create_directories(out->blob_dir());
  std::mt19937 rng(42);
  for (int i = 0; i < files; ++i) {
    std::vector<uint8_t> data(file_size);
    // Half random, half text: compressible but not trivially.
    for (size_t k = 0; k < data.size(); ++k) data[k] = k % 2 ? static_cast<uint8_t>(rng()) : 'a' + k % 7;
    std::ofstream(src / ("f" + std::to_string(i)), std::ios::binary)
        .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    out->contents.push_back(std::move(data));
  }
  builder::CreateOptions opts;
  opts.source = src.string();
  opts.build.chunk_size = 0x10000;
  opts.build.bootstrap_path = out->dir.path() + "/image.boot";
  opts.build.blob_dir = out->blob_dir();
  opts.build.threads = 1;
  auto r = builder::create_image(opts);
  REQUIRE(r.ok());
  auto image = bootstrap::Image::open(opts.build.bootstrap_path);
  REQUIRE(image.ok());
  out->image = std::move(image).value();
  return out;
}

std::unique_ptr<ChunkReader> make_reader(const BuiltImage& img, Faults& faults, const std::string& work_dir,
                                         uint64_t merge_bytes = 0, uint32_t attempts = 1,
                                         backend::CacheMetrics* metrics = nullptr) {
  ChunkReaderOptions o;
  o.metrics = metrics;
  o.work_dir = work_dir;
  o.cache = true;
  o.verify_fetched = true;
  o.merge_bytes = merge_bytes;
  o.fetch_attempts = attempts;
  o.wait_deadline = std::chrono::milliseconds(10000);
  auto inner = backend::make_localfs_backend({img.blob_dir(), "", {}});
  return std::make_unique<ChunkReader>(img.image->blobs(), std::make_unique<FaultyBackend>(std::move(inner), faults),
                                       o);
}

std::vector<ChunkRef> file_chunks(const BuiltImage& img, int index) {
  auto ino = img.image->lookup(img.image->root(), "f" + std::to_string(index));
  REQUIRE(ino.ok());
  auto attr = img.image->inode(*ino);
  REQUIRE(attr.ok());
  auto chunks = img.image->chunks(*ino, 0, attr->size);
  REQUIRE(chunks.ok());
  return *chunks;
}

std::vector<uint8_t> expected_bytes(const BuiltImage& img, int file, const ChunkRef& c) {
  const auto& data = img.contents[file];
  return {data.begin() + static_cast<long>(c.file_offset),
          data.begin() + static_cast<long>(c.file_offset + c.uncompressed_size)};
}

TEST_CASE("32 concurrent readers of one cold chunk cause one backend read") {
  auto img = build(1, 0x10000);
  TempDir cache;
  Faults faults;
  faults.delay_ms = 200;  // all readers arrive while the first fetch is in flight
  auto reader = make_reader(*img, faults, cache.path());
  const ChunkRef chunk = file_chunks(*img, 0).at(0);
  const auto want = expected_bytes(*img, 0, chunk);
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&] {
      std::vector<uint8_t> buf(chunk.uncompressed_size);
      if (reader->read_chunk(chunk, buf).ok() && buf == want) good++;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(good == 32);
  CHECK(faults.reads == 1);
}

TEST_CASE("neighbouring chunks of a read plan are fetched in one request up to merge_bytes") {
  auto img = build(1, 16 * 0x10000);
  TempDir cache;
  Faults faults;
  auto chunks = file_chunks(*img, 0);
  REQUIRE(chunks.size() == 16);
  uint64_t first_eight = 0;
  for (int i = 0; i < 8; ++i) first_eight += chunks[i].compressed_size;
  auto reader = make_reader(*img, faults, cache.path(), first_eight);
  std::vector<uint8_t> buf(chunks[0].uncompressed_size);
  REQUIRE(reader->read_chunk(chunks[0], buf, std::span(chunks).subspan(1)).ok());
  CHECK(buf == expected_bytes(*img, 0, chunks[0]));
  CHECK(faults.reads == 1);
  CHECK(faults.bytes == first_eight);
  // The seven merged chunks are now cached: no further reads for them,
  // and they carry the right bytes.
  for (int i = 1; i < 8; ++i) {
    std::vector<uint8_t> b(chunks[i].uncompressed_size);
    REQUIRE(reader->read_chunk(chunks[i], b).ok());
    CHECK(b == expected_bytes(*img, 0, chunks[i]));
  }
  CHECK(faults.reads == 1);
  std::vector<uint8_t> b(chunks[8].uncompressed_size);
  REQUIRE(reader->read_chunk(chunks[8], b).ok());
  CHECK(faults.reads == 2);
}

TEST_CASE("wrong bytes from the backend are fetched again and never returned or cached") {
  auto img = build(1, 2 * 0x10000);
  Faults faults;
  const auto chunks = file_chunks(*img, 0);
  SECTION("one bad answer, then a good one") {
    TempDir cache;
    auto reader = make_reader(*img, faults, cache.path(), 0, 3);
    faults.corrupt_reads = 1;
    std::vector<uint8_t> buf(chunks[0].uncompressed_size);
    REQUIRE(reader->read_chunk(chunks[0], buf).ok());
    CHECK(buf == expected_bytes(*img, 0, chunks[0]));
    CHECK(faults.reads == 2);
  }
  SECTION("every answer bad: an error, and nothing cached") {
    TempDir cache;
    {
      auto reader = make_reader(*img, faults, cache.path(), 0, 3);
      faults.corrupt_reads = 1000;
      std::vector<uint8_t> buf(chunks[0].uncompressed_size);
      Status s = reader->read_chunk(chunks[0], buf);
      CHECK(s.code() == Code::kCorrupt);
      CHECK(faults.reads == 3);
    }
    faults.corrupt_reads = 0;
    faults.reads = 0;
    auto reader = make_reader(*img, faults, cache.path(), 0, 3);
    std::vector<uint8_t> buf(chunks[0].uncompressed_size);
    REQUIRE(reader->read_chunk(chunks[0], buf).ok());
    CHECK(buf == expected_bytes(*img, 0, chunks[0]));
    CHECK(faults.reads == 1);  // it was not served from a poisoned cache
  }
}

TEST_CASE("a new reader on the same work_dir serves cached chunks without backend reads") {
  auto img = build(3, 3 * 0x10000);
  TempDir cache;
  Faults faults;
  {
    auto reader = make_reader(*img, faults, cache.path());
    for (int f = 0; f < 3; ++f)
      for (const auto& c : file_chunks(*img, f)) {
        std::vector<uint8_t> buf(c.uncompressed_size);
        REQUIRE(reader->read_chunk(c, buf).ok());
      }
  }
  CHECK(faults.reads > 0);
  faults.reads = 0;
  auto reader = make_reader(*img, faults, cache.path());
  for (int f = 0; f < 3; ++f)
    for (const auto& c : file_chunks(*img, f)) {
      std::vector<uint8_t> buf(c.uncompressed_size);
      REQUIRE(reader->read_chunk(c, buf).ok());
      CHECK(buf == expected_bytes(*img, f, c));
    }
  CHECK(faults.reads == 0);
  const auto state = reader->cache_state();
  REQUIRE(state.size() == 1);
  CHECK(state[0].fully_cached);
}

TEST_CASE("prefetch of the whole image fills the cache, merged and within the bandwidth limit") {
  auto img = build(4, 8 * 0x10000);
  TempDir cache;
  Faults faults;
  backend::CacheMetrics metrics;
  auto reader = make_reader(*img, faults, cache.path(), 1 << 20, 1, &metrics);
  auto plan = fs::prefetch_plan_all(*img->image);
  REQUIRE(plan.ok());
  CHECK(plan->size() == 32);
  uint64_t raw_total = 0;
  for (const auto& c : img->image->blobs()) raw_total += c.compressed_size;
  // A rate that makes the prefetch take measurably long: the whole blob
  // at raw_total/0.5 bytes per second, after the first burst.
  backend::Prefetcher prefetcher(*reader, {2, 256 << 10, raw_total * 2}, &metrics);
  const auto start = std::chrono::steady_clock::now();
  prefetcher.start(std::move(plan).value());
  REQUIRE(prefetcher.wait(std::chrono::seconds(20)));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(metrics.prefetch_done_chunks == 32);
  CHECK(metrics.prefetch_chunks == 32);
  CHECK(faults.reads < 32);  // merged
  CHECK(reader->cache_state().at(0).fully_cached);
  CHECK(secs < 5);
  // Reads afterwards come from the cache.
  const int before = faults.reads;
  for (int f = 0; f < 4; ++f)
    for (const auto& c : file_chunks(*img, f)) {
      std::vector<uint8_t> buf(c.uncompressed_size);
      REQUIRE(reader->read_chunk(c, buf).ok());
      CHECK(buf == expected_bytes(*img, f, c));
    }
  CHECK(faults.reads == before);
}

TEST_CASE("the prefetch token bucket holds the rate") {
  // 1 MiB/s with a 64 KiB burst: 512 KiB of acquisitions take ~0.45 s.
  TokenBucket bucket(1 << 20, 64 << 10);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 8; ++i) REQUIRE(bucket.acquire(64 << 10));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(secs > 0.35);
  CHECK(secs < 1.5);
  bucket.cancel();
  CHECK_FALSE(bucket.acquire(1));
}

}  // namespace
}  // namespace nydus::test
