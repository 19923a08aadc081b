// fs::FsMetrics (upstream FsIoStats), FopTimer, the registry, and the
// daemon's backend/blobcache JSON and Prometheus text, checked against the
// shapes of nydusd-contract.md §3 and upstream utils/src/metrics.rs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend_metrics.h"
#include "daemon/metrics_json.h"
#include "fs/fs_metrics.h"

using namespace nydus;
using fs::Fop;
using fs::FopOutcome;
using ordered_json = nlohmann::ordered_json;

namespace {

std::vector<std::string> keys_of(const ordered_json& j) {
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  return keys;
}

ordered_json parse(const std::string& text) {
  auto j = ordered_json::parse(text, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  return j;
}

void read_ok(fs::FsMetrics& m, uint64_t ino, uint64_t bytes, uint64_t us = 10) {
  m.record(Fop::kRead, ino, FopOutcome::kOk, bytes, us);
}

}  // namespace

TEST_CASE("read size buckets match upstream request_size_index") {
  // upstream utils/src/metrics.rs test_request_size_index
  const std::vector<std::pair<uint64_t, size_t>> cases = {
      {0x0, 0},      {0x3ff, 0},     {0x400, 1},     {0xfff, 1},      {0x1000, 2},    {0x3fff, 2},
      {0x4000, 3},   {0xffff, 3},    {0x1'0000, 4},  {0x1'ffff, 4},   {0x2'0000, 5},  {0x7'ffff, 5},
      {0x8'0000, 6}, {0xf'ffff, 6},  {0x10'0000, 7}, {~uint64_t{0}, 7}, {4000, 1},    {4096, 2},
      {65535, 3},    {131072, 5},    {65520, 3},     {2015520, 7},
  };
  for (auto [bytes, bucket] : cases) {
    INFO(bytes);
    CHECK(fs::read_size_bucket(bytes) == bucket);
    CHECK(backend::size_bucket(bytes) == bucket);
  }
}

TEST_CASE("latency buckets: µs for the filesystem, ms for the backend") {
  const std::vector<std::pair<uint64_t, size_t>> us = {
      {0, 0},          {200, 0},        {201, 1},        {1'000, 1},      {1'001, 2},      {20'000, 2},
      {20'001, 3},     {50'000, 3},     {50'001, 4},     {500'000, 4},    {500'001, 5},    {1'000'000, 5},
      {1'000'001, 6},  {2'000'000, 6},  {2'000'001, 7},  {100, 0},        {500, 1},        {10'000, 2},
      {30'000, 3},     {100'000, 4},    {1'500'000, 6},  {3'000'000, 7},
  };
  for (auto [v, bucket] : us) {
    INFO(v);
    CHECK(fs::latency_bucket_us(v) == bucket);
  }
  // upstream test_latency_millis_range_index, plus the edges
  const std::vector<std::pair<uint64_t, size_t>> ms = {
      {0, 0}, {1, 0}, {2, 1}, {10, 1}, {20, 1}, {21, 2}, {40, 2}, {50, 2}, {51, 3}, {80, 3}, {100, 3},
      {101, 4}, {160, 4}, {320, 4}, {500, 4}, {501, 5}, {640, 5}, {1000, 5}, {1001, 6}, {1280, 6},
      {2000, 6}, {2001, 7}, {2560, 7},
  };
  for (auto [v, bucket] : ms) {
    INFO(v);
    CHECK(backend::latency_bucket_ms(v) == bucket);
  }
}

TEST_CASE("fop names follow upstream's StatsFop order") {
  const char* names[] = {"getattr", "readlink", "open",    "release",     "read",   "statfs", "getxattr",    "listxattr",
                         "opendir", "lookup",   "readdir", "readdirplus", "access", "forget", "batch_forget"};
  for (size_t i = 0; i < fs::kFopCount; ++i) CHECK(std::string(fs::fop_name(static_cast<Fop>(i))) == names[i]);
}

TEST_CASE("record: hits, errors, data_read, block_count_read, latency") {
  fs::FsMetrics m("/");
  read_ok(m, 5, 6, 150);          // bucket 0, latency bucket 0
  read_ok(m, 5, 4096, 1500);      // bucket 2, latency bucket 2
  m.record(Fop::kRead, 5, FopOutcome::kError, 999, 300);  // failed: bytes ignored, bucket 0
  m.record(Fop::kGetattr, 5, FopOutcome::kOk, 1234, 2'500'000);  // bytes ignored for non-reads
  m.record(Fop::kLookup, 1, FopOutcome::kError, 0, std::nullopt);

  CHECK(m.fop_hits(Fop::kRead) == 2);
  CHECK(m.fop_errors(Fop::kRead) == 1);
  CHECK(m.data_read() == 6 + 4096);
  CHECK(m.block_count_read(0) == 2);
  CHECK(m.block_count_read(2) == 1);
  CHECK(m.fop_latency_us(Fop::kRead) == 150 + 1500 + 300);
  CHECK(m.read_latency_dist(0) == 1);
  CHECK(m.read_latency_dist(1) == 1);
  CHECK(m.read_latency_dist(2) == 1);
  // Latency of other ops goes to their cumulative total only.
  CHECK(m.fop_latency_us(Fop::kGetattr) == 2'500'000);
  CHECK(m.read_latency_dist(7) == 0);
  CHECK(m.read_latency_dist(6) == 0);
  CHECK(m.fop_hits(Fop::kGetattr) == 1);
  CHECK(m.fop_errors(Fop::kLookup) == 1);
  CHECK(m.fop_latency_us(Fop::kLookup) == 0);
}

TEST_CASE("nr_opens: open +1, release -1, zero-message open and failures leave it, never below 0") {
  fs::FsMetrics m("/");
  m.record(Fop::kOpen, 7, FopOutcome::kOk, 0, 1);
  m.record(Fop::kOpen, 8, FopOutcome::kOk, 0, 1);
  CHECK(m.nr_opens() == 2);
  m.record(Fop::kOpen, 9, FopOutcome::kOkNoRelease, 0, 1);
  CHECK(m.nr_opens() == 2);
  CHECK(m.fop_hits(Fop::kOpen) == 3);
  m.record(Fop::kOpen, 9, FopOutcome::kError, 0, 1);
  CHECK(m.nr_opens() == 2);
  m.record(Fop::kRelease, 7, FopOutcome::kOk, 0, 1);
  CHECK(m.nr_opens() == 1);
  m.record(Fop::kOpendir, 1, FopOutcome::kOk, 0, 1);  // directories are not counted
  CHECK(m.nr_opens() == 1);
  for (int i = 0; i < 3; ++i) m.record(Fop::kRelease, 8, FopOutcome::kOk, 0, 1);
  CHECK(m.nr_opens() == 0);  // releases of files opened before a takeover
  CHECK(m.fop_hits(Fop::kRelease) == 4);
}

TEST_CASE("FopTimer: failure unless marked, bytes for reads, switchable latency, null metrics") {
  fs::FsMetrics m("/");
  { fs::FopTimer t(&m, Fop::kRead, 3); }
  CHECK(m.fop_errors(Fop::kRead) == 1);
  CHECK(m.block_count_read(0) == 1);
  {
    fs::FopTimer t(&m, Fop::kRead, 3);
    t.success(70000);
  }
  CHECK(m.fop_hits(Fop::kRead) == 1);
  CHECK(m.data_read() == 70000);
  CHECK(m.block_count_read(4) == 1);
  uint64_t dist = 0;
  for (size_t i = 0; i < fs::kLatencyBuckets; ++i) dist += m.read_latency_dist(i);
  CHECK(dist == 2);
  {
    fs::FopTimer t(&m, Fop::kOpen, 3);
    t.success();
    t.failure();  // e.g. interrupted reply
  }
  CHECK(m.fop_errors(Fop::kOpen) == 1);
  CHECK(m.nr_opens() == 0);
  {
    fs::FopTimer t(&m, Fop::kOpen, 3);
    t.success_no_release();
  }
  CHECK(m.fop_hits(Fop::kOpen) == 1);
  CHECK(m.nr_opens() == 0);

  // Real time is measured.
  {
    fs::FopTimer t(&m, Fop::kStatfs, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    t.success();
  }
  CHECK(m.fop_latency_us(Fop::kStatfs) >= 3000);

  m.set_measure_latency(false);
  const uint64_t before = m.fop_latency_us(Fop::kRead);
  {
    fs::FopTimer t(&m, Fop::kRead, 3);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    t.success(1);
  }
  CHECK(m.fop_latency_us(Fop::kRead) == before);
  dist = 0;
  for (size_t i = 0; i < fs::kLatencyBuckets; ++i) dist += m.read_latency_dist(i);
  CHECK(dist == 2);

  {
    fs::FopTimer t(nullptr, Fop::kRead, 3);
    t.success(5);
  }  // nothing to check but that it is harmless
}

TEST_CASE("GET /api/v1/metrics JSON: the contract's keys, order and shapes") {
  fs::FsMetrics fresh("/");
  CHECK(fresh.fs_metrics_json() ==
        "{\"files_account_enabled\":false,\"access_pattern_enabled\":false,"
        "\"record_latest_read_files_enabled\":false,\"measure_latency\":true,\"id\":\"/\",\"nr_opens\":0,"
        "\"data_read\":0,\"block_count_read\":[0,0,0,0,0,0,0,0],"
        "\"fop_hits\":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],\"fop_errors\":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"
        "\"fop_cumulative_latency_total\":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"
        "\"read_latency_dist\":[0,0,0,0,0,0,0,0]}");

  fs::FsMetrics m("/42", {.files_account = true, .access_pattern = true, .latest_read_files = true});
  read_ok(m, 10, 12345, 300);
  m.record(Fop::kOpen, 10, FopOutcome::kOk, 0, 5);
  auto j = parse(m.fs_metrics_json());
  CHECK(keys_of(j) == std::vector<std::string>{"files_account_enabled", "access_pattern_enabled",
                                               "record_latest_read_files_enabled", "measure_latency", "id",
                                               "nr_opens", "data_read", "block_count_read", "fop_hits",
                                               "fop_errors", "fop_cumulative_latency_total",
                                               "read_latency_dist"});
  CHECK(j["files_account_enabled"] == true);
  CHECK(j["access_pattern_enabled"] == true);
  CHECK(j["record_latest_read_files_enabled"] == true);
  CHECK(j["measure_latency"] == true);
  CHECK(j["id"] == "/42");
  CHECK(j["nr_opens"] == 1);
  CHECK(j["data_read"] == 12345);
  CHECK(j["block_count_read"].size() == 8);
  CHECK(j["block_count_read"][2] == 1);  // 12345 bytes: <16K
  CHECK(j["fop_hits"].size() == 15);
  CHECK(j["fop_hits"][4] == 1);
  CHECK(j["fop_hits"][2] == 1);
  CHECK(j["fop_errors"].size() == 15);
  CHECK(j["fop_cumulative_latency_total"].size() == 15);
  CHECK(j["fop_cumulative_latency_total"][4] == 300);
  CHECK(j["read_latency_dist"].size() == 8);
  CHECK(j["read_latency_dist"][1] == 1);

  // A client-supplied id that is not UTF-8 must not throw.
  fs::FsMetrics odd(std::string("/\xff\xfe"));
  CHECK_FALSE(parse(odd.fs_metrics_json()).is_discarded());
}

TEST_CASE("smoke-test arithmetic: reading n bytes adds n to data_read and 1 to fop_hits[4]") {
  fs::FsMetrics m("/", {.files_account = true, .access_pattern = true, .latest_read_files = true});
  read_ok(m, 2, std::string("file-1").size());
  auto gm = parse(m.fs_metrics_json());
  CHECK(gm["data_read"] == 6);
  CHECK(gm["fop_hits"][4] == 1);
  read_ok(m, 3, std::string("dir-1/file-1").size());
  auto gm2 = parse(m.fs_metrics_json());
  CHECK(gm2["data_read"] == 6 + 12);
  CHECK(gm2["fop_hits"][4] == 2);
}

TEST_CASE("GET /metrics/files: per-inode counters only with files_account") {
  fs::FsMetrics m("/");
  read_ok(m, 9, 100);
  CHECK(m.files_metrics_json(false) == "{}");

  m.set_files_account(true);
  read_ok(m, 9, 100);
  read_ok(m, 9, 5000);
  m.record(Fop::kRead, 9, FopOutcome::kError, 0, 1);
  m.record(Fop::kGetattr, 9, FopOutcome::kOk, 0, 1);
  m.record(Fop::kLookup, 1, FopOutcome::kOk, 0, 1);
  m.record(Fop::kBatchForget, fs::kNoInode, FopOutcome::kOk, 0, 1);  // no per-inode record

  auto j = parse(m.files_metrics_json(false));
  CHECK(keys_of(j) == std::vector<std::string>{"1", "9"});
  const auto& f = j["9"];
  CHECK(keys_of(f) == std::vector<std::string>{"total_fops", "data_read", "block_count_read", "fop_hits", "fop_errors"});
  CHECK(f["total_fops"] == 4);
  CHECK(f["data_read"] == 5100);
  CHECK(f["block_count_read"] == ordered_json::parse("[2,0,1,0,0,0,0,0]"));  // 100, 0 (failed), 5000
  CHECK(f["fop_hits"].size() == 15);
  CHECK(f["fop_hits"][4] == 2);
  CHECK(f["fop_hits"][0] == 1);
  CHECK(f["fop_errors"][4] == 1);
  CHECK(j["1"]["fop_hits"][9] == 1);
  CHECK(j["1"]["total_fops"] == 1);
  // The global counters include everything.
  CHECK(m.fop_hits(Fop::kRead) == 3);
  CHECK(m.fop_hits(Fop::kBatchForget) == 1);
}

TEST_CASE("GET /metrics/files?latest=true: runs like upstream's InodeBitmap, cleared on read") {
  fs::FsMetrics m("/");
  read_ok(m, 4, 1);
  CHECK(m.files_metrics_json(true) == "[]");  // switch off

  m.set_latest_read_files(true);
  read_ok(m, 1, 1);
  read_ok(m, 2, 1);
  read_ok(m, 5, 1);
  CHECK(m.latest_read_files(false) == std::vector<std::vector<uint64_t>>{{1, 2}, {5}});
  CHECK(m.files_metrics_json(true) == "[[1,2],[5]]");
  CHECK(m.files_metrics_json(true) == "[]");  // cleared

  // Runs across 64-inode words, single inodes, and failed reads left out.
  for (uint64_t ino : {63, 64, 65, 127, 128, 200, 1000, 0}) read_ok(m, ino, 1);
  read_ok(m, 62, 0);  // an EOF read still counts as a read
  m.record(Fop::kRead, 300, FopOutcome::kError, 0, 1);
  m.record(Fop::kGetattr, 301, FopOutcome::kOk, 0, 1);
  CHECK(m.files_metrics_json(true) == "[[0],[62,65],[127,128],[200],[1000]]");
  CHECK(m.files_metrics_json(true) == "[]");
  read_ok(m, 65, 1);
  CHECK(m.files_metrics_json(true) == "[[65]]");
}

TEST_CASE("GET /metrics/pattern: reads per inode with the first access time") {
  fs::FsMetrics m("/");
  read_ok(m, 3, 1);
  CHECK(m.access_patterns_json() == "[]");

  m.set_access_pattern(true);
  CHECK(m.access_patterns_json() == "[]");  // enabled, nothing recorded: an empty list
  const auto before = std::chrono::system_clock::now();
  read_ok(m, 30, 10);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  read_ok(m, 20, 10);
  m.record(Fop::kRead, 30, FopOutcome::kError, 0, 1);  // failed reads count too (upstream)
  m.record(Fop::kGetattr, 40, FopOutcome::kOk, 0, 1);  // not a read: no record

  auto j = parse(m.access_patterns_json());
  REQUIRE(j.size() == 2);
  CHECK(keys_of(j[0]) == std::vector<std::string>{"ino", "nr_read", "first_access_time_secs", "first_access_time_nanos"});
  // Ordered by first access.
  CHECK(j[0]["ino"] == 30);
  CHECK(j[0]["nr_read"] == 2);
  CHECK(j[1]["ino"] == 20);
  CHECK(j[1]["nr_read"] == 1);
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(before.time_since_epoch()).count();
  CHECK(j[0]["first_access_time_secs"].get<int64_t>() >= secs);
  CHECK(j[0]["first_access_time_secs"].get<int64_t>() <= secs + 5);
  CHECK(j[0]["first_access_time_nanos"].get<uint64_t>() < 1'000'000'000);

  // The first access time is kept.
  const auto first = m.access_patterns();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  read_ok(m, 30, 10);
  const auto again = m.access_patterns();
  CHECK(again[0].ino == 30);
  CHECK(again[0].first_access_time_secs == first[0].first_access_time_secs);
  CHECK(again[0].first_access_time_nanos == first[0].first_access_time_nanos);
  CHECK(again[0].nr_read == 3);
}

TEST_CASE("concurrency: totals are exact with every switch on, exporters running alongside") {
  fs::FsMetrics m("/", {.files_account = true, .access_pattern = true, .latest_read_files = true});
  constexpr int kThreads = 8;
  constexpr int kOps = 20000;
  constexpr uint64_t kInodes = 300;  // shared between threads: record creation races
  std::atomic<bool> stop{false};
  std::set<uint64_t> reported;  // from the latest-read exporter
  std::thread exporter([&] {
    while (!stop.load()) {
      for (const auto& run : m.latest_read_files(true))
        for (uint64_t i = run.front(); i <= run.back(); ++i) reported.insert(i);
      (void)m.files_metrics_json(false);
      (void)m.access_patterns_json();
      (void)m.fs_metrics_json();
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&m, t] {
      for (int i = 0; i < kOps; ++i) {
        const uint64_t ino = static_cast<uint64_t>(t * 7 + i) % kInodes;
        if (i % 4 == 3) {
          fs::FopTimer timer(&m, Fop::kGetattr, ino);
          if (i % 8 != 7) timer.success();
        } else {
          fs::FopTimer timer(&m, Fop::kRead, ino);
          timer.success(static_cast<uint64_t>(i % 5000));
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  stop.store(true);
  exporter.join();
  for (const auto& run : m.latest_read_files(true))
    for (uint64_t i = run.front(); i <= run.back(); ++i) reported.insert(i);

  uint64_t reads = 0, bytes = 0, getattr_ok = 0, getattr_err = 0;
  for (int i = 0; i < kOps; ++i) {
    if (i % 4 == 3) {
      (i % 8 != 7 ? getattr_ok : getattr_err) += 1;
    } else {
      ++reads;
      bytes += static_cast<uint64_t>(i % 5000);
    }
  }
  CHECK(m.fop_hits(Fop::kRead) == reads * kThreads);
  CHECK(m.data_read() == bytes * kThreads);
  CHECK(m.fop_hits(Fop::kGetattr) == getattr_ok * kThreads);
  CHECK(m.fop_errors(Fop::kGetattr) == getattr_err * kThreads);
  uint64_t blocks = 0, dist = 0;
  for (size_t i = 0; i < fs::kSizeBuckets; ++i) blocks += m.block_count_read(i);
  for (size_t i = 0; i < fs::kLatencyBuckets; ++i) dist += m.read_latency_dist(i);
  CHECK(blocks == reads * kThreads);
  CHECK(dist == reads * kThreads);

  uint64_t total_fops = 0, file_bytes = 0, file_reads = 0;
  const auto files = m.file_stats();
  CHECK(files.size() == kInodes);
  for (const auto& f : files) {
    total_fops += f.total_fops;
    file_bytes += f.data_read;
    file_reads += f.fop_hits[4];
  }
  CHECK(total_fops == static_cast<uint64_t>(kOps) * kThreads);
  CHECK(file_bytes == bytes * kThreads);
  CHECK(file_reads == reads * kThreads);

  uint64_t pattern_reads = 0;
  for (const auto& a : m.access_patterns()) pattern_reads += a.nr_read;
  CHECK(pattern_reads == reads * kThreads);
  CHECK(reported.size() == kInodes);  // nothing lost to the concurrent clears
}

TEST_CASE("registry: exact id, or the only instance without one") {
  fs::FsMetricsRegistry reg;
  CHECK(reg.find(std::nullopt) == nullptr);
  auto a = std::make_shared<fs::FsMetrics>("/");
  reg.add(a);
  CHECK(reg.find(std::nullopt) == a);
  CHECK(reg.find(std::string("/")) == a);
  CHECK(reg.find(std::string("poison")) == nullptr);
  auto b = std::make_shared<fs::FsMetrics>("/42");
  reg.add(b);
  CHECK(reg.find(std::nullopt) == nullptr);
  CHECK(reg.find(std::string("/42")) == b);
  CHECK(reg.all().size() == 2);
  CHECK(reg.remove("/"));
  CHECK_FALSE(reg.remove("/"));
  CHECK(reg.find(std::nullopt) == b);
}

TEST_CASE("GET /metrics/backend JSON: upstream BackendMetrics fields and dists") {
  backend::BackendMetrics m;
  m.record_read(4096, std::chrono::milliseconds(30), true);      // size 2, latency 2
  m.record_read(2 << 20, std::chrono::milliseconds(1500), true); // size 7, latency 6
  m.record_read(0, std::chrono::milliseconds(0), false);         // size 0, latency 0
  auto j = parse(daemon::backend_metrics_json(m, "registry"));
  CHECK(keys_of(j) == std::vector<std::string>{"backend_type", "read_count", "read_errors", "read_amount_total",
                                               "read_cumulative_latency_millis_total",
                                               "read_cumulative_latency_millis_dist", "read_count_block_size_dist",
                                               "read_latency_sizes_dist"});
  CHECK(j["backend_type"] == "registry");
  CHECK(j["read_count"] == 3);
  CHECK(j["read_errors"] == 1);
  CHECK(j["read_amount_total"] == 4096 + (2 << 20));
  CHECK(j["read_cumulative_latency_millis_total"] == 1530);
  CHECK(j["read_cumulative_latency_millis_dist"] == ordered_json::parse("[0,0,30,0,0,0,0,1500]"));
  CHECK(j["read_count_block_size_dist"] == ordered_json::parse("[1,0,1,0,0,0,0,1]"));
  REQUIRE(j["read_latency_sizes_dist"].size() == 8);
  for (size_t s = 0; s < 8; ++s) {
    REQUIRE(j["read_latency_sizes_dist"][s].size() == 8);
    for (size_t l = 0; l < 8; ++l) {
      const int want = (s == 2 && l == 2) || (s == 7 && l == 6) || (s == 0 && l == 0);
      CHECK(j["read_latency_sizes_dist"][s][l] == want);
    }
  }
  // The existing per-latency counts still add up.
  CHECK(m.read_latency_dist[0].load() == 1);
  CHECK(m.read_latency_dist[2].load() == 1);
  CHECK(m.read_latency_dist[6].load() == 1);
}

TEST_CASE("GET /metrics/blobcache JSON: the contract's key set and upstream's meanings") {
  backend::CacheMetrics m;
  std::vector<backend::BlobCacheState> blobs(2);
  blobs[0].blob_id = "aaa";
  blobs[0].cached = true;
  blobs[0].ready_chunks = 3;
  blobs[0].chunk_count = 3;
  blobs[0].fully_cached = true;
  blobs[1].blob_id = "bbb";
  blobs[1].cached = false;  // no usable cache file: not an underlying file
  blobs[1].chunk_count = 4;

  auto empty = parse(daemon::blobcache_metrics_json(m, {}, "/var/lib/cache"));
  CHECK(keys_of(empty) ==
        std::vector<std::string>{"underlying_files", "store_path", "partial_hits", "whole_hits", "total",
                                 "entries_count", "prefetch_data_amount", "prefetch_requests_count",
                                 "prefetch_workers", "prefetch_unmerged_chunks", "prefetch_cumulative_time_millis",
                                 "prefetch_begin_time_secs", "prefetch_begin_time_millis", "prefetch_end_time_secs",
                                 "prefetch_end_time_millis", "buffered_backend_size", "data_all_ready"});
  CHECK(empty["underlying_files"] == ordered_json::array());
  CHECK(empty["data_all_ready"] == false);
  CHECK(empty["prefetch_cumulative_time_millis"] == 0);
  CHECK(empty["prefetch_begin_time_secs"] == 0);

  m.chunk_reads = 10;
  m.cache_hits = 4;
  m.prefetch_bytes = 8192;
  m.prefetch_requests = 2;
  m.prefetch_chunks = 5;
  m.prefetch_workers = 3;
  m.prefetch_begin_ms = 1'700'000'000'123;
  auto running = parse(daemon::blobcache_metrics_json(m, blobs, "/var/lib/cache", 1'700'000'002'000));
  CHECK(running["underlying_files"] == ordered_json::parse(R"(["aaa.blob.data"])"));
  CHECK(running["store_path"] == "/var/lib/cache");
  CHECK(running["partial_hits"] == 0);
  CHECK(running["whole_hits"] == 4);
  CHECK(running["total"] == 10);
  CHECK(running["entries_count"] == 3);
  CHECK(running["prefetch_data_amount"] == 8192);
  CHECK(running["prefetch_requests_count"] == 2);
  CHECK(running["prefetch_workers"] == 3);
  CHECK(running["prefetch_unmerged_chunks"] == 5);
  CHECK(running["prefetch_cumulative_time_millis"] == 1877);
  CHECK(running["prefetch_begin_time_secs"] == 1'700'000'000);
  CHECK(running["prefetch_begin_time_millis"] == 123);
  CHECK(running["prefetch_end_time_secs"] == 0);
  CHECK(running["buffered_backend_size"] == 0);
  CHECK(running["data_all_ready"] == false);  // bbb is not cached

  m.prefetch_end_ms = 1'700'000'005'456;
  blobs[1].cached = true;
  blobs[1].ready_chunks = 4;
  blobs[1].fully_cached = true;
  auto done = parse(daemon::blobcache_metrics_json(m, blobs, "/c"));
  CHECK(done["underlying_files"] == ordered_json::parse(R"(["aaa.blob.data","bbb.blob.data"])"));
  CHECK(done["entries_count"] == 7);
  CHECK(done["prefetch_cumulative_time_millis"] == 5333);
  CHECK(done["prefetch_end_time_secs"] == 1'700'000'005);
  CHECK(done["prefetch_end_time_millis"] == 456);
  CHECK(done["data_all_ready"] == true);
}

namespace {

// A strict reader of the text exposition format (0.0.4): every line is a
// # HELP, a # TYPE or a sample of a declared family; no series twice.
// (Hand-written: std::regex trips GCC 12 warnings under ASan.)
struct PromParse {
  std::map<std::string, std::string> types;  // family -> type
  std::map<std::string, uint64_t> samples;   // "name{labels}" -> value
};

struct Cursor {
  const std::string& s;
  size_t i = 0;
  bool done() const { return i == s.size(); }
  bool eat(char c) {
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  bool eat(std::string_view word) {
    if (s.compare(i, word.size(), word) != 0) return false;
    i += word.size();
    return true;
  }
  // [a-zA-Z_:][a-zA-Z0-9_:]* (metric) or [a-zA-Z_][a-zA-Z0-9_]* (label)
  std::string name(bool metric) {
    auto first = [&](char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || (metric && c == ':'); };
    auto rest = [&](char c) { return first(c) || std::isdigit(static_cast<unsigned char>(c)); };
    const size_t b = i;
    if (i < s.size() && first(s[i])) {
      ++i;
      while (i < s.size() && rest(s[i])) ++i;
    }
    return s.substr(b, i - b);
  }
  // "…" with only \\, \" and \n escapes; false if malformed.
  bool quoted() {
    if (!eat('"')) return false;
    while (i < s.size()) {
      const char c = s[i++];
      if (c == '"') return true;
      if (c == '\n') return false;
      if (c == '\\') {
        if (i == s.size() || (s[i] != '\\' && s[i] != '"' && s[i] != 'n')) return false;
        ++i;
      }
    }
    return false;
  }
};

PromParse parse_prometheus(const std::string& text) {
  PromParse p;
  REQUIRE(!text.empty());
  REQUIRE(text.back() == '\n');
  std::istringstream in(text);
  std::string line;
  std::set<std::string> helped;
  std::string current;  // family of the last # TYPE
  while (std::getline(in, line)) {
    INFO(line);
    Cursor c{line};
    if (c.eat(std::string_view("# HELP "))) {
      const std::string family = c.name(true);
      CHECK_FALSE(family.empty());
      CHECK(c.eat(' '));
      CHECK_FALSE(c.done());
      CHECK(helped.insert(family).second);
    } else if (c.eat(std::string_view("# TYPE "))) {
      const std::string family = c.name(true);
      CHECK(c.eat(' '));
      const std::string type = line.substr(c.i);
      CHECK((type == "counter" || type == "gauge" || type == "histogram"));
      CHECK(helped.count(family) == 1);
      CHECK(p.types.emplace(family, type).second);
      current = family;
    } else {
      const std::string name = c.name(true);
      REQUIRE_FALSE(name.empty());
      const size_t labels_begin = c.i;
      if (c.eat('{')) {
        do {
          CHECK_FALSE(c.name(false).empty());
          CHECK(c.eat('='));
          CHECK(c.quoted());
        } while (c.eat(','));
        REQUIRE(c.eat('}'));
      }
      const std::string labels = line.substr(labels_begin, c.i - labels_begin);
      REQUIRE(c.eat(' '));
      const std::string number = line.substr(c.i);
      REQUIRE_FALSE(number.empty());
      REQUIRE(std::all_of(number.begin(), number.end(), [](char d) { return d >= '0' && d <= '9'; }));
      REQUIRE_FALSE(current.empty());
      if (p.types[current] == "histogram") {
        CHECK((name == current + "_bucket" || name == current + "_sum" || name == current + "_count"));
      } else {
        CHECK(name == current);
      }
      CHECK(p.samples.emplace(name + labels, std::stoull(number)).second);
    }
  }
  return p;
}

}  // namespace

TEST_CASE("Prometheus text: valid lines, documented names, histogram invariants, escaping") {
  fs::FsMetrics a("/", {.files_account = true});
  read_ok(a, 2, 6, 150);
  read_ok(a, 2, 70000, 5000);
  a.record(Fop::kRead, 2, FopOutcome::kError, 0, 100);
  a.record(Fop::kLookup, 1, FopOutcome::kOk, 0, 40);
  a.record(Fop::kOpen, 2, FopOutcome::kOk, 0, 1);
  fs::FsMetrics b("/we\"ird\\id\n");
  backend::BackendMetrics bm;
  bm.record_read(4096, std::chrono::milliseconds(30), true);
  bm.record_read(0, std::chrono::milliseconds(3), false);
  backend::CacheMetrics cm;
  cm.chunk_reads = 10;
  cm.cache_hits = 4;
  cm.prefetch_workers = 2;
  std::vector<backend::BlobCacheState> blobs(1);
  blobs[0].blob_id = "abc";
  blobs[0].cached = true;
  blobs[0].ready_chunks = 2;
  blobs[0].chunk_count = 5;

  const std::string text = daemon::prometheus_text({&a, &b}, {{"/", "registry", &bm}}, {{"/", &cm, blobs}});
  const PromParse p = parse_prometheus(text);

  auto value = [&](const std::string& series) {
    INFO(series);
    auto it = p.samples.find(series);
    REQUIRE(it != p.samples.end());
    return it->second;
  };
  CHECK(p.types.at("nydusd_fop_hits_total") == "counter");
  CHECK(p.types.at("nydusd_read_size_bytes") == "histogram");
  CHECK(p.types.at("nydusd_open_files") == "gauge");
  CHECK(value(R"(nydusd_fop_hits_total{id="/",op="read"})") == 2);
  CHECK(value(R"(nydusd_fop_errors_total{id="/",op="read"})") == 1);
  CHECK(value(R"(nydusd_fop_hits_total{id="/",op="lookup"})") == 1);
  CHECK(value(R"(nydusd_fop_hits_total{id="/",op="batch_forget"})") == 0);
  CHECK(value(R"(nydusd_fop_latency_microseconds_total{id="/",op="read"})") == 5250);
  CHECK(value(R"(nydusd_read_bytes_total{id="/"})") == 70006);
  CHECK(value(R"(nydusd_open_files{id="/"})") == 1);
  CHECK(value(R"(nydusd_fs_switch{id="/",switch="files_account"})") == 1);
  CHECK(value(R"(nydusd_fs_switch{id="/",switch="access_pattern"})") == 0);
  CHECK(value(R"(nydusd_read_size_bytes_bucket{id="/",le="1023"})") == 2);
  CHECK(value(R"(nydusd_read_size_bytes_bucket{id="/",le="65535"})") == 2);
  CHECK(value(R"(nydusd_read_size_bytes_bucket{id="/",le="131071"})") == 3);
  CHECK(value(R"(nydusd_read_size_bytes_bucket{id="/",le="+Inf"})") == 3);
  CHECK(value(R"(nydusd_read_size_bytes_count{id="/"})") == 3);
  CHECK(value(R"(nydusd_read_size_bytes_sum{id="/"})") == 70006);
  CHECK(value(R"(nydusd_read_latency_microseconds_bucket{id="/",le="200"})") == 2);
  CHECK(value(R"(nydusd_read_latency_microseconds_bucket{id="/",le="20000"})") == 3);
  CHECK(value(R"(nydusd_read_latency_microseconds_sum{id="/"})") == 5250);
  CHECK(value(R"(nydusd_fop_hits_total{id="/we\"ird\\id\n",op="read"})") == 0);
  CHECK(value(R"(nydusd_backend_read_count_total{id="/",backend_type="registry"})") == 2);
  CHECK(value(R"(nydusd_backend_read_errors_total{id="/",backend_type="registry"})") == 1);
  CHECK(value(R"(nydusd_backend_read_bytes_total{id="/",backend_type="registry"})") == 4096);
  CHECK(value(R"(nydusd_backend_read_latency_milliseconds_bucket{id="/",backend_type="registry",le="1"})") == 0);
  CHECK(value(R"(nydusd_backend_read_latency_milliseconds_bucket{id="/",backend_type="registry",le="20"})") == 1);
  CHECK(value(R"(nydusd_backend_read_latency_milliseconds_bucket{id="/",backend_type="registry",le="50"})") == 2);
  CHECK(value(R"(nydusd_backend_read_latency_milliseconds_sum{id="/",backend_type="registry"})") == 33);
  CHECK(value(R"(nydusd_backend_read_size_bytes_bucket{id="/",backend_type="registry",le="1023"})") == 1);
  CHECK(value(R"(nydusd_backend_read_latency_milliseconds_by_size_total{id="/",backend_type="registry",size_le="16383"})") == 30);
  CHECK(value(R"(nydusd_backend_reads_by_size_latency_total{id="/",backend_type="registry",size_le="16383",latency_le="50"})") == 1);
  CHECK(value(R"(nydusd_blobcache_reads_total{id="/"})") == 10);
  CHECK(value(R"(nydusd_blobcache_hits_total{id="/"})") == 4);
  CHECK(value(R"(nydusd_blobcache_entries{id="/"})") == 2);
  CHECK(value(R"(nydusd_blobcache_prefetch_workers{id="/"})") == 2);
  CHECK(value(R"(nydusd_blobcache_data_all_ready{id="/"})") == 0);
  CHECK(value(R"(nydusd_blobcache_blob_ready_chunks{id="/",blob="abc"})") == 2);
  CHECK(value(R"(nydusd_blobcache_blob_chunks{id="/",blob="abc"})") == 5);

  // Histogram invariants for every histogram series: 8 buckets, cumulative
  // in le order, +Inf equal to _count.
  size_t histograms = 0;
  for (const auto& [family, type] : p.types) {
    if (type != "histogram") continue;
    std::map<std::string, std::vector<std::pair<double, uint64_t>>> series_buckets;  // labels -> (le, value)
    const std::string prefix = family + "_bucket{";
    for (const auto& [series, v] : p.samples) {
      if (series.rfind(prefix, 0) != 0) continue;
      const auto le = series.find(",le=\"");
      REQUIRE(le != std::string::npos);
      const std::string labels = series.substr(prefix.size(), le - prefix.size());
      const std::string bound = series.substr(le + 5, series.size() - le - 5 - 2);
      const double x = bound == "+Inf" ? 1e300 : std::stod(bound);
      series_buckets[labels].emplace_back(x, v);
      if (bound == "+Inf") CHECK(v == value(family + "_count{" + labels + "}"));
    }
    for (auto& [labels, values] : series_buckets) {
      INFO(family << "{" << labels << "}");
      ++histograms;
      CHECK(values.size() == 8);
      std::sort(values.begin(), values.end());
      for (size_t i = 1; i < values.size(); ++i) CHECK(values[i - 1].second <= values[i].second);
    }
  }
  CHECK(histograms == 2 * 2 + 2);  // two fs histograms x 2 mounts, two backend ones

  // No sources: no output.
  CHECK(daemon::prometheus_text({}, {}, {}).empty());
}
