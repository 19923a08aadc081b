// LocalFsBackend, BlobReader::read_exact and ChunkReader against the
// upstream-made fixture blobs.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "backend/blob_id.h"
#include "backend/chunk_reader.h"
#include "backend/compress.h"
#include "backend/localfs_backend.h"
#include "bootstrap/blob_meta.h"
#include "common/digest.h"
#include "common/file_bytes.h"
#include "common/log.h"
#include "test/test_util.h"

namespace nydus::test {
// Defined in test_compress_digest.cc.
std::map<uint32_t, bootstrap::ChunkRef> v5_chunks_by_index(const std::string& bootstrap_path);
}  // namespace nydus::test

namespace {

namespace fs = std::filesystem;
using nydus::test::TempDir;
using nydus::Code;
using nydus::Status;
using nydus::backend::ChunkReader;
using nydus::backend::ChunkReaderOptions;
using nydus::backend::LocalFsConfig;
using nydus::backend::make_localfs_backend;
using nydus::bootstrap::BlobInfo;
using nydus::bootstrap::ChunkRef;
using nydus::bootstrap::Compressor;
using nydus::bootstrap::Digest;
using nydus::bootstrap::Digester;

const char kV6Blob[] = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef";
const char kV5Blob[] = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00";
const char kLz4Blob[] = "d7b86b1e74e316fe945741d1a9fa1b271459fe41481e304977659e0c6ecf56ac";
const char kLibRsSha256[] = "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69";
const char kSyncIoSha256[] = "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96";

Digest digest_from_hex(const std::string& hex) {
  Digest d{};
  REQUIRE(hex.size() == 64);
  for (size_t i = 0; i < 32; ++i) d[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return d;
}

std::string sha256_hex(std::span<const uint8_t> data) {
  return nydus::to_hex(nydus::digest(Digester::kSha256, data));
}

std::vector<uint8_t> read_file(const std::string& path) {
  auto f = nydus::FileBytes::open(path);
  REQUIRE(f.ok());
  return {f->bytes().begin(), f->bytes().end()};
}

void write_file(const std::string& path, std::span<const uint8_t> data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

size_t open_fd_count() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}


// Sends everything written to stderr (the default log sink) to a file
// while alive, so a test can count log lines.
class StderrCapture {
 public:
  explicit StderrCapture(const std::string& path) : path_(path) {
    std::fflush(stderr);
    saved_ = dup(STDERR_FILENO);
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
  }
  ~StderrCapture() { restore(); }
  std::string finish() {
    restore();
    std::ifstream in(path_);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    dup2(saved_, STDERR_FILENO);
    close(saved_);
    saved_ = -1;
  }
  std::string path_;
  int saved_ = -1;
};

size_t count_lines_with(const std::string& text, const std::string& a, const std::string& b) {
  size_t n = 0, start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) ++n;
    start = end + 1;
  }
  return n;
}

// The v6 fixture's blob as its bootstrap describes it (rafs-format.md §8.3).
BlobInfo v6_blob_info(const std::string& id = kV6Blob) {
  BlobInfo b;
  b.index = 0;
  b.id = id;
  b.chunk_count = 2;
  b.chunk_size = 0x100000;
  b.features = 0x70000021;
  b.compressor = Compressor::kZstd;
  b.digester = Digester::kBlake3;
  b.compressed_size = 14554;
  b.uncompressed_size = 36864;
  b.meta_ci_compressor = Compressor::kNone;
  b.meta_ci_offset = 0x207a;
  b.meta_ci_compressed_size = 32;
  b.meta_ci_uncompressed_size = 32;
  b.toc_size = 1024;
  b.toc_digest = digest_from_hex("cfc89ed0739aef4eb1bf0904f0dfdb1c857134eca7319465baae95a99b84acde");
  return b;
}

