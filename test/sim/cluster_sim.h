// ClusterSim: N nodes reading one access trace at once through the P2P
// design, on a simulated network and clock.
//
// What is real: the decisions. Each simulated node keeps its own
// p2p::PeerHealth (failure backoffs and probes), p2p::HotUnits (spreading
// a hot unit's uploads to holders), and decides whom to ask with
// p2p::plan_miss / p2p::fallback_owner (p2p/placement.h) over its own
// member list, with the daemon's P2pConfig values (unit and granule size,
// max_candidates, spread_uploads, timeouts, backoffs) and the owner's
// detour window; these are the functions the daemon's PeerBackend and
// PeerServer call.
// What is modelled: the network (sim_link.h: FIFO links with bandwidth,
// a one-way latency per hop, a registry with a request latency), the piece
// store (holdings.h: readiness per range, no disk time), the clock, DNS
// (a node appears in answers once started, published once a second; each
// node resolves at start and every dns_refresh_ms), and
// failures (a dead node answers nothing: askers wait peer_timeout_ms, or
// peer_stall_ms after the last byte when it dies mid-transfer; a bad node's
// bytes fail verification at the asker, which demotes it and fetches again,
// up to fetch_attempts). Reads of one node run one after another, with no
// time between them (a start-up reads mostly in sequence).
//
// Not thread-safe; one run at a time per object.
#pragma once

#include <cstdint>
#include <string>

#include "p2p/p2p_config.h"
#include "test/sim/access_trace.h"

namespace nydus::sim {

struct Scenario {
  size_t nodes = 10;
  double registry_gbit = 1;         // the registry's uplink
  double registry_latency_ms = 10;  // from request to first byte at the registry
  double node_gbit = 10;            // each node's uplink and downlink
  double hop_latency_ms = 0.1;      // one way between two nodes (RTT = 2x)
  double stagger_s = 0;             // node starts spread uniformly over this
  double die_fraction = 0;          // nodes that die ...
  double die_at_s = -1;             // ... at this time (< 0: half the single-node time after the first start)
  double bad_fraction = 0;          // nodes whose uploads fail verification
  double stale_fraction = 0;        // nodes whose DNS answer lacks the newest nodes ...
  double stale_new_fraction = 0.1;  // ... (this fraction of all, the last to join) ...
  double stale_s = 30;              // ... for this long
  uint32_t fetch_attempts = 3;      // the chunk reader's tries for bytes that fail verification (P2P on)
  uint64_t send_buffer_kib = 512;   // an upload ends for its sender this much before the asker has it
  uint64_t seed = 1;
  p2p::P2pConfig p2p;               // the daemon's defaults unless changed
};

struct SimResult {
  size_t nodes = 0;
  uint64_t unique_bytes = 0;
  uint64_t origin_bytes = 0;
  uint64_t origin_requests = 0;
  double single_node_s = 0;        // one node alone, same links
  double p50_s = 0, p99_s = 0, max_s = 0;  // completion (start to last read) of the nodes that lived
  double max_upload_bytes = 0, mean_upload_bytes = 0;
  uint64_t bad_bytes = 0;          // bytes received that failed verification
  uint64_t origin_fallbacks = 0;   // reads an owner should have served that went to the origin
  uint64_t peer_failures = 0;      // requests to peers that failed (dead, timed out)
  uint64_t redirects = 0;          // hot-unit redirects sent
  uint64_t waits = 0;              // askers told to come back later
  uint64_t failed_reads = 0;       // reads that could not be completed
  size_t died = 0;
  size_t completed = 0;
  uint64_t events = 0;
};

// Runs the scenario (and, for the ratios, the same links with one node).
SimResult simulate(const Scenario& scenario, const AccessTrace& trace);

}  // namespace nydus::sim
