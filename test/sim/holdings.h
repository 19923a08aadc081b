// Holdings: which bytes of one blob a simulated node has, and from when:
// the piece store's readiness map (p2p/piece_store.h) with a time per
// range, so that bytes still arriving (an origin fetch in flight) are
// "held from time T". Ranges are kept disjoint; adding never moves an
// existing range's time (the first fetch of a byte is the one that counts,
// as the store's single-flight makes it).
//
// Not thread-safe (the simulator is single-threaded).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <utility>
#include <vector>

namespace nydus::sim {

inline constexpr double kNever = std::numeric_limits<double>::infinity();

class Holdings {
 public:
  // When all of [b, e) is there: the latest time of the ranges covering
  // it, or kNever when a byte of it is not held nor arriving.
  double ready_at(uint64_t b, uint64_t e) const {
    double latest = 0;
    bool gap = false;
    walk(b, e, [&](double ready) { latest = std::max(latest, ready); }, [&](uint64_t, uint64_t) { gap = true; });
    return gap ? kNever : latest;
  }

  // The parts of [b, e) not held nor arriving, in order.
  std::vector<std::pair<uint64_t, uint64_t>> missing(uint64_t b, uint64_t e) const {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    walk(b, e, [](double) {}, [&](uint64_t gb, uint64_t ge) { out.emplace_back(gb, ge); });
    return out;
  }

  // [b, e) is there from `ready` on, where it was not already.
  void add(uint64_t b, uint64_t e, double ready) {
    for (const auto& [gb, ge] : missing(b, e)) ranges_.emplace(gb, std::make_pair(ge, ready));
  }

  void clear() { ranges_.clear(); }

 private:
  // Calls held(ready time) for each range overlapping [b, e) and gap(gb, ge)
  // for each part of [b, e) no range covers, in order.
  template <typename Held, typename Gap>
  void walk(uint64_t b, uint64_t e, Held held, Gap gap) const {
    uint64_t at = b;
    auto it = ranges_.upper_bound(b);
    if (it != ranges_.begin()) --it;
    for (; it != ranges_.end() && at < e; ++it) {
      const uint64_t rb = it->first, re = it->second.first;
      if (re <= at) continue;
      if (rb > at) gap(at, std::min(rb, e));
      if (rb < e) held(it->second.second);
      at = std::max(at, re);
    }
    if (at < e) gap(at, e);
  }

  std::map<uint64_t, std::pair<uint64_t, double>> ranges_;  // begin -> (end, ready time)
};

}  // namespace nydus::sim
