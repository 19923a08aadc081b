// Who to ask for a placement unit, from one node's view of the cluster:
// the decisions the asker (PeerBackend) and the owner (PeerServer) make on
// a miss, as pure functions of that view, so that the daemon and the
// scale simulator (test/sim) run the same code.
//
// Pure functions; thread-safe as long as the view's data is not changed
// during a call.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace nydus::p2p {

// The rendezvous order of a unit over a member list (p2p/rendezvous.h);
// a view may carry a cache of it (the simulator's thousands of nodes share
// a few lists), else it is computed. The cache's answer must stay valid
// during the call that asked for it.
using OrderFn = std::function<const std::vector<size_t>*(const std::vector<std::string>& members,
                                                         std::string_view digest, uint64_t unit)>;

// One node's view at one moment.
struct MemberView {
  const std::vector<std::string>& members;    // sorted, this node included when it is a member
  const std::vector<std::string>* previous;   // the list before the last change, null once it settled
  const std::string& self;
  // Whether a peer may be asked now (not in a failure backoff).
  const std::function<bool(const std::string&)>& usable;
  const OrderFn* order = nullptr;             // null: rendezvous_order
};

// How long after its start an owner detours askers of bytes it lacks to
// the next owner (fallback_owner; PeerServer).
inline constexpr std::chrono::seconds kOwnerDetourWindow{60};

// The usable members in rendezvous order for unit `unit` of `digest`, at
// most `limit`; this node counts as usable.
std::vector<std::string> unit_owners(const MemberView& view, std::string_view digest, uint64_t unit, size_t limit);

// Right after a membership change: the unit's owner under the previous
// list when it is another usable member than the current owner (it likely
// holds the unit), else "".
std::string previous_unit_owner(const MemberView& view, std::string_view digest, uint64_t unit);

// What an asker that lacks bytes of a unit does: asks `previous_holder`
// (when set) for held bytes only, then `peers` in order (the owners ahead
// of this node, at most max_candidates in all), and the origin when they
// all fail. Empty peers: this node is the unit's first usable owner; it
// asks previous_holder and, `just_started` (within kOwnerDetourWindow of
// its start, when its first member list has no previous one to tell who
// owned the unit before it joined), `next_holder`, the unit's next owner,
// which served the unit while this node was not a member yet; then the
// origin.
struct MissPlan {
  std::string previous_holder;
  std::string next_holder;
  std::vector<std::string> peers;
};
MissPlan plan_miss(const MemberView& view, std::string_view digest, uint64_t unit, uint32_t max_candidates,
                   bool just_started);

// The owner's detour just after it started (PeerServer): when this node is
// the unit's first owner and does not hold the asked bytes, the next owner
// other than `asker` (which likely fetched them while this node was not
// answering yet); "" when there is none or this node is not the owner.
std::string fallback_owner(const MemberView& view, std::string_view digest, uint64_t unit, const std::string& asker,
                           uint32_t max_candidates);

}  // namespace nydus::p2p
