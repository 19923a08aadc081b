// PieceStore: readiness bookkeeping, the map file (persistence and damage),
// single-flight ensure() with takeover and streaming waits, FetchFn misuse,
// LRU eviction with pinning, and untrusted digests.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/text.h"
#include "p2p/piece_store.h"
#include "test/test_util.h"

namespace {

namespace fs = std::filesystem;
using nydus::Code;
using nydus::Status;
using nydus::p2p::ByteRange;
using nydus::p2p::PieceMap;
using nydus::p2p::PieceStore;
using nydus::p2p::PieceStoreOptions;
using nydus::p2p::StoredBlob;
using nydus::test::read_file;
using nydus::test::TempDir;
using nydus::test::write_file;
using Clock = StoredBlob::Clock;
using namespace std::chrono_literals;

constexpr uint32_t kGs = 512;
const std::string kHexA(64, 'a');
const std::string kHexB(64, 'b');
const std::string kHexC(64, 'c');
const std::string kHexD(64, 'd');
const std::string kHexE(64, 'e');

// Position-dependent bytes: a byte written or fetched at the wrong offset
// shows up in a comparison.
std::vector<uint8_t> pattern(uint64_t size, uint8_t seed = 1) {
  std::vector<uint8_t> v(size);
  for (uint64_t i = 0; i < size; ++i) v[i] = static_cast<uint8_t>((i * 131 + (i >> 9) * 7 + seed) & 0xff);
  return v;
}

std::unique_ptr<PieceStore> open_store(const std::string& dir, uint64_t capacity = 0, uint32_t gs = kGs) {
  PieceStoreOptions o;
  o.dir = dir;
  o.capacity_bytes = capacity;
  o.granule_size = gs;
  auto s = PieceStore::open(o);
  INFO(s.status().message());
  REQUIRE(s.ok());
  return std::move(s).value();
}

std::shared_ptr<StoredBlob> open_blob(PieceStore& store, const std::string& digest, uint64_t size) {
  auto b = store.open_blob(digest, size);
  INFO(b.status().message());
  REQUIRE(b.ok());
  return std::move(b).value();
}

std::span<const uint8_t> slice(const std::vector<uint8_t>& v, uint64_t off, uint64_t len) {
  return std::span<const uint8_t>(v).subspan(off, len);
}

std::vector<uint8_t> read_back(const StoredBlob& blob, uint64_t off, uint64_t len) {
  std::vector<uint8_t> out(len);
  const Status st = blob.read(off, out);
  INFO(st.message());
  REQUIRE(st.ok());
  return out;
}

// A FetchFn serving `src`, `piece` bytes per sink call, counting every
// granule it is asked for and recording every request.
struct Origin {
  explicit Origin(std::vector<uint8_t> bytes, size_t piece_size = 100)
      : src(std::move(bytes)), piece(piece_size), counts((src.size() + kGs - 1) / kGs) {}

  StoredBlob::FetchFn fn() {
    return [this](uint64_t offset, uint64_t length, const StoredBlob::Sink& sink) -> Status {
      {
        std::lock_guard lock(mu);
        requests.push_back({offset, length});
      }
      for (uint64_t g = offset / kGs; g < (offset + length + kGs - 1) / kGs; ++g) counts[g].fetch_add(1);
      if (delay.count() > 0) std::this_thread::sleep_for(delay);
      for (uint64_t pos = 0; pos < length;) {
        const uint64_t n = std::min<uint64_t>(piece, length - pos);
        NYDUS_TRY(sink(slice(src, offset + pos, n)));
        pos += n;
      }
      return Status::Ok();
    };
  }

