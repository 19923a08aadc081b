// The simulator's pieces (holdings, traces) and invariants of its runs.
#include <catch2/catch.hpp>

#include "test/sim/access_trace.h"
#include "test/sim/cluster_sim.h"
#include "test/sim/holdings.h"

using namespace nydus::sim;

namespace {

const std::string kA(64, 'a'), kB(64, 'b');

AccessTrace two_blob_trace() {
  std::string csv = "t_us,blob,blob_size,offset,length,chunks\n";
  for (int i = 0; i < 20; ++i) csv += "0," + kA + ",20000000," + std::to_string(i * 900000) + ",300000,1\n";
  for (int i = 0; i < 5; ++i) csv += "0," + kB + ",3000000," + std::to_string(i * 500000) + ",100000,1\n";
  auto t = parse_access_trace(csv);
  REQUIRE(t.ok());
  return *t;
}

}  // namespace

TEST_CASE("Holdings: ready time of a range is its latest part; gaps are never", "[sim]") {
  Holdings h;
  CHECK(h.ready_at(0, 10) == kNever);
  h.add(0, 100, 1.0);
  h.add(50, 200, 2.0);  // only [100, 200) is new
  CHECK(h.ready_at(0, 100) == 1.0);
  CHECK(h.ready_at(10, 150) == 2.0);
  CHECK(h.ready_at(150, 201) == kNever);
  CHECK(h.missing(0, 300) == std::vector<std::pair<uint64_t, uint64_t>>{{200, 300}});
  h.add(300, 400, 0.5);
  CHECK(h.missing(0, 500) == std::vector<std::pair<uint64_t, uint64_t>>{{200, 300}, {400, 500}});
  CHECK(h.ready_at(300, 400) == 0.5);
}

TEST_CASE("access trace: columns by name, every row checked, errors name the line", "[sim]") {
  auto ok = parse_access_trace("offset,length,blob,blob_size\n10,5," + kA + ",100\n0,100," + kA + ",100\n");
  REQUIRE(ok.ok());
  CHECK(ok->blobs.size() == 1);
  CHECK(ok->reads.size() == 2);
  CHECK(ok->unique_bytes() == 100);
  CHECK(whole_image_trace(*ok, 30).reads.size() == 4);
  auto err = [](const std::string& csv) { return parse_access_trace(csv).status().message(); };
  CHECK_THAT(err("a,b\n"), Catch::Contains("needs the columns"));
  CHECK_THAT(err("blob,blob_size,offset,length\nxyz,100,0,10\n"), Catch::Contains("line 2"));
  CHECK_THAT(err("blob,blob_size,offset,length\n" + kA + ",100,95,10\n"), Catch::Contains("not inside the blob"));
  CHECK_THAT(err("blob,blob_size,offset,length\n" + kA + ",100,0,0\n"), Catch::Contains("not inside the blob"));
  CHECK_THAT(err("blob,blob_size,offset,length\n" + kA + ",100,0,-1\n"), Catch::Contains("decimal"));
  CHECK_THAT(err("blob,blob_size,offset,length\n" + kA + ",100,0,10\n" + kA + ",200,0,10\n"),
             Catch::Contains("had size 100"));
  CHECK_THAT(err("blob,blob_size,offset,length\n"), Catch::Contains("no reads"));
}

TEST_CASE("the shipped python start trace parses", "[sim]") {
  auto t = parse_access_trace(builtin_python_start_trace());
  REQUIRE(t.ok());
  CHECK(t->reads.size() > 5);
  CHECK(t->unique_bytes() > 1000000);
}

TEST_CASE("simulate: one node is the baseline; a cluster shares what it fetched", "[sim]") {
  const AccessTrace trace = two_blob_trace();
  Scenario s;
  s.nodes = 1;
  SimResult one = simulate(s, trace);
  CHECK(one.completed == 1);
  CHECK(one.single_node_s == Approx(one.max_s));
  CHECK(one.origin_bytes >= one.unique_bytes);
  CHECK(one.origin_bytes < one.unique_bytes + 50 * 4096);  // granule rounding only
  CHECK(one.max_upload_bytes == 0);

  s.nodes = 50;
  SimResult many = simulate(s, trace);
  CHECK(many.completed == 50);
  CHECK(many.failed_reads == 0);
  CHECK(many.origin_bytes == one.origin_bytes);  // each byte from the origin once
  CHECK(many.mean_upload_bytes > 0.9 * static_cast<double>(one.origin_bytes) * 49 / 50);
  CHECK(many.p99_s >= many.p50_s);
  // Deterministic for a seed.
  SimResult again = simulate(s, trace);
  CHECK(again.events == many.events);
  CHECK(again.p99_s == many.p99_s);
}

TEST_CASE("simulate: dead nodes cost time, not reads; bad bytes are caught and refetched", "[sim]") {
  const AccessTrace trace = two_blob_trace();
  Scenario s;
  s.nodes = 200;
  s.die_fraction = 0.1;
  SimResult dying = simulate(s, trace);
  CHECK(dying.died == 20);
  CHECK(dying.completed == 180);
  CHECK(dying.failed_reads == 0);
  CHECK(dying.peer_failures > 0);

  s.die_fraction = 0;
  s.bad_fraction = 0.05;
  SimResult bad = simulate(s, trace);
  CHECK(bad.bad_bytes > 0);
  CHECK(bad.failed_reads == 0);
  CHECK(bad.completed == 200);

  // Without retries a bad answer fails the read: the counter can move.
  s.fetch_attempts = 1;
  CHECK(simulate(s, trace).failed_reads > 0);
}

TEST_CASE("simulate: stale member lists fetch moved units from the origin again", "[sim]") {
  const AccessTrace trace = two_blob_trace();
  Scenario s;
  s.nodes = 200;
  SimResult fresh = simulate(s, trace);
  s.stale_fraction = 0.5;
  s.stale_new_fraction = 0.2;
  SimResult stale = simulate(s, trace);
  CHECK(stale.origin_bytes > fresh.origin_bytes);
  CHECK(stale.failed_reads == 0);
}
