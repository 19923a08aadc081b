// InflightOps: what GET /api/v1/metrics/inflight reports about the FUSE
// workers' requests.
#include <ctime>
#include <atomic>
#include <chrono>
#include <barrier>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "daemon/inflight.h"

using nydus::daemon::InflightOp;
using nydus::daemon::InflightOps;

TEST_CASE("inflight: idle tracker reports nothing, a busy worker one entry each") {
  InflightOps ops;
  CHECK(ops.snapshot().empty());

  constexpr int kWorkers = 4;
  std::barrier entered(kWorkers + 1);
  std::barrier leave(kWorkers + 1);
  std::vector<std::thread> workers;
  const uint64_t before = static_cast<uint64_t>(std::time(nullptr));
  for (int i = 0; i < kWorkers; ++i) {
    workers.emplace_back([&, i] {
      InflightOps::note_unique(1000 + i);
      {
        InflightOps::Scope scope(&ops, 15 /* FUSE_READ */, 100 + i);
        entered.arrive_and_wait();
        leave.arrive_and_wait();
      }
      // A later request without a noted id reports 0, not the stale one.
      InflightOps::Scope again(&ops, 1, 7);
      auto now = ops.snapshot();
      bool found = false;
      for (const auto& op : now) found |= op.inode == 7 && op.unique == 0;
      CHECK(found);
    });
  }
  entered.arrive_and_wait();
  std::vector<InflightOp> busy = ops.snapshot();
  const uint64_t after = static_cast<uint64_t>(std::time(nullptr));
  REQUIRE(busy.size() == kWorkers);
  std::vector<bool> seen(kWorkers);
  for (const auto& op : busy) {
    CHECK(op.opcode == 15);
    REQUIRE(op.inode >= 100);
    REQUIRE(op.inode < 100 + kWorkers);
    CHECK(op.unique == 1000 + (op.inode - 100));
    CHECK(op.timestamp_secs >= before);
    CHECK(op.timestamp_secs <= after);
    seen[op.inode - 100] = true;
  }
  for (bool s : seen) CHECK(s);
  auto json = nlohmann::json::parse(InflightOps::to_json(busy));
  REQUIRE(json.is_array());
  CHECK(json[0].contains("inode"));
  CHECK(json[0].contains("opcode"));
  CHECK(json[0].contains("unique"));
  CHECK(json[0].contains("timestamp_secs"));
  leave.arrive_and_wait();
  for (auto& w : workers) w.join();
  CHECK(ops.snapshot().empty());
}

TEST_CASE("inflight: a snapshot never mixes two requests of one worker") {
  // Writers publish (inode k, opcode k % 50, unique 3k) as fast as they
  // can; every reported entry must be one of those triples.
  InflightOps ops;
  std::atomic<bool> stop{false};
  std::atomic<int> started{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 3; ++w) {
    writers.emplace_back([&, w] {
      started.fetch_add(1);
      for (uint64_t k = 1 + w * 1'000'000; !stop.load(std::memory_order_relaxed); ++k) {
        InflightOps::note_unique(3 * k);
        InflightOps::Scope scope(&ops, static_cast<uint32_t>(k % 50), k);
        for (volatile int spin = 0; spin < 2000; spin = spin + 1) {
        }  // a request takes a while
      }
    });
  }
  while (started.load() < 3) std::this_thread::yield();
  // At least 20,000 snapshots, and on until 1,000 entries were seen (or
  // 20 s: a slow sanitizer build on a busy machine).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  size_t entries = 0;
  for (int i = 0; i < 20000 || (entries < 1000 && std::chrono::steady_clock::now() < deadline); ++i) {
    for (const auto& op : ops.snapshot()) {
      ++entries;
      REQUIRE(op.opcode == op.inode % 50);
      REQUIRE(op.unique == 3 * op.inode);
    }
  }
  stop = true;
  for (auto& w : writers) w.join();
  CHECK(entries >= 1000);
}

TEST_CASE("inflight: a null tracker is a no-op") {
  InflightOps::Scope scope(nullptr, 1, 1);  // must not crash
  SUCCEED();
}