  std::vector<uint8_t> src;
  size_t piece;
  std::chrono::milliseconds delay{0};
  std::vector<std::atomic<int>> counts;
  std::mutex mu;
  std::vector<ByteRange> requests;
};

// A one-shot gate a FetchFn waits on.
class Gate {
 public:
  void open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

Clock::time_point in(std::chrono::milliseconds d) { return Clock::now() + d; }

size_t open_fd_count() {
  size_t n = 0;
  for (auto it = fs::directory_iterator("/proc/self/fd"); it != fs::directory_iterator(); ++it) ++n;
  return n;
}

}  // namespace

TEST_CASE("piece store: write, read, ready_run and missing", "[p2p][piece_store]") {
  TempDir dir;
  const size_t fds = open_fd_count();
  {
    auto store = open_store(dir.path());
    CHECK(store->granule_size() == kGs);
    const uint64_t size = 10 * kGs + 37;  // 11 granules, the last one 37 bytes
    const auto src = pattern(size);
    auto blob = open_blob(*store, "sha256:" + kHexA, size);
    CHECK(blob->digest() == kHexA);
    CHECK(blob->size() == size);
    CHECK(blob->data_fd() >= 0);
    CHECK(blob->ready_bytes() == 0);
    CHECK(blob->ready_run(0, size) == 0);
    CHECK(blob->missing(0, size) == std::vector<ByteRange>{{0, size}});
    CHECK(fs::exists(dir / (kHexA + ".piece")));
    CHECK(fs::exists(dir / (kHexA + ".piece.map")));

    // A write covering no granule whole marks nothing.
    REQUIRE(blob->write(10, slice(src, 10, 600)).ok());
    CHECK(blob->ready_bytes() == 0);
    // [100, 1700) covers granules 1 and 2 whole.
    REQUIRE(blob->write(100, slice(src, 100, 1600)).ok());
    CHECK(blob->ready_bytes() == 2 * kGs);
    CHECK(store->used_bytes() == 2 * kGs);
    CHECK(blob->ready_run(0, size) == 0);
    CHECK(blob->ready_run(kGs, size) == 2 * kGs);
    CHECK(blob->ready_run(kGs + 5, size) == 2 * kGs - 5);
    CHECK(blob->ready_run(kGs + 5, 10) == 10);
    CHECK(blob->is_ready(kGs, 2 * kGs));
    CHECK_FALSE(blob->is_ready(kGs, 2 * kGs + 1));
    CHECK(blob->ready_run(size, 10) == 0);
    CHECK(blob->missing(0, size) == std::vector<ByteRange>{{0, kGs}, {3 * kGs, size - 3 * kGs}});
    CHECK(blob->missing(kGs + 1, 10).empty());
    CHECK(blob->missing(2 * kGs + 1, kGs) == std::vector<ByteRange>{{3 * kGs, kGs}});
    CHECK(blob->missing(size - 1, 100) == std::vector<ByteRange>{{10 * kGs, 37}});
    CHECK(read_back(*blob, kGs + 3, 2 * kGs - 3) == std::vector<uint8_t>(src.begin() + kGs + 3, src.begin() + 3 * kGs));

    std::vector<uint8_t> buf(kGs + 1);
    CHECK(blob->read(2 * kGs, buf).code() == Code::kInvalidInput);
    CHECK(blob->read(size - 1, std::span<uint8_t>(buf).first(2)).code() == Code::kInvalidInput);
    CHECK(blob->write(size - 1, slice(src, 0, 2)).code() == Code::kInvalidInput);

    // A write ending at the blob's end makes the short last granule ready;
    // one ending a byte before does not.
    REQUIRE(blob->write(9 * kGs, slice(src, 9 * kGs, kGs + 36)).ok());
    CHECK(blob->ready_run(9 * kGs, size) == kGs);
    REQUIRE(blob->write(10 * kGs, slice(src, 10 * kGs, 37)).ok());
    CHECK(blob->ready_run(9 * kGs, size) == kGs + 37);
    CHECK(blob->ready_bytes() == 3 * kGs + 37);
    CHECK(read_back(*blob, 9 * kGs, kGs + 37) == std::vector<uint8_t>(src.begin() + 9 * kGs, src.end()));

    // Ready bytes never change: a second write of other bytes is skipped.
    const auto other = pattern(size, 99);
    REQUIRE(blob->write(0, other).ok());
    CHECK(blob->ready_bytes() == size);
    CHECK(read_back(*blob, kGs, 2 * kGs) == std::vector<uint8_t>(src.begin() + kGs, src.begin() + 3 * kGs));
    CHECK(read_back(*blob, 0, kGs) == std::vector<uint8_t>(other.begin(), other.begin() + kGs));

    // invalidate forgets every granule the range touches.
    blob->invalidate(kGs + 1, 1);
    CHECK(blob->ready_run(0, size) == kGs);
    CHECK(blob->missing(0, size) == std::vector<ByteRange>{{kGs, kGs}});
    CHECK(store->used_bytes() == size - kGs);
    blob->invalidate(size, 10);  // nothing there
    CHECK(store->used_bytes() == size - kGs);

    // The same digest with and without its prefix is one blob.
    CHECK(store->find(kHexA) == blob);
    CHECK(open_blob(*store, kHexA, size) == blob);
    CHECK(store->open_blob(kHexA, size + 1).status().code() == Code::kInvalidInput);
    CHECK(store->find(kHexB) == nullptr);
  }
  CHECK(open_fd_count() == fds);
}

TEST_CASE("piece store: options are checked", "[p2p][piece_store]") {
  TempDir dir;
  for (uint32_t gs : {0u, 256u, 1000u, 2u << 20}) {
    PieceStoreOptions o;
    o.dir = dir.path();
    o.granule_size = gs;
    CHECK(PieceStore::open(o).status().code() == Code::kInvalidInput);
  }
  PieceStoreOptions o;
  CHECK(PieceStore::open(o).status().code() == Code::kInvalidInput);  // no dir
  o.dir = dir / "made/by/open";
  o.granule_size = 1 << 20;
  CHECK(PieceStore::open(o).ok());
  CHECK(fs::is_directory(dir / "made/by/open"));
  // A blob too large for the bitmap bound is refused, not allocated.
  auto store = open_store(dir.path());
  CHECK(store->open_blob(kHexA, nydus::p2p::kMaxGranules * kGs + 1).status().code() == Code::kInvalidInput);
}

TEST_CASE("piece store: invalid digests are refused", "[p2p][piece_store]") {
  TempDir dir;
  auto store = open_store(dir.path());
  const std::vector<std::string> bad = {
      "",
      "sha256:",
      std::string(63, 'a'),
      std::string(65, 'a'),
      "sha256:" + std::string(63, 'a'),
      std::string(64, 'A'),
      "sha256:" + std::string(63, 'a') + "g",
      "sha512:" + kHexA,
      "SHA256:" + kHexA,
      "sha256:sha256:" + kHexA,
      "../" + std::string(61, 'a'),
      std::string(60, 'a') + "/../",
      kHexA + "\n",
      std::string(32, 'a') + std::string(1, '\0') + std::string(31, 'a'),
      " " + kHexA,
  };
  for (const std::string& d : bad) {
    INFO(nydus::escape_bytes(d));
    auto r = store->open_blob(d, 100);
    CHECK(r.status().code() == Code::kInvalidInput);
    CHECK(store->find(d) == nullptr);
  }
  // Nothing was created for any of them.
  CHECK(fs::is_empty(dir.path()));
}

TEST_CASE("piece store: readiness and bytes survive a reopen", "[p2p][piece_store]") {
  TempDir dir;
  const uint64_t size = 20 * kGs + 1;
  const auto src = pattern(size);
  {
    auto store = open_store(dir.path());
    auto blob = open_blob(*store, kHexA, size);
    REQUIRE(blob->write(0, slice(src, 0, 3 * kGs)).ok());
    REQUIRE(blob->write(17 * kGs, slice(src, 17 * kGs, size - 17 * kGs)).ok());
    blob->invalidate(kGs, 1);
    open_blob(*store, kHexB, 5);  // no byte ready, still kept
  }
  auto store = open_store(dir.path());
  CHECK(store->used_bytes() == 2 * kGs + 3 * kGs + 1);
  auto blob = store->find("sha256:" + kHexA);
  REQUIRE(blob != nullptr);
  CHECK(blob->size() == size);
  CHECK(blob->missing(0, size) == std::vector<ByteRange>{{kGs, kGs}, {3 * kGs, 14 * kGs}});
  CHECK(read_back(*blob, 0, kGs) == std::vector<uint8_t>(src.begin(), src.begin() + kGs));
  CHECK(read_back(*blob, 17 * kGs, size - 17 * kGs) == std::vector<uint8_t>(src.begin() + 17 * kGs, src.end()));
  auto empty = store->find(kHexB);
  REQUIRE(empty != nullptr);
  CHECK(empty->size() == 5);
  CHECK(empty->ready_bytes() == 0);
  CHECK(store->open_blob(kHexA, size - 1).status().code() == Code::kInvalidInput);

  // The map on disk is exactly what the codec makes of the state.
  PieceMap expected;
  expected.granule_size = kGs;
  expected.blob_size = size;
  expected.bitmap = {0b0000'0101, 0, 0b0001'1110};
  CHECK(read_file(dir / (kHexA + ".piece.map")) == nydus::p2p::serialize_piece_map(expected));
}

TEST_CASE("piece map: codec round trip and refusals", "[p2p][piece_map]") {
  PieceMap m;
  m.granule_size = 4096;
  m.blob_size = 9 * 4096 + 1;  // 10 granules, 2 bitmap bytes
  m.bitmap = {0xff, 0x03};
  const auto bytes = nydus::p2p::serialize_piece_map(m);
  REQUIRE(bytes.size() == 32 + 2);
  CHECK(std::memcmp(bytes.data(), "NYP2PMAP", 8) == 0);
  auto parsed = nydus::p2p::parse_piece_map(bytes);
  REQUIRE(parsed.ok());
  CHECK(*parsed == m);

  auto refused = [](std::vector<uint8_t> b, const std::string& what) {
    auto r = nydus::p2p::parse_piece_map(b);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kInvalidInput);
    INFO(r.status().message());
    CHECK(r.status().message().find(what) != std::string::npos);
  };
  refused({}, "shorter");
  refused(std::vector<uint8_t>(bytes.begin(), bytes.begin() + 31), "shorter");
  refused(std::vector<uint8_t>(bytes.begin(), bytes.end() - 1), "expected 34");
  auto longer = bytes;
  longer.push_back(0);
  refused(longer, "expected 34");
  auto magic = bytes;
  magic[0] = 'X';
  refused(magic, "magic");
  auto crc = bytes;
  crc[17] ^= 1;  // blob size changed, checksum not
  refused(crc, "checksum");
  PieceMap beyond = m;
  beyond.bitmap[1] = 0x04;  // granule 10 of 10
  refused(nydus::p2p::serialize_piece_map(beyond), "beyond");
  PieceMap bad_gs = m;
  bad_gs.granule_size = 4095;
  refused(nydus::p2p::serialize_piece_map(bad_gs), "granule size");
  PieceMap huge = m;
  huge.blob_size = UINT64_MAX;
  huge.granule_size = 512;
  refused(nydus::p2p::serialize_piece_map(huge), "too many granules");
  PieceMap empty;
  empty.granule_size = 512;
  auto e = nydus::p2p::parse_piece_map(nydus::p2p::serialize_piece_map(empty));
  REQUIRE(e.ok());
  CHECK(*e == empty);
}

