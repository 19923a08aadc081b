// The asker's and owner's placement decisions (p2p/placement.h) and the
// failure backoffs (p2p/peer_health.h), on explicit views and clocks.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

#include "p2p/hot_units.h"
#include "p2p/peer_health.h"
#include "p2p/placement.h"
#include "p2p/rendezvous.h"

using namespace nydus::p2p;

namespace {

std::vector<std::string> members_of(size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) out.push_back("10.0.0." + std::to_string(i + 1) + ":65002");
  std::sort(out.begin(), out.end());
  return out;
}

const std::string kDigest(64, 'a');

// The rendezvous order of the unit as member strings.
std::vector<std::string> order_of(const std::vector<std::string>& members, uint64_t unit) {
  std::vector<std::string> out;
  for (size_t i : rendezvous_order(members, kDigest, unit)) out.push_back(members[i]);
  return out;
}

}  // namespace

TEST_CASE("placement: owners follow rendezvous order and skip unusable peers, never self", "[p2p][placement]") {
  const auto members = members_of(8);
  const auto order = order_of(members, 3);
  std::set<std::string> down{order[0]};
  const std::function<bool(const std::string&)> usable = [&](const std::string& m) { return !down.count(m); };
  const std::string& self = order[1];
  MemberView view{members, nullptr, self, usable};
  CHECK(unit_owners(view, kDigest, 3, 3) == std::vector<std::string>{order[1], order[2], order[3]});
  down.insert(self);  // a node never takes itself out
  CHECK(unit_owners(view, kDigest, 3, 2) == std::vector<std::string>{order[1], order[2]});
}

TEST_CASE("placement: the asker asks the owners ahead of itself, then goes to the origin", "[p2p][placement]") {
  const auto members = members_of(8);
  const auto order = order_of(members, 7);
  const std::function<bool(const std::string&)> all = [](const std::string&) { return true; };
  {
    MemberView view{members, nullptr, order[5], all};
    MissPlan p = plan_miss(view, kDigest, 7, 3, false);
    CHECK(p.peers == std::vector<std::string>{order[0], order[1], order[2]});
    CHECK(p.previous_holder.empty());
  }
  {
    MemberView view{members, nullptr, order[1], all};
    CHECK(plan_miss(view, kDigest, 7, 3, false).peers == std::vector<std::string>{order[0]});
  }
  {
    MemberView view{members, nullptr, order[0], all};
    CHECK(plan_miss(view, kDigest, 7, 3, false).peers.empty());  // the owner fetches itself
    CHECK(plan_miss(view, kDigest, 7, 3, false).next_holder.empty());
    // Just started: the next owner served the unit before this node joined.
    CHECK(plan_miss(view, kDigest, 7, 3, true).next_holder == order[1]);
    CHECK(plan_miss(view, kDigest, 7, 1, true).next_holder == order[1]);
  }
  {
    MemberView view{members, nullptr, order[1], all};
    CHECK(plan_miss(view, kDigest, 7, 3, true).next_holder.empty());  // not the owner: it asks the owner
  }
}

TEST_CASE("placement: after a member joins, the unit's previous owner is asked first, held bytes only",
          "[p2p][placement]") {
  auto before = members_of(8);
  // A unit whose owner changes when a ninth member joins.
  auto after = members_of(9);
  uint64_t moved = UINT64_MAX;
  for (uint64_t u = 0; u < 1000 && moved == UINT64_MAX; ++u)
    if (order_of(after, u)[0] != order_of(before, u)[0]) moved = u;
  REQUIRE(moved != UINT64_MAX);
  const std::string old_owner = order_of(before, moved)[0];
  const std::string new_owner = order_of(after, moved)[0];
  std::set<std::string> down;
  const std::function<bool(const std::string&)> usable = [&](const std::string& m) { return !down.count(m); };
  // The new owner asks the old one before the origin.
  MemberView as_new{after, &before, new_owner, usable};
  MissPlan p = plan_miss(as_new, kDigest, moved, 3, false);
  CHECK(p.peers.empty());
  CHECK(p.previous_holder == old_owner);
  // Not once the change settled, nor when the old owner is out, nor when it left.
  MemberView settled{after, nullptr, new_owner, usable};
  CHECK(plan_miss(settled, kDigest, moved, 3, false).previous_holder.empty());
  down.insert(old_owner);
  CHECK(plan_miss(as_new, kDigest, moved, 3, false).previous_holder.empty());
  down.clear();
  std::vector<std::string> without_old = after;
  std::erase(without_old, old_owner);
  MemberView gone{without_old, &before, new_owner, usable};
  CHECK(previous_unit_owner(gone, kDigest, moved).empty());
  // A unit that did not move has no previous holder to ask.
  uint64_t stayed = 0;
  while (order_of(after, stayed)[0] != order_of(before, stayed)[0]) ++stayed;
  CHECK(previous_unit_owner(as_new, kDigest, stayed).empty());
}