std::vector<ChunkRef> v6_chunks() {
  ChunkRef a;
  a.blob_index = 0;
  a.chunk_index = 0;
  a.compressed_offset = 0;
  a.compressed_size = 4828;
  a.uncompressed_offset = 0;
  a.uncompressed_size = 16931;
  a.compressed = true;
  a.digest = digest_from_hex("f7e2735f1c6ae9cde91e537416b09d8bb71b306a421d19cc1012a51f93a7fe69");
  ChunkRef b;
  b.blob_index = 0;
  b.chunk_index = 1;
  b.compressed_offset = 0x12dc;
  b.compressed_size = 2974;
  b.uncompressed_offset = 0x5000;
  b.uncompressed_size = 13400;
  b.compressed = true;
  b.digest = digest_from_hex("812465bcc9e88393598311dc5fc93abaeccef0185bcd99f9701d17ebdf9adc3f");
  return {a, b};
}

std::unique_ptr<ChunkReader> v6_reader(const std::string& dir, bool validate,
                                       const std::string& work_dir = "") {
  ChunkReaderOptions opts;
  opts.validate_digest = validate;
  opts.work_dir = work_dir;
  return std::make_unique<ChunkReader>(std::vector<BlobInfo>{v6_blob_info()},
                                       make_localfs_backend(LocalFsConfig{dir, "", {}}), opts);
}

Status read(ChunkReader& r, const ChunkRef& c, std::vector<uint8_t>& out) {
  out.assign(c.uncompressed_size, 0);
  return r.read_chunk(c, out);
}

// Whether the blob.meta parsers (another module, in progress) are built.
bool blob_meta_parsers_ready() {
  const auto blob = read_file(nydus::test::fixture(std::string("blobs/") + kV6Blob));
  auto h = nydus::bootstrap::parse_blob_meta_header(
      std::span<const uint8_t>(blob).subspan(0x207a + 32, 4096), v6_blob_info());
  return h.status().code() != Code::kUnsupported;
}

// A backend whose readers return at most `max_chunk` bytes per try_read,
// to prove read_exact loops over short reads.
class ShortReadBackend final : public nydus::backend::BlobBackend {
 public:
  ShortReadBackend(std::unique_ptr<BlobBackend> inner, size_t max_chunk)
      : inner_(std::move(inner)), max_chunk_(max_chunk) {}
  nydus::Result<std::shared_ptr<nydus::backend::BlobReader>> reader(const std::string& id) override {
    auto r = inner_->reader(id);
    if (!r.ok()) return r.status();
    return std::shared_ptr<nydus::backend::BlobReader>(std::make_shared<Reader>(*r, max_chunk_, &reads));
  }
  std::string type() const override { return "short"; }
  std::atomic<uint64_t> reads{0};

 private:
  class Reader final : public nydus::backend::BlobReader {
   public:
    Reader(std::shared_ptr<BlobReader> inner, size_t max_chunk, std::atomic<uint64_t>* reads)
        : inner_(std::move(inner)), max_chunk_(max_chunk), reads_(reads) {}
    nydus::Result<size_t> try_read(uint64_t offset, std::span<uint8_t> dst) override {
      ++*reads_;
      return inner_->try_read(offset, dst.first(std::min(dst.size(), max_chunk_)));
    }
    nydus::Result<uint64_t> size() override { return inner_->size(); }

   private:
    std::shared_ptr<BlobReader> inner_;
    size_t max_chunk_;
    std::atomic<uint64_t>* reads_;
  };
  std::unique_ptr<BlobBackend> inner_;
  size_t max_chunk_;
};

}  // namespace

TEST_CASE("check_blob_id refuses anything that is not a plain file name", "[localfs]") {
  using nydus::backend::check_blob_id;
  CHECK(check_blob_id(kV6Blob).ok());
  CHECK(check_blob_id("not-hex_but.plain").ok());
  for (std::string bad : {std::string(""), std::string("."), std::string(".."), std::string("../x"),
                          std::string("a/b"), std::string("/etc/passwd"), std::string("a..b"),
                          std::string("x\0y", 3), std::string(256, 'a')}) {
    INFO(bad);
    auto s = check_blob_id(bad);
    CHECK(s.code() == Code::kInvalidInput);
  }
}

