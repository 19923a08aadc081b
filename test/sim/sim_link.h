// SimLink: one direction of a simulated network link (a node's uplink or
// downlink, the registry's uplink). Transfers through it are served first
// come, first served at its bandwidth: a transfer from A to B starts when
// both A's uplink and B's downlink are free and runs at the slower of the
// two. (TCP shares a link among flows instead; the FIFO model gives the
// same time for the last byte of a batch and earlier times for the first
// ones, and it is what makes a simulation of 10,000 nodes cheap.)
//
// Not thread-safe (the simulator is single-threaded).
#pragma once

#include <algorithm>
#include <cstdint>

namespace nydus::sim {

struct SimLink {
  double bytes_per_s = 0;
  double free_at = 0;  // the link is busy until then
};

// Reserves both links for `bytes` from `earliest` on; returns when the last
// byte arrives.
inline double transfer(SimLink& from, SimLink& to, uint64_t bytes, double earliest) {
  const double start = std::max({earliest, from.free_at, to.free_at});
  const double end = start + static_cast<double>(bytes) / std::min(from.bytes_per_s, to.bytes_per_s);
  from.free_at = end;
  to.free_at = end;
  return end;
}

}  // namespace nydus::sim
