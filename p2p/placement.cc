#include "p2p/placement.h"

#include <algorithm>

#include "p2p/rendezvous.h"

namespace nydus::p2p {
namespace {

// A unit's order: the view's cached one, or computed into `own`.
const std::vector<size_t>& order_in(const MemberView& view, const std::vector<std::string>& members,
                                    std::string_view digest, uint64_t unit, std::vector<size_t>& own) {
  if (view.order)
    if (const std::vector<size_t>* cached = (*view.order)(members, digest, unit)) return *cached;
  own = rendezvous_order(members, digest, unit);
  return own;
}

}  // namespace

std::vector<std::string> unit_owners(const MemberView& view, std::string_view digest, uint64_t unit, size_t limit) {
  std::vector<std::string> out;
  std::vector<size_t> own;
  for (size_t i : order_in(view, view.members, digest, unit, own)) {
    if (out.size() >= limit) break;
    const std::string& m = view.members[i];
    if (m == view.self || view.usable(m)) out.push_back(m);
  }
  return out;
}

std::string previous_unit_owner(const MemberView& view, std::string_view digest, uint64_t unit) {
  if (!view.previous || view.previous->empty()) return "";
  std::vector<size_t> own;
  const std::string& before = (*view.previous)[order_in(view, *view.previous, digest, unit, own).front()];
  if (before == view.self || !view.usable(before)) return "";
  auto now = unit_owners(view, digest, unit, 1);
  if (!now.empty() && now.front() == before) return "";
  if (!std::binary_search(view.members.begin(), view.members.end(), before)) return "";  // gone
  return before;
}

MissPlan plan_miss(const MemberView& view, std::string_view digest, uint64_t unit, uint32_t max_candidates,
                   bool just_started) {
  MissPlan plan;
  const std::vector<std::string> owners = unit_owners(view, digest, unit, std::max<uint32_t>(max_candidates, 2));
  for (size_t i = 0; i < owners.size() && i < max_candidates; ++i) {
    if (owners[i] == view.self) break;  // this node owns it next: the origin
    plan.peers.push_back(owners[i]);
  }
  // Asked even when this node is the new owner: the unit it just took over
  // is likely held by the previous one, one LAN round trip instead of an
  // origin fetch.
  plan.previous_holder = previous_unit_owner(view, digest, unit);
  if (just_started && !view.previous && plan.peers.empty() && owners.size() >= 2 && owners[0] == view.self)
    plan.next_holder = owners[1];
  return plan;
}

std::string fallback_owner(const MemberView& view, std::string_view digest, uint64_t unit, const std::string& asker,
                           uint32_t max_candidates) {
  std::vector<std::string> owners = unit_owners(view, digest, unit, max_candidates + 1);
  std::erase(owners, asker);
  if (owners.size() < 2 || owners[0] != view.self) return "";
  return owners[1];
}

}  // namespace nydus::p2p