TEST_CASE("piece store: damaged maps are dropped, the store still opens", "[p2p][piece_store]") {
  TempDir dir;
  const uint64_t size = 10 * kGs + 100;  // 11 granules, 2 bitmap bytes
  const auto src = pattern(size);
  const std::vector<std::string> hexes = {kHexA, kHexB, kHexC, kHexD, kHexE, std::string(64, '1'),
                                          std::string(64, '2'), std::string(64, '3')};
  {
    auto store = open_store(dir.path());
    for (const auto& h : hexes) REQUIRE(open_blob(*store, h, size)->write(0, src).ok());
  }
  auto map_path = [&](const std::string& h) { return dir / (h + ".piece.map"); };
  auto data_path = [&](const std::string& h) { return dir / (h + ".piece"); };
  const auto good = read_file(map_path(kHexA));
  // B: truncated.
  write_file(map_path(kHexB), std::vector<uint8_t>(good.begin(), good.begin() + 20));
  // C: bad magic.
  auto magic = good;
  magic[3] = 'x';
  write_file(map_path(kHexC), magic);
  // D: wrong size (one byte more).
  auto longer = good;
  longer.push_back(0);
  write_file(map_path(kHexD), longer);
  // E: a bit set beyond the blob's 11 granules, with a valid checksum.
  PieceMap beyond;
  beyond.granule_size = kGs;
  beyond.blob_size = size;
  beyond.bitmap = {0xff, 0x0f};
  write_file(map_path(kHexE), nydus::p2p::serialize_piece_map(beyond));
  // 1: the data file is shorter than its ready granules.
  fs::resize_file(data_path(hexes[5]), size - 1);
  // 2: the map was made with another granule size.
  PieceMap other_gs;
  other_gs.granule_size = 2 * kGs;
  other_gs.blob_size = size;
  other_gs.bitmap = {0x3f};
  write_file(map_path(hexes[6]), nydus::p2p::serialize_piece_map(other_gs));
  // 3: the data file is gone.
  fs::remove(data_path(hexes[7]));
  // Leftovers of interrupted creations, and files the store does not own.
  write_file(dir / (std::string(64, '9') + ".piece"), {1, 2, 3});
  write_file(dir / (std::string(64, '8') + ".piece.map.tmp"), {1});
  write_file(dir / "README", {'h', 'i'});

  auto store = open_store(dir.path());
  CHECK(store->used_bytes() == size);
  auto a = store->find(kHexA);
  REQUIRE(a != nullptr);
  CHECK(read_back(*a, 0, size) == src);
  for (size_t i = 1; i < hexes.size(); ++i) {
    INFO(hexes[i]);
    CHECK(store->find(hexes[i]) == nullptr);
    CHECK_FALSE(fs::exists(map_path(hexes[i])));
    CHECK_FALSE(fs::exists(data_path(hexes[i])));
  }
  CHECK_FALSE(fs::exists(dir / (std::string(64, '9') + ".piece")));
  CHECK_FALSE(fs::exists(dir / (std::string(64, '8') + ".piece.map.tmp")));
  CHECK(fs::exists(dir / "README"));
  // A dropped blob starts over.
  auto b = open_blob(*store, kHexB, size);
  CHECK(b->ready_bytes() == 0);
}