TEST_CASE("placement: the owner's detour goes to the next owner, never back to the asker", "[p2p][placement]") {
  const auto members = members_of(6);
  const auto order = order_of(members, 11);
  const std::function<bool(const std::string&)> all = [](const std::string&) { return true; };
  MemberView as_owner{members, nullptr, order[0], all};
  CHECK(fallback_owner(as_owner, kDigest, 11, order[4], 3) == order[1]);
  CHECK(fallback_owner(as_owner, kDigest, 11, order[1], 3) == order[2]);
  MemberView not_owner{members, nullptr, order[1], all};
  CHECK(fallback_owner(not_owner, kDigest, 11, order[4], 3).empty());
}

TEST_CASE("PeerHealth: backoffs on the given clock, probes bring peers back", "[p2p][health]") {
  using namespace std::chrono_literals;
  PeerHealth h(1000ms, 30000ms);
  const PeerHealth::Clock::time_point t0{};
  CHECK(h.usable("a"));
  CHECK(h.report_failure("a", false, t0) == 1000ms);
  CHECK(h.report_failure("a", false, t0 + 10ms) == 0ms);  // already out: not logged again
  CHECK_FALSE(h.usable("a"));
  CHECK(h.due(t0 + 999ms).empty());
  CHECK(h.due(t0 + 1010ms) == std::vector<std::string>{"a"});
  CHECK_FALSE(h.probed("a", false, t0 + 1010ms));  // no answer: out another backoff
  CHECK(h.due(t0 + 2000ms).empty());
  CHECK(h.probed("a", true, t0 + 2010ms));
  CHECK(h.usable("a"));
  // Bad data: the long backoff, not shortened by a later plain failure.
  h.report_failure("b", true, t0);
  h.report_failure("b", false, t0 + 1ms);
  CHECK(h.due(t0 + 29999ms).empty());
  CHECK(h.due(t0 + 30000ms) == std::vector<std::string>{"b"});
  h.report_success("b");
  CHECK(h.usable("b"));
  CHECK(h.out_count() == 0);
}

TEST_CASE("HotUnits: first askers served, later ones sent to holders of their bytes, else told to wait",
          "[p2p][hot]") {
  const std::string d(64, 'c');
  HotUnits hot(2);
  using K = HotUnits::Admission;
  // The first two askers of the unit are served at once.
  CHECK(hot.admit(d, 0, 0, 100, "a", false).kind == K::kServe);
  CHECK(hot.admit(d, 0, 0, 100, "b", false).kind == K::kServe);
  // At capacity, nobody holds the bytes yet: come back later.
  CHECK(hot.admit(d, 0, 0, 100, "c", false).kind == K::kWait);
  CHECK(hot.waits() == 1);
  // A last resort is always served.
  CHECK(hot.admit(d, 0, 0, 100, "c", true).kind == K::kServe);
  hot.end(d, 0, 0, 100, "c");
  hot.end(d, 0, 0, 100, "a");
  hot.end(d, 0, 0, 100, "");  // b's upload failed: not a holder
  // Idle now but its first askers were served: later ones go to holders, round robin, never to themselves.
  std::set<std::string> sent;
  for (int i = 0; i < 4; ++i) {
    HotUnits::Admission a = hot.admit(d, 0, 10, 90, "z", false);
    REQUIRE(a.kind == K::kRedirect);
    sent.insert(a.holder);
  }
  CHECK(sent == std::set<std::string>{"a", "c"});
  HotUnits::Admission self = hot.admit(d, 0, 0, 100, "a", false);
  CHECK((self.kind == K::kRedirect && self.holder == "c"));
  // Bytes no holder has: served while there is capacity (nobody to send to) ...
  CHECK(hot.admit(d, 0, 50, 150, "y", false).kind == K::kServe);
  CHECK(hot.admit(d, 0, 50, 150, "x", false).kind == K::kServe);
  // ... and waited for when there is none.
  CHECK(hot.admit(d, 0, 50, 150, "w", false).kind == K::kWait);
  // Another unit is independent; spread_uploads 0 never spreads.
  CHECK(hot.admit(d, 1, 0, 100, "a", false).kind == K::kServe);
  HotUnits off(0);
  for (int i = 0; i < 10; ++i) CHECK(off.admit(d, 0, 0, 100, "a", false).kind == K::kServe);
  CHECK(hot.redirects() == 5);
}