TEST_CASE("localfs backend reads blobs from dir, alt_dirs and blob_file", "[localfs]") {
  const size_t fds_before = open_fd_count();
  {
    TempDir empty{"nydus-be"};
    const std::string dir = nydus::test::fixture("blobs");
    const auto expected = read_file(dir + "/" + kV6Blob);

    auto be = make_localfs_backend(LocalFsConfig{dir, "", {}});
    CHECK(be->type() == "localfs");
    auto r = be->reader(kV6Blob);
    REQUIRE(r.ok());
    auto size = (*r)->size();
    REQUIRE(size.ok());
    CHECK(*size == expected.size());
    std::vector<uint8_t> buf(100);
    REQUIRE((*r)->read_exact(14554 - 100, buf).ok());
    CHECK(std::equal(buf.begin(), buf.end(), expected.end() - 100));
    // Short read at the end, 0 past the end; read_exact names the offset.
    auto n = (*r)->try_read(14554 - 10, buf);
    REQUIRE(n.ok());
    CHECK(*n == 10);
    n = (*r)->try_read(14554, buf);
    REQUIRE(n.ok());
    CHECK(*n == 0);
    auto s = (*r)->read_exact(14554 - 10, buf);
    CHECK(s.code() == Code::kIo);
    CHECK_THAT(s.message(), Catch::Contains("14554"));
    // The same reader is handed out again (opened once).
    auto r2 = be->reader(kV6Blob);
    REQUIRE(r2.ok());
    CHECK(r2->get() == r->get());

    // Missing blob.
    auto missing = be->reader(std::string(64, 'a'));
    CHECK(missing.status().code() == Code::kNotFound);
    CHECK(missing.status().message() == "blob " + std::string(64, 'a') + " not found in " + dir);

    // Path traversal never reaches the filesystem.
    for (std::string bad : {std::string("../blobs/") + kV6Blob, std::string("..")}) {
      auto t = be->reader(bad);
      CHECK(t.status().code() == Code::kInvalidInput);
    }

    // alt_dirs are searched after dir.
    auto alt = make_localfs_backend(LocalFsConfig{empty.path(), "", {empty.path(), dir}});
    auto ra = alt->reader(kV6Blob);
    REQUIRE(ra.ok());
    CHECK(*(*ra)->size() == expected.size());
    auto ma = alt->reader(std::string(64, 'b'));
    CHECK(ma.status().code() == Code::kNotFound);
    CHECK_THAT(ma.status().message(), Catch::Contains(dir));

    // blob_file serves any id.
    auto one = make_localfs_backend(LocalFsConfig{"", dir + "/" + kV6Blob, {}});
    auto rf = one->reader("whatever");
    REQUIRE(rf.ok());
    CHECK(*(*rf)->size() == expected.size());
    auto none = make_localfs_backend(LocalFsConfig{"", empty.path() + "/nope", {}});
    CHECK(none->reader("x").status().code() == Code::kNotFound);

    // A directory named like the blob is refused, not read.
    fs::create_directory(empty.path() + "/" + kV6Blob);
    auto be2 = make_localfs_backend(LocalFsConfig{empty.path(), "", {}});
    CHECK_FALSE(be2->reader(kV6Blob).ok());
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("ChunkReader reads and verifies the v6 fixture's zstd chunks", "[chunk_reader]") {
  const size_t fds_before = open_fd_count();
  {
    auto reader = v6_reader(nydus::test::fixture("blobs"), true);
    const auto chunks = v6_chunks();
    std::vector<uint8_t> out;
    REQUIRE(read(*reader, chunks[0], out).ok());
    CHECK(sha256_hex(out) == kLibRsSha256);
    REQUIRE(read(*reader, chunks[1], out).ok());
    CHECK(sha256_hex(out) == kSyncIoSha256);

    // Without validation too.
    auto plain = v6_reader(nydus::test::fixture("blobs"), false);
    REQUIRE(read(*plain, chunks[1], out).ok());
    CHECK(sha256_hex(out) == kSyncIoSha256);
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("ChunkReader loops over short reads", "[chunk_reader]") {
  auto inner = make_localfs_backend(LocalFsConfig{nydus::test::fixture("blobs"), "", {}});
  auto shorty = std::make_unique<ShortReadBackend>(std::move(inner), 333);
  auto* counter = &shorty->reads;
  ChunkReaderOptions opts;
  opts.validate_digest = true;
  ChunkReader reader({v6_blob_info()}, std::move(shorty), opts);
  std::vector<uint8_t> out;
  REQUIRE(read(reader, v6_chunks()[0], out).ok());
  CHECK(sha256_hex(out) == kLibRsSha256);
  CHECK(counter->load() >= 4828 / 333);
}

TEST_CASE("ChunkReader refuses a corrupted blob when validating", "[chunk_reader]") {
  TempDir tmp{"nydus-be"};
  auto blob = read_file(nydus::test::fixture(std::string("blobs/") + kV6Blob));
  const auto chunks = v6_chunks();
  std::vector<uint8_t> out;
  // Flip bytes at many places inside chunk 0 (one at a time): every read
  // either fails with kCorrupt or, if the flip hit nothing that matters,
  // returns the right bytes. Never wrong bytes as success.
  size_t detected = 0;
  for (size_t pos = 20; pos < 4828; pos += 401) {
    auto copy = blob;
    copy[pos] ^= 0x01;
    write_file(tmp.path() + "/" + kV6Blob, copy);
    auto reader = v6_reader(tmp.path(), true);
    auto s = read(*reader, chunks[0], out);
    if (s.ok()) {
      CHECK(sha256_hex(out) == kLibRsSha256);
    } else {
      ++detected;
      CHECK(s.code() == Code::kCorrupt);
      CHECK_THAT(s.message(), Catch::Contains(kV6Blob));
      CHECK_THAT(s.message(), Catch::Contains("chunk 0"));
    }
    // Chunk 1 is untouched and still reads.
    REQUIRE(read(*reader, chunks[1], out).ok());
    CHECK(sha256_hex(out) == kSyncIoSha256);
  }
  CHECK(detected > 0);

  // A flip that decompresses fine is caught by the digest: pretend the
  // bootstrap expects other bytes.
  auto reader = v6_reader(nydus::test::fixture("blobs"), true);
  ChunkRef wrong = chunks[0];
  wrong.digest[5] ^= 0xFF;
  auto s = read(*reader, wrong, out);
  CHECK(s.code() == Code::kCorrupt);
  CHECK_THAT(s.message(), Catch::Contains(kV6Blob));
  CHECK_THAT(s.message(), Catch::Contains("chunk 0"));
  CHECK_THAT(s.message(), Catch::Contains(nydus::to_hex(wrong.digest)));
  CHECK_THAT(s.message(), Catch::Contains(nydus::to_hex(chunks[0].digest)));
  CHECK_THAT(s.message(), Catch::Contains("blake3"));
  // Without validation the digest is not checked.
  auto unchecked = v6_reader(nydus::test::fixture("blobs"), false);
  CHECK(read(*unchecked, wrong, out).ok());
}

TEST_CASE("ChunkReader checks CRC-32C when the chunk has one", "[chunk_reader]") {
  auto reader = v6_reader(nydus::test::fixture("blobs"), true);
  std::vector<uint8_t> out;
  ChunkRef c = v6_chunks()[1];
  REQUIRE(read(*reader, c, out).ok());
  c.has_crc32 = true;
  c.crc32 = nydus::crc32c(out);
  CHECK(read(*reader, c, out).ok());
  c.crc32 ^= 1;
  auto s = read(*reader, c, out);
  CHECK(s.code() == Code::kCorrupt);
  CHECK_THAT(s.message(), Catch::Contains("CRC-32C"));
}

TEST_CASE("ChunkReader rejects inconsistent requests", "[chunk_reader]") {
  auto reader = v6_reader(nydus::test::fixture("blobs"), true);
  const auto chunks = v6_chunks();
  std::vector<uint8_t> small(100);
  CHECK(reader->read_chunk(chunks[0], small).code() == Code::kInvalidInput);
  ChunkRef c = chunks[0];
  c.blob_index = 3;
  std::vector<uint8_t> out(c.uncompressed_size);
  CHECK(reader->read_chunk(c, out).code() == Code::kInvalidInput);
  // Stored uncompressed but sizes disagree.
  c = chunks[0];
  c.compressed = false;
  CHECK(reader->read_chunk(c, out).code() == Code::kCorrupt);
  // Compressed size off by one: the zstd frame check catches it.
  c = chunks[0];
  c.compressed_size += 1;
  CHECK(reader->read_chunk(c, out).code() == Code::kCorrupt);
  c.compressed_size -= 2;
  CHECK(reader->read_chunk(c, out).code() == Code::kCorrupt);
  // Past the end of the blob.
  c = chunks[0];
  c.compressed_offset = 14554 - 100;
  CHECK(reader->read_chunk(c, out).code() == Code::kIo);
}

TEST_CASE("a missing blob is kNotFound on every read and logged once", "[chunk_reader]") {
  TempDir tmp{"nydus-be"};
  const std::string missing_id(64, 'c');
  std::vector<BlobInfo> blobs{v6_blob_info(), v6_blob_info(missing_id)};
  blobs[1].index = 1;
  ChunkReaderOptions opts;
  opts.validate_digest = true;
  ChunkReader reader(blobs, make_localfs_backend(LocalFsConfig{nydus::test::fixture("blobs"), "", {}}),
                     opts);
  const auto old_level = nydus::log::level();
  nydus::log::set_level(nydus::log::Level::kDebug);
  StderrCapture capture(tmp.path() + "/log");
  std::vector<uint8_t> out;
  for (int i = 0; i < 5; ++i) {
    for (ChunkRef c : v6_chunks()) {
      c.blob_index = 1;
      auto s = read(reader, c, out);
      CHECK(s.code() == Code::kNotFound);
      CHECK_THAT(s.message(), Catch::Contains(missing_id));
      // The rest of the image keeps working.
      REQUIRE(read(reader, v6_chunks()[0], out).ok());
    }
  }
  // An unlocated chunk of the missing blob goes the same way.
  ChunkRef u = v6_chunks()[0];
  u.blob_index = 1;
  u.located = false;
  CHECK(read(reader, u, out).code() == Code::kNotFound);
  const std::string log = capture.finish();
  nydus::log::set_level(old_level);
  CHECK(count_lines_with(log, " ERROR ", missing_id) == 1);
  CHECK(count_lines_with(log, " DEBUG ", missing_id) >= 9);
  CHECK(count_lines_with(log, " ERROR ", "") == 1);
}

TEST_CASE("a path-traversal blob id is refused", "[chunk_reader]") {
  TempDir tmp{"nydus-be"};
  // A real blob one directory up from `dir`: a naive join would find it.
  const std::string sub = tmp.path() + "/sub";
  fs::create_directory(sub);
  fs::copy_file(nydus::test::fixture(std::string("blobs/") + kV6Blob), tmp.path() + "/" + kV6Blob);
  BlobInfo evil = v6_blob_info(std::string("../") + kV6Blob);
  ChunkReaderOptions opts;
  opts.validate_digest = true;
  opts.work_dir = sub;
  ChunkReader reader({evil}, make_localfs_backend(LocalFsConfig{sub, "", {}}), opts);
  std::vector<uint8_t> out;
  for (ChunkRef c : v6_chunks()) {
    auto s = read(reader, c, out);
    CHECK(s.code() == Code::kInvalidInput);
    c.located = false;
    CHECK(read(reader, c, out).code() == Code::kInvalidInput);
  }
}

TEST_CASE("concurrent reads from 8 threads return correct bytes", "[chunk_reader]") {
  auto reader = v6_reader(nydus::test::fixture("blobs"), true);
  const auto chunks = v6_chunks();
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> out;
      for (int i = 0; i < 100; ++i) {
        const ChunkRef& c = chunks[(i + t) % 2];
        out.assign(c.uncompressed_size, 0);
        if (!reader->read_chunk(c, out).ok() ||
            sha256_hex(out) != ((i + t) % 2 == 0 ? kLibRsSha256 : kSyncIoSha256))
          ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures.load() == 0);
}

TEST_CASE("v5 fixtures: uncompressed blob with sha256 and blake3 digests", "[chunk_reader][fixture]") {
  for (auto [boot, digester] : {std::pair{"repeatable/sha256-nocompress-repeatable", Digester::kSha256},
                                std::pair{"repeatable/blake3-lz4_block-non_repeatable", Digester::kBlake3}}) {
    INFO(boot);
    const auto chunks = nydus::test::v5_chunks_by_index(nydus::test::fixture(boot));
    REQUIRE(chunks.size() == 23);
    BlobInfo blob;
    blob.id = kV5Blob;
    blob.compressor = Compressor::kNone;
    blob.digester = digester;
    ChunkReaderOptions opts;
    opts.validate_digest = true;
    ChunkReader reader({blob}, make_localfs_backend(LocalFsConfig{nydus::test::fixture("repeatable/blobs"), "", {}}),
                       opts);
    std::vector<uint8_t> out;
    for (const auto& [index, c] : chunks) {
      INFO("chunk " << index);
      auto s = read(reader, c, out);
      CHECK(s.ok());
      CHECK(nydus::digest(digester, out) == c.digest);
    }
  }
}

TEST_CASE("v5 fixture: lz4_block blob read through ChunkReader", "[chunk_reader][fixture]") {
  // The lz4 blob has no bootstrap; describe its chunks from the
  // uncompressed blob's records: same order, compressed sizes from
  // recompressing (verified byte for byte in test_compress_digest.cc).
  const auto plain = read_file(nydus::test::fixture(std::string("repeatable/blobs/") + kV5Blob));
  auto chunks = nydus::test::v5_chunks_by_index(nydus::test::fixture("repeatable/sha256-nocompress-repeatable"));
  REQUIRE(chunks.size() == 23);
  uint64_t offset = 0;
  std::vector<ChunkRef> refs;
  for (auto [index, c] : chunks) {
    std::span<const uint8_t> data(plain.data() + c.uncompressed_offset, c.uncompressed_size);
    auto packed = nydus::backend::compress(Compressor::kLz4Block, data);
    REQUIRE(packed.ok());
    c.compressed = packed->size() < data.size();
    c.compressed_size = c.compressed ? static_cast<uint32_t>(packed->size()) : c.uncompressed_size;
    c.compressed_offset = offset;
    offset += c.compressed_size;
    refs.push_back(c);
  }
  BlobInfo blob;
  blob.id = kLz4Blob;
  blob.compressor = Compressor::kLz4Block;
  blob.digester = Digester::kSha256;
  ChunkReaderOptions opts;
  opts.validate_digest = true;
  ChunkReader reader({blob}, make_localfs_backend(LocalFsConfig{nydus::test::fixture("repeatable/blobs"), "", {}}),
                     opts);
  std::vector<uint8_t> out;
  size_t compressed = 0;
  for (const auto& c : refs) {
    INFO("chunk " << c.chunk_index);
    REQUIRE(read(reader, c, out).ok());
    CHECK(std::equal(out.begin(), out.end(), plain.begin() + static_cast<long>(c.uncompressed_offset)));
    compressed += c.compressed;
  }
  CHECK(compressed > 0);
  CHECK(offset == 994935);
}

TEST_CASE("unlocated chunks resolve through blob.meta", "[chunk_reader][blob_meta]") {
  if (!blob_meta_parsers_ready()) {
    WARN("bootstrap/blob_meta.cc parsers are not built yet; skipping the blob.meta path");
    return;
  }
  const auto blob = read_file(nydus::test::fixture(std::string("blobs/") + kV6Blob));
  auto unlocated = [](ChunkRef c) {
    ChunkRef u;
    u.blob_index = c.blob_index;
    u.chunk_index = c.chunk_index;
    u.uncompressed_offset = c.uncompressed_offset;
    u.uncompressed_size = c.uncompressed_size;
    u.located = false;
    return u;
  };
  std::vector<uint8_t> out;
  TempDir work{"nydus-be"};
  for (bool validate : {false, true}) {
    INFO("validate " << validate);
    // From the blob itself (no work_dir, then an empty work_dir).
    for (const std::string& wd : {std::string(), work.path()}) {
      auto reader = v6_reader(nydus::test::fixture("blobs"), validate, wd);
      const auto chunks = v6_chunks();
      REQUIRE(read(*reader, unlocated(chunks[0]), out).ok());
      CHECK(sha256_hex(out) == kLibRsSha256);
      REQUIRE(read(*reader, unlocated(chunks[1]), out).ok());
      CHECK(sha256_hex(out) == kSyncIoSha256);
      // Disagreement with the bootstrap is corruption.
      ChunkRef bad = unlocated(chunks[1]);
      bad.uncompressed_offset = 0x6000;
      CHECK(read(*reader, bad, out).code() == Code::kCorrupt);
      bad = unlocated(chunks[1]);
      bad.chunk_index = 2;
      CHECK(read(*reader, bad, out).code() == Code::kCorrupt);
    }
  }

  // From a `<id>.blob.meta` cache file: payload padded to 4 KiB, then the
  // header. The blob copy next to it has its in-blob table wrecked, so a
  // success proves the cache file is what gets used.
  std::vector<uint8_t> meta(8192, 0);
  std::copy(blob.begin() + 0x207a, blob.begin() + 0x207a + 32, meta.begin());
  std::copy(blob.begin() + 0x209a, blob.begin() + 0x209a + 4096, meta.begin() + 4096);
  write_file(work.path() + "/" + kV6Blob + ".blob.meta", meta);
  TempDir blobs{"nydus-be"};
  auto wrecked = blob;
  for (size_t i = 0x207a; i < 0x207a + 32; ++i) wrecked[i] ^= 0xA5;
  write_file(blobs.path() + "/" + kV6Blob, wrecked);
  {
    auto reader = v6_reader(blobs.path(), true, work.path());
    REQUIRE(read(*reader, unlocated(v6_chunks()[1]), out).ok());
    CHECK(sha256_hex(out) == kSyncIoSha256);
    // Without the cache file the wrecked table cannot place the chunk.
    auto no_cache = v6_reader(blobs.path(), true);
    CHECK_FALSE(read(*no_cache, unlocated(v6_chunks()[1]), out).ok());
  }
  // A damaged cache file is ignored; the blob's own table is used.
  meta[4096] ^= 0xFF;  // header magic
  write_file(work.path() + "/" + kV6Blob + ".blob.meta", meta);
  {
    auto reader = v6_reader(nydus::test::fixture("blobs"), true, work.path());
    REQUIRE(read(*reader, unlocated(v6_chunks()[0]), out).ok());
    CHECK(sha256_hex(out) == kLibRsSha256);
  }
}

TEST_CASE("unlocated chunks are verified against the blob's digest array", "[chunk_reader][blob_meta]") {
  if (!blob_meta_parsers_ready()) {
    WARN("bootstrap/blob_meta.cc parsers are not built yet; skipping the blob.meta path");
    return;
  }
  auto unlocated = [](const ChunkRef& c) {
    ChunkRef u;
    u.blob_index = c.blob_index;
    u.chunk_index = c.chunk_index;
    u.uncompressed_offset = c.uncompressed_offset;
    u.uncompressed_size = c.uncompressed_size;
    u.located = false;
    return u;
  };
  const auto blob = read_file(nydus::test::fixture(std::string("blobs/") + kV6Blob));
  const size_t kDigestArray = 0x329a;          // blob.digest payload, 2 x 32 bytes
  const size_t kTocEntrySha = 0x365a + 24;     // sha256 field of the ToC's blob.digest entry
  const size_t kToc = blob.size() - 1024;
  std::vector<uint8_t> out;
  TempDir tmp{"nydus-be"};

  SECTION("intact blob: digests come from the ToC, no warning") {
    StderrCapture capture(tmp.path() + "/log");
    auto reader = v6_reader(nydus::test::fixture("blobs"), true);
    CHECK(read(*reader, unlocated(v6_chunks()[0]), out).ok());
    const std::string log = capture.finish();
    CHECK(log.find("no chunk digests") == std::string::npos);
    CHECK(log.find("digest array") == std::string::npos);
  }

  SECTION("a re-signed digest array that disagrees with the data fails the chunk") {
    // Change the digest of chunk 0 and re-sign everything above it, as an
    // attacker controlling the blob but not the bootstrap could not (the
    // bootstrap's toc_digest changes): here we play the bootstrap too, so
    // only the chunk digest comparison can catch it.
    auto copy = blob;
    copy[kDigestArray + 3] ^= 0x10;
    const Digest array_sha = nydus::digest(
        Digester::kSha256, std::span<const uint8_t>(copy).subspan(kDigestArray, 64));
    std::copy(array_sha.begin(), array_sha.end(), copy.begin() + kTocEntrySha);
    write_file(tmp.path() + "/" + kV6Blob, copy);
    BlobInfo info = v6_blob_info();
    info.toc_digest = nydus::digest(Digester::kSha256, std::span<const uint8_t>(copy).subspan(kToc));
    ChunkReaderOptions opts;
    opts.validate_digest = true;
    ChunkReader reader({info}, make_localfs_backend(LocalFsConfig{tmp.path(), "", {}}), opts);
    auto s = read(reader, unlocated(v6_chunks()[0]), out);
    CHECK(s.code() == Code::kCorrupt);
    CHECK_THAT(s.message(), Catch::Contains("digest mismatch"));
    CHECK_THAT(s.message(), Catch::Contains("chunk 0"));
    CHECK(read(reader, unlocated(v6_chunks()[1]), out).ok());
  }

  SECTION("a tampered digest array or ToC is refused when validating") {
    auto copy = blob;
    copy[kDigestArray + 40] ^= 0x01;
    write_file(tmp.path() + "/" + kV6Blob, copy);
    auto reader = v6_reader(tmp.path(), true);
    CHECK(read(*reader, unlocated(v6_chunks()[1]), out).code() == Code::kCorrupt);
    // Validation off: the digest array is not even read.
    auto unchecked = v6_reader(tmp.path(), false);
    CHECK(read(*unchecked, unlocated(v6_chunks()[1]), out).ok());
    // A changed ToC no longer matches the bootstrap's toc_digest.
    copy = blob;
    copy[kToc + 100] ^= 0x01;
    write_file(tmp.path() + "/" + kV6Blob, copy);
    auto reader2 = v6_reader(tmp.path(), true);
    auto s = read(*reader2, unlocated(v6_chunks()[1]), out);
    CHECK(s.code() == Code::kCorrupt);
    CHECK_THAT(s.message(), Catch::Contains("ToC"));
  }

  SECTION("a blob without a digest array is read with a single warning") {
    BlobInfo info = v6_blob_info();
    info.features &= ~0x20u;  // no INLINED_CHUNK_DIGEST
    ChunkReaderOptions opts;
    opts.validate_digest = true;
    StderrCapture capture(tmp.path() + "/log");
    ChunkReader reader({info}, make_localfs_backend(LocalFsConfig{nydus::test::fixture("blobs"), "", {}}),
                       opts);
    for (int i = 0; i < 3; ++i) {
      REQUIRE(read(reader, unlocated(v6_chunks()[i % 2]), out).ok());
    }
    const std::string log = capture.finish();
    CHECK(count_lines_with(log, " WARN ", "no chunk digests") == 1);
  }
}

TEST_CASE("a blob that appears later is read, and the recovery is logged", "[chunk_reader]") {
  TempDir tmp{"nydus-be"};
  ChunkReaderOptions opts;
  opts.validate_digest = true;
  ChunkReader reader({v6_blob_info()}, make_localfs_backend(LocalFsConfig{tmp.path(), "", {}}), opts);
  std::vector<uint8_t> out;
  StderrCapture capture(tmp.path() + "/log");
  CHECK(read(reader, v6_chunks()[0], out).code() == Code::kNotFound);
  CHECK(read(reader, v6_chunks()[0], out).code() == Code::kNotFound);
  fs::copy_file(nydus::test::fixture(std::string("blobs/") + kV6Blob), tmp.path() + "/" + kV6Blob);
  REQUIRE(read(reader, v6_chunks()[0], out).ok());
  CHECK(sha256_hex(out) == kLibRsSha256);
  const std::string log = capture.finish();
  CHECK(count_lines_with(log, " ERROR ", kV6Blob) == 1);
  CHECK(count_lines_with(log, " INFO ", "available again") == 1);
}
