// p2p-sim: runs one scenario of the P2P design on a simulated cluster and
// prints a CSV header and one row (test/sim/cluster_sim.h; the sweeps and
// charts: test/sim/sweep.py; results: p2p/README.md "At scale").
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "test/sim/access_trace.h"
#include "test/sim/cluster_sim.h"

using namespace nydus;

int main(int argc, char** argv) {
  sim::Scenario s;
  std::string trace_path;
  bool whole_image = false;
  bool no_header = false;
  uint64_t whole_read_kib = 1024;
  CLI::App app{"p2p-sim: N nodes start one image together through the embedded P2P backend, simulated.\n"
               "Prints a CSV header and one row. Ratios are against one node alone on the same links."};
  app.add_option("--nodes", s.nodes, "nodes in the cluster")->check(CLI::Range(size_t{1}, size_t{1000000}))
      ->capture_default_str();
  app.add_option("--trace", trace_path, "access trace CSV (GET /api/v1/metrics/backend/reads); default: the python3 -V "
                                        "start shipped with the binary");
  app.add_flag("--whole-image", whole_image, "read every byte of the trace's blobs instead of the trace");
  app.add_option("--whole-read-kib", whole_read_kib, "read size of --whole-image")->capture_default_str();
  app.add_option("--registry-gbit", s.registry_gbit, "registry uplink")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--registry-latency-ms", s.registry_latency_ms, "registry time to first byte per request")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--node-gbit", s.node_gbit, "each node's uplink and downlink")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--hop-latency-ms", s.hop_latency_ms, "one-way latency between nodes")->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--stagger-s", s.stagger_s, "node starts spread uniformly over this many seconds")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--die-fraction", s.die_fraction, "fraction of nodes that die mid-pull")->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--die-at-s", s.die_at_s, "when they die (< 0: half the single-node time)")->capture_default_str();
  app.add_option("--bad-fraction", s.bad_fraction, "fraction of nodes whose uploads fail verification")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  app.add_option("--stale-fraction", s.stale_fraction, "fraction of nodes with a DNS answer lacking the newest nodes")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  app.add_option("--stale-new-fraction", s.stale_new_fraction, "the newest nodes stale nodes do not see")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  app.add_option("--stale-s", s.stale_s, "how long stale answers last")->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--unit-size", s.p2p.unit_size, "p2p.unit_size")->capture_default_str();
  app.add_option("--granule-size", s.p2p.granule_size, "p2p.granule_size")->capture_default_str();
  app.add_option("--max-candidates", s.p2p.max_candidates, "p2p.max_candidates")->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  app.add_option("--spread-uploads", s.p2p.spread_uploads, "p2p.spread_uploads (0 = no spreading)")
      ->capture_default_str();
  app.add_option("--peer-timeout-ms", s.p2p.peer_timeout_ms, "p2p.peer_timeout_ms")->capture_default_str();
  app.add_option("--peer-stall-ms", s.p2p.peer_stall_ms, "p2p.peer_stall_ms")->capture_default_str();
  app.add_option("--dns-refresh-ms", s.p2p.dns_refresh_ms, "p2p.dns_refresh_ms")->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_option("--fetch-attempts", s.fetch_attempts, "tries for bytes that fail verification")
      ->check(CLI::Range(1u, 100u))->capture_default_str();
  app.add_option("--send-buffer-kib", s.send_buffer_kib,
                 "bytes an upload has in the sender's socket when the sender sees it end (TCP send buffer)")
      ->capture_default_str();
  app.add_option("--seed", s.seed, "random seed (start times, which nodes fail)")->capture_default_str();
  app.add_flag("--no-header", no_header, "print the row only");
  CLI11_PARSE(app, argc, argv);
  if (s.p2p.granule_size == 0 || s.p2p.unit_size == 0 || s.p2p.unit_size % s.p2p.granule_size != 0) {
    std::cerr << "p2p-sim: --unit-size must be a positive multiple of --granule-size\n";
    return 2;
  }

  auto trace = trace_path.empty() ? sim::parse_access_trace(sim::builtin_python_start_trace())
                                  : sim::load_access_trace(trace_path);
  if (!trace.ok()) {
    std::cerr << "p2p-sim: " << trace.status().message() << "\n";
    return 2;
  }
  if (whole_image) *trace = sim::whole_image_trace(*trace, whole_read_kib << 10);

  const auto began = std::chrono::steady_clock::now();
  const sim::SimResult r = sim::simulate(s, *trace);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  if (!no_header)
    std::printf(
        "nodes,trace,registry_gbit,node_gbit,stagger_s,die_fraction,bad_fraction,stale_fraction,spread_uploads,"
        "unique_bytes,origin_bytes,origin_bytes_ratio,origin_requests,single_node_s,p50_s,p99_s,max_s,"
        "p50_completion_ratio,p99_completion_ratio,max_completion_ratio,max_upload_ratio,bad_bytes_verified,"
        "origin_fallbacks,peer_failures,redirects,waits,failed_reads,died,completed,events,wall_s\n");
  std::printf("%zu,%s,%g,%g,%g,%g,%g,%g,%u,%llu,%llu,%.4f,%llu,%.4f,%.4f,%.4f,%.4f,%.3f,%.3f,%.3f,%.3f,%llu,%llu,%llu,"
              "%llu,%llu,%llu,%zu,%zu,%llu,%.2f\n",
              r.nodes, whole_image ? "whole-image" : (trace_path.empty() ? "python-start" : "file"), s.registry_gbit,
              s.node_gbit, s.stagger_s, s.die_fraction, s.bad_fraction, s.stale_fraction, s.p2p.spread_uploads,
              static_cast<unsigned long long>(r.unique_bytes), static_cast<unsigned long long>(r.origin_bytes),
              ratio(static_cast<double>(r.origin_bytes), static_cast<double>(r.unique_bytes)),
              static_cast<unsigned long long>(r.origin_requests), r.single_node_s, r.p50_s, r.p99_s, r.max_s,
              ratio(r.p50_s, r.single_node_s), ratio(r.p99_s, r.single_node_s), ratio(r.max_s, r.single_node_s),
              ratio(r.max_upload_bytes, r.mean_upload_bytes), static_cast<unsigned long long>(r.bad_bytes),
              static_cast<unsigned long long>(r.origin_fallbacks), static_cast<unsigned long long>(r.peer_failures),
              static_cast<unsigned long long>(r.redirects), static_cast<unsigned long long>(r.waits),
              static_cast<unsigned long long>(r.failed_reads), r.died,
              r.completed, static_cast<unsigned long long>(r.events), wall);
  return r.failed_reads == 0 ? 0 : 1;
}
