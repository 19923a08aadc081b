// ReadTrace (backend/read_trace.h): bounds, ordering and time stamps,
// concurrent recording, the CSV form; and that ChunkReader records its
// backend fetches into it.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "backend/chunk_reader.h"
#include "backend/localfs_backend.h"
#include "backend/read_trace.h"
#include "bootstrap/image.h"
#include "test/test_util.h"

namespace {

using nydus::backend::ReadTrace;
using nydus::backend::ReadTraceEntry;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

}  // namespace

TEST_CASE("ReadTrace starts empty and answers the CSV header alone") {
  ReadTrace trace;
  CHECK(trace.capacity() == ReadTrace::kDefaultCapacity);
  CHECK(trace.entries().empty());
  CHECK(trace.size() == 0);
  CHECK(trace.dropped() == 0);
  CHECK(trace.csv({}) == "t_us,blob,blob_size,offset,length,chunks\n");
  CHECK(std::string(ReadTrace::kCsvHeader) == trace.csv({}));
}

TEST_CASE("ReadTrace keeps entries in order with times from the first one") {
  ReadTrace trace;
  trace.record(1, 4096, 100, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  trace.record(0, 0, 2 << 20, 3);
  trace.record(1, 8192, 512, 0);
  const auto e = trace.entries();
  REQUIRE(e.size() == 3);
  CHECK(e[0].t_us == 0);
  CHECK(e[1].t_us >= 20'000);
  CHECK(e[1].t_us < 20'000'000);
  CHECK(e[2].t_us >= e[1].t_us);
  CHECK(std::tie(e[0].blob_index, e[0].offset, e[0].length, e[0].chunks) == std::tuple(1u, 4096ull, 100ull, 1u));
  CHECK(std::tie(e[1].blob_index, e[1].offset, e[1].length, e[1].chunks) == std::tuple(0u, 0ull, 2ull << 20, 3u));
  CHECK(std::tie(e[2].blob_index, e[2].offset, e[2].length, e[2].chunks) == std::tuple(1u, 8192ull, 512ull, 0u));
}

TEST_CASE("ReadTrace keeps the first `capacity` entries and counts the rest") {
  ReadTrace trace(4);
  for (uint32_t i = 0; i < 10; ++i) trace.record(0, i * 10, 10, 1);
  const auto e = trace.entries();
  REQUIRE(e.size() == 4);
  CHECK(trace.size() == 4);
  for (uint32_t i = 0; i < 4; ++i) CHECK(e[i].offset == i * 10);
  CHECK(trace.dropped() == 6);
  CHECK(lines_of(trace.csv({})).size() == 5);

  ReadTrace none(0);
  none.record(0, 0, 1, 1);
  CHECK(none.entries().empty());
  CHECK(none.dropped() == 1);
}

TEST_CASE("ReadTrace as CSV names each blob by id with its compressed size") {
  nydus::bootstrap::BlobInfo a, b;
  a.index = 0;
  a.id = std::string(64, 'a');
  a.compressed_size = 14554;
  b.index = 1;
  b.id = std::string(64, 'b');
  b.compressed_size = 1ull << 40;
  ReadTrace trace;
  trace.record(1, 123, 456, 2);
  trace.record(0, 0, 32, 0);
  trace.record(7, 1, 2, 1);  // no such blob
  const auto lines = lines_of(trace.csv({a, b}));
  REQUIRE(lines.size() == 4);
  CHECK(lines[0] == "t_us,blob,blob_size,offset,length,chunks");
  const auto t = trace.entries();
  CHECK(lines[1] == std::to_string(t[0].t_us) + "," + b.id + ",1099511627776,123,456,2");
  CHECK(lines[2] == std::to_string(t[1].t_us) + "," + a.id + ",14554,0,32,0");
  CHECK(lines[3] == std::to_string(t[2].t_us) + ",,0,1,2,1");
  // An id that would break the CSV does not.
  a.id = "x,y\"z\n";
  CHECK(lines_of(trace.csv({a, b}))[2] == std::to_string(t[1].t_us) + ",xyz,14554,0,32,0");
}

TEST_CASE("ReadTrace records from many threads: nothing lost or torn, times in order") {
  constexpr uint32_t kThreads = 8;
  constexpr uint32_t kEach = 5000;
  ReadTrace trace(kThreads * kEach - 100);
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < kThreads; ++t)
    threads.emplace_back([&trace, t] {
      // Each entry is self-describing (offset = thread, length = sequence,
      // chunks = thread), so a torn or duplicated entry shows.
      for (uint32_t i = 0; i < kEach; ++i) trace.record(t, t, i, t);
    });
  // Readers at the same time must see times in order (checked here, after
  // the join: Catch2 assertions are not thread-safe).
  bool reader_saw_disorder = false;
  std::thread reader([&trace, &reader_saw_disorder] {
    for (int i = 0; i < 50; ++i) {
      const auto e = trace.entries();
      for (size_t k = 1; k < e.size(); ++k)
        if (e[k - 1].t_us > e[k].t_us) reader_saw_disorder = true;
      (void)trace.csv({});
    }
  });
  for (auto& th : threads) th.join();
  reader.join();
  CHECK_FALSE(reader_saw_disorder);

  const auto e = trace.entries();
  REQUIRE(e.size() == kThreads * kEach - 100);
  CHECK(trace.dropped() == 100);
  std::map<uint32_t, uint64_t> next;  // per thread: the next sequence number expected
  size_t disorder = 0, torn = 0, out_of_sequence = 0;
  for (size_t k = 0; k < e.size(); ++k) {
    if (k > 0 && e[k - 1].t_us > e[k].t_us) ++disorder;
    if (e[k].blob_index >= kThreads || e[k].offset != e[k].blob_index || e[k].chunks != e[k].blob_index) ++torn;
    // Each thread's entries appear in its own order, none missing.
    if (e[k].length != next[e[k].blob_index]++) ++out_of_sequence;
  }
  CHECK(disorder == 0);
  CHECK(torn == 0);
  CHECK(out_of_sequence == 0);
  uint64_t kept = 0;
  for (const auto& [thread, n] : next) kept += n;
  CHECK(kept == e.size());
}

TEST_CASE("ChunkReader records each backend fetch of a chunk, none for cache hits") {
  using nydus::test::fixture;
  const std::string boot = fixture("bootstrap/rafs-v6-2.2.boot");
  auto image = nydus::bootstrap::Image::open(boot);
  REQUIRE(image.ok());
  const auto& blobs = (*image)->blobs();
  REQUIRE(blobs.size() == 1);
  nydus::test::TempDir work;
  ReadTrace trace;
  nydus::backend::ChunkReaderOptions options;
  options.work_dir = work.path();
  options.cache = true;
  options.trace = &trace;
  nydus::backend::ChunkReader reader(blobs, nydus::backend::make_localfs_backend({fixture("blobs"), "", {}, nullptr}),
                                     options);

  // Every chunk of every file, twice: the second round is all cache hits.
  std::vector<nydus::bootstrap::ChunkRef> chunks;
  for (const char* path : {"lib.rs", "sync_io.rs"}) {
    auto ino = (*image)->lookup((*image)->root(), path);
    REQUIRE(ino.ok());
    auto refs = (*image)->chunks(*ino, 0, UINT64_MAX);
    REQUIRE(refs.ok());
    chunks.insert(chunks.end(), refs->begin(), refs->end());
  }
  REQUIRE(chunks.size() == 2);
  for (int round = 0; round < 2; ++round)
    for (const auto& c : chunks) {
      std::vector<uint8_t> buf(c.uncompressed_size);
      REQUIRE(reader.read_chunk(c, buf).ok());
    }

  const auto e = trace.entries();
  std::vector<std::tuple<uint32_t, uint64_t, uint64_t, uint32_t>> fetched, expected;
  for (const auto& r : e)
    if (r.chunks > 0) fetched.emplace_back(r.blob_index, r.offset, r.length, r.chunks);
  for (const auto& c0 : chunks) {
    auto c = reader.located(c0);
    REQUIRE(c.ok());
    expected.emplace_back(c->blob_index, c->compressed_offset, c->compressed_size, 1u);
  }
  CHECK(fetched == expected);
  // Metadata reads (chunks == 0), if the bootstrap needed any, lie in the blob.
  for (const auto& r : e)
    if (r.chunks == 0) CHECK(r.offset + r.length <= blobs[0].compressed_size);
}