TEST_CASE("piece store: ensure fetches each granule once across 16 threads", "[p2p][piece_store]") {
  TempDir dir;
  auto store = open_store(dir.path());
  const uint64_t size = 64 * kGs + 300;  // 65 granules, the last one short
  Origin origin(pattern(size), 100);     // 100-byte pieces: granules complete mid-piece
  origin.delay = 2ms;
  auto blob = open_blob(*store, kHexA, size);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      // Overlapping ranges, unaligned at both ends; together they cover all.
      const uint64_t offset = std::min<uint64_t>(size - 1, static_cast<uint64_t>(t) * 4 * kGs + 7 * t);
      const uint64_t length = std::min<uint64_t>(size - offset, 9 * kGs + 13);
      for (int round = 0; round < 3; ++round) {
        const Status st = blob->ensure(offset, length, origin.fn(), in(10s));
        if (!st.ok() || !blob->is_ready(offset, length)) failures.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(blob->ready_bytes() == size);
  for (size_t g = 0; g < origin.counts.size(); ++g) {
    INFO("granule " << g);
    CHECK(origin.counts[g] == 1);
  }
  for (const ByteRange& r : origin.requests) {
    CHECK(r.offset % kGs == 0);
    CHECK((r.end() % kGs == 0 || r.end() == size));
    CHECK(r.end() <= size);
  }
  CHECK(read_back(*blob, 0, size) == origin.src);
}

TEST_CASE("piece store: a failing fetch releases its granules and a waiter takes over", "[p2p][piece_store]") {
  TempDir dir;
  auto store = open_store(dir.path());
  const uint64_t size = 8 * kGs;
  Origin origin(pattern(size), kGs / 2);
  auto blob = open_blob(*store, kHexA, size);

  Gate started;
  Gate fail_now;
  std::atomic<int> failing_calls{0};
  // Delivers granule 0 and half of granule 1, then fails.
  StoredBlob::FetchFn failing = [&](uint64_t offset, uint64_t length, const StoredBlob::Sink& sink) -> Status {
    failing_calls.fetch_add(1);
    CHECK(offset == 0);
    CHECK(length == size);
    NYDUS_TRY(sink(slice(origin.src, 0, kGs + kGs / 2)));
    started.open();
    fail_now.wait();
    return Status::io("origin reset the connection");
  };
  Status first_status;
  std::thread first([&] { first_status = blob->ensure(0, size, failing, in(10s)); });
  started.wait();
  CHECK(blob->ready_run(0, size) == kGs);  // granule 1 is half there: not ready
  Status second_status;
  std::thread second([&] { second_status = blob->ensure(0, size, origin.fn(), in(10s)); });
  std::this_thread::sleep_for(50ms);  // the second caller is waiting now
  CHECK(origin.requests.empty());
  fail_now.open();
  first.join();
  second.join();
  CHECK(first_status.code() == Code::kIo);
  CHECK(first_status.message().find("origin reset the connection") != std::string::npos);
  INFO(second_status.message());
  CHECK(second_status.ok());
  CHECK(failing_calls == 1);
  // The second caller fetched exactly what the first left unfilled.
  REQUIRE(origin.requests.size() == 1);
  CHECK(origin.requests[0] == ByteRange{kGs, size - kGs});
  CHECK(read_back(*blob, 0, size) == origin.src);
}

TEST_CASE("piece store: short deliveries and fetch errors release the rest", "[p2p][piece_store]") {
  TempDir dir;
  auto store = open_store(dir.path());
  const uint64_t size = 4 * kGs;
  const auto src = pattern(size);
  auto blob = open_blob(*store, kHexA, size);
  // Returns Ok after 2.5 granules.
  StoredBlob::FetchFn short_fetch = [&](uint64_t offset, uint64_t length, const StoredBlob::Sink& sink) -> Status {
    return sink(slice(src, offset, 2 * kGs + kGs / 2));
  };
  const Status st = blob->ensure(0, size, short_fetch, in(1s));
  CHECK(st.code() == Code::kIo);
  CHECK(st.message().find("delivered only") != std::string::npos);
  CHECK(blob->missing(0, size) == std::vector<ByteRange>{{2 * kGs, 2 * kGs}});
  // Nobody is fetching granule 2 now.
  CHECK(blob->wait_ready(2 * kGs, 1, in(1s)).status().code() == Code::kIo);
  // An error before any byte: the error itself comes back.
  StoredBlob::FetchFn refused = [](uint64_t, uint64_t, const StoredBlob::Sink&) -> Status {
    return Status::not_found("blob unknown to the registry");
  };
  CHECK(blob->ensure(0, size, refused, in(1s)).code() == Code::kNotFound);
  Origin origin(src);
  REQUIRE(blob->ensure(0, size, origin.fn(), in(1s)).ok());
  REQUIRE(origin.requests.size() == 1);
  CHECK(origin.requests[0] == ByteRange{2 * kGs, 2 * kGs});
  CHECK(read_back(*blob, 0, size) == src);
  // Nothing to fetch: the FetchFn is not called.
  CHECK(blob->ensure(1, size - 1, refused, in(1s)).ok());
  CHECK(blob->ensure(size, 0, refused, in(1s)).ok());
  CHECK(blob->ensure(size, 1, refused, in(1s)).code() == Code::kInvalidInput);
  CHECK(blob->ensure(0, size + 1, refused, in(1s)).code() == Code::kInvalidInput);
  CHECK(blob->ensure(UINT64_MAX, 2, refused, in(1s)).code() == Code::kInvalidInput);
}

TEST_CASE("piece store: a fetch delivering more bytes than asked is an error", "[p2p][piece_store]") {
  TempDir dir;
  auto store = open_store(dir.path());
  const uint64_t size = 3 * kGs + 10;
  const auto src = pattern(size + 8192);
  auto blob = open_blob(*store, kHexA, size);

  SECTION("in one piece") {
    Status sink_status;
    StoredBlob::FetchFn fetch = [&](uint64_t offset, uint64_t length, const StoredBlob::Sink& sink) -> Status {
      sink_status = sink(slice(src, offset, length + 1));
      return Status::Ok();  // ignores the sink's error
    };
    CHECK(blob->ensure(0, size, fetch, in(1s)).code() == Code::kIo);
    CHECK(sink_status.code() == Code::kIo);
    CHECK(blob->ready_bytes() == 0);
  }
  SECTION("after the whole run") {
    StoredBlob::FetchFn fetch = [&](uint64_t offset, uint64_t length, const StoredBlob::Sink& sink) -> Status {
      NYDUS_TRY(sink(slice(src, offset, length)));
      return sink(slice(src, offset + length, 4096));
    };
    const Status st = blob->ensure(2 * kGs, size - 2 * kGs, fetch, in(1s));
    CHECK(st.code() == Code::kIo);
    CHECK(st.message().find("more bytes") != std::string::npos);
    CHECK(blob->missing(0, size) == std::vector<ByteRange>{{0, 2 * kGs}});
  }
  SECTION("and the sink keeps refusing") {
    int refusals = 0;
    StoredBlob::FetchFn fetch = [&](uint64_t offset, uint64_t length, const StoredBlob::Sink& sink) -> Status {
      (void)sink(slice(src, offset, length + 5000));
      for (int i = 0; i < 3; ++i) refusals += sink(slice(src, offset, 1)).ok() ? 0 : 1;
      return Status::Ok();
    };
    CHECK(blob->ensure(0, size, fetch, in(1s)).code() == Code::kIo);
    CHECK(refusals == 3);
    CHECK(blob->ready_bytes() == 0);
  }
  // The file past the blob's end holds nothing: no write went beyond it.
  struct stat st {};
  REQUIRE(::stat((dir / (kHexA + ".piece")).c_str(), &st) == 0);
  CHECK(static_cast<uint64_t>(st.st_size) == size);
}

TEST_CASE("piece store: wait_ready follows a slow fetch", "[p2p][piece_store]") {
  TempDir dir;
  auto store = open_store(dir.path());
  const uint64_t size = 6 * kGs + 50;
  const auto src = pattern(size);
  auto blob = open_blob(*store, kHexA, size);
  CHECK(blob->wait_ready(0, 10, in(1s)).status().code() == Code::kIo);  // nobody fetches
  CHECK(blob->wait_ready(size, 10, in(1s)).status().code() == Code::kInvalidInput);
  CHECK_FALSE(blob->is_covered(0, 1));
  CHECK(blob->is_covered(size, 0));
  CHECK_FALSE(blob->is_covered(size, 1));

  // Streams one granule per step, each step released by the reader.
  std::vector<std::unique_ptr<Gate>> steps;
  for (int i = 0; i < 8; ++i) steps.push_back(std::make_unique<Gate>());
  StoredBlob::FetchFn slow = [&](uint64_t offset, uint64_t length, const StoredBlob::Sink& sink) -> Status {
    for (uint64_t pos = 0, i = 0; pos < length; ++i) {
      steps[i]->wait();
      const uint64_t n = std::min<uint64_t>(kGs, length - pos);
      // In two halves: the granule is ready only after the second.
      NYDUS_TRY(sink(slice(src, offset + pos, n / 2)));
      NYDUS_TRY(sink(slice(src, offset + pos + n / 2, n - n / 2)));
      pos += n;
    }
    return Status::Ok();
  };
  Status fetch_status;
  std::thread fetcher([&] { fetch_status = blob->ensure(0, size, slow, in(10s)); });
  // Until the fetch has claimed granule 0 (a past deadline: no waiting).
  while (blob->wait_ready(0, 1, Clock::now()).status().code() == Code::kIo) std::this_thread::sleep_for(1ms);

  // Claimed but not ready: covered (a held-only asker may follow it), not ready.
  CHECK(blob->is_covered(0, size));
  CHECK_FALSE(blob->is_ready(0, 1));
  // Nothing arrives while the fetch is held: timeouts.
  CHECK(blob->wait_ready(0, size, in(30ms)).status().code() == Code::kTimeout);
  CHECK(blob->ensure(0, 1, slow, in(30ms)).code() == Code::kTimeout);
  std::vector<uint8_t> got;
  uint64_t pos = 0;
  for (size_t i = 0; pos < size; ++i) {
    steps[i]->open();
    auto run = blob->wait_ready(pos, size, in(5s));
    INFO(run.status().message());
    REQUIRE(run.ok());
    // Exactly one more granule each step (the last is the short one).
    CHECK(*run == std::min<uint64_t>(kGs, size - pos));
    auto bytes = read_back(*blob, pos, *run);
    got.insert(got.end(), bytes.begin(), bytes.end());
    pos += *run;
  }
  fetcher.join();
  CHECK(fetch_status.ok());
  CHECK(got == src);
  CHECK(blob->is_covered(0, size));
  CHECK(*blob->wait_ready(kGs + 1, size, in(1s)) == size - kGs - 1);
  CHECK(*blob->wait_ready(kGs + 1, 3, in(1s)) == 3);
}

TEST_CASE("piece store: ranges at the blob's unaligned end are clipped, not padded", "[p2p][piece_store]") {
  TempDir dir;
  auto store = open_store(dir.path());
  const uint64_t size = 10 * kGs + 37;
  Origin origin(pattern(size), 64);
  auto blob = open_blob(*store, kHexA, size);
  // The last 10 bytes: the fetch asks for the short last granule only.
  REQUIRE(blob->ensure(size - 10, 10, origin.fn(), in(1s)).ok());
  REQUIRE(origin.requests.size() == 1);
  CHECK(origin.requests[0] == ByteRange{10 * kGs, 37});
  CHECK(blob->ready_run(10 * kGs, 1000) == 37);
  CHECK(blob->ready_bytes() == 37);
  // A range over granules 8..10 up to the blob's end: granules 8 and 9 are
  // fetched (10 is ready), one past the end is refused.
  CHECK(blob->ensure(8 * kGs + 100, size - 8 * kGs - 99, origin.fn(), in(1s)).code() == Code::kInvalidInput);
  REQUIRE(blob->ensure(8 * kGs + 100, size - 8 * kGs - 100, origin.fn(), in(1s)).ok());
  REQUIRE(origin.requests.size() == 2);
  CHECK(origin.requests[1] == ByteRange{8 * kGs, 2 * kGs});
  CHECK(blob->ready_run(8 * kGs, UINT64_MAX) == 2 * kGs + 37);
  CHECK(blob->ready_run(size - 1, UINT64_MAX) == 1);
  CHECK(blob->ready_bytes() == 2 * kGs + 37);
  CHECK(blob->missing(0, UINT64_MAX) == std::vector<ByteRange>{{0, 8 * kGs}});
  REQUIRE(blob->ensure(0, size, origin.fn(), in(1s)).ok());
  CHECK(origin.requests.back() == ByteRange{0, 8 * kGs});
  CHECK(read_back(*blob, 0, size) == origin.src);
  for (auto& c : origin.counts) CHECK(c == 1);

  // The same through a reopen: the last granule stays ready and 37 bytes.
  store.reset();
  blob.reset();
  auto reopened = open_store(dir.path());
  CHECK(reopened->used_bytes() == size);
  CHECK(reopened->find(kHexA)->ready_run(10 * kGs, UINT64_MAX) == 37);
}

TEST_CASE("piece store: LRU eviction of unpinned blobs", "[p2p][piece_store]") {
  TempDir dir;
  const uint64_t size = 2 * kGs;
  const auto src = pattern(size);
  auto store = open_store(dir.path(), 3 * size);
  auto fill = [&](const std::string& hex) { REQUIRE(open_blob(*store, hex, size)->write(0, src).ok()); };
  fill(kHexA);
  fill(kHexB);
  fill(kHexC);
  CHECK(store->used_bytes() == 3 * size);
  CHECK(store->evicted_blobs() == 0);
  REQUIRE(store->find(kHexA) != nullptr);  // A is now more recent than B
  fill(kHexD);
  CHECK(store->evicted_blobs() == 1);
  CHECK(store->find(kHexB) == nullptr);
  CHECK_FALSE(fs::exists(dir / (kHexB + ".piece")));
  CHECK_FALSE(fs::exists(dir / (kHexB + ".piece.map")));
  CHECK(store->used_bytes() == 3 * size);
  // Order now C, A, D. C is pinned, so filling E evicts A.
  {
    auto pinned = store->find(kHexC);
    auto ea = open_blob(*store, kHexE, size);
    REQUIRE(ea->write(0, src).ok());
    CHECK(store->find(kHexA) == nullptr);
    CHECK(store->find(kHexC) != nullptr);
    CHECK(store->evicted_blobs() == 2);
    // Blobs being filled are never evicted, even when they alone exceed
    // the capacity; everything else pinned: the store stays over it.
    auto pd = store->find(kHexD);
    auto big = open_blob(*store, kHexB, 4 * size);
    REQUIRE(big->write(0, pattern(4 * size)).ok());
    CHECK(store->find(kHexB) != nullptr);
    CHECK(store->used_bytes() == 7 * size);
    CHECK(store->evicted_blobs() == 2);
  }
  // Nothing pinned: the next new byte brings the store back under.
  auto small = open_blob(*store, kHexA, kGs);
  REQUIRE(small->write(0, slice(src, 0, kGs)).ok());
  CHECK(store->used_bytes() <= 3 * size);
  CHECK(store->find(kHexA) != nullptr);
}

TEST_CASE("piece store: last use survives a reopen (map mtimes)", "[p2p][piece_store]") {
  TempDir dir;
  const uint64_t size = kGs;
  const auto src = pattern(size);
  {
    auto store = open_store(dir.path());
    for (const auto& h : {kHexA, kHexB, kHexC, kHexD}) {
      REQUIRE(open_blob(*store, h, size)->write(0, src).ok());
      std::this_thread::sleep_for(20ms);  // file times are coarse
    }
    for (const auto& h : {kHexC, kHexA}) {
      REQUIRE(store->find(h) != nullptr);
      std::this_thread::sleep_for(20ms);
    }
  }
  // Use order now B, D, C, A: a store for two blobs keeps C and A.
  auto store = open_store(dir.path(), 2 * size);
  CHECK(store->used_bytes() == 2 * size);
  CHECK(store->find(kHexB) == nullptr);
  CHECK(store->find(kHexD) == nullptr);
  CHECK(store->find(kHexC) != nullptr);
  CHECK(store->find(kHexA) != nullptr);
  CHECK_FALSE(fs::exists(dir / (kHexB + ".piece.map")));
}

TEST_CASE("piece store: a blob outliving its store still works", "[p2p][piece_store]") {
  TempDir dir;
  std::shared_ptr<StoredBlob> blob;
  {
    auto store = open_store(dir.path(), kGs);
    blob = open_blob(*store, kHexA, 2 * kGs);
  }
  const auto src = pattern(2 * kGs);
  REQUIRE(blob->write(0, src).ok());
  CHECK(read_back(*blob, 0, 2 * kGs) == src);
}
