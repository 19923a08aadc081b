// P2P unit tests: rendezvous placement (balance, minimal movement),
// membership (host:port parsing, static and DNS sources, health with a fake
// prober), the peer protocol parsers (blob path, Range, origin, Content-
// Range) and the `p2p` config object in every place it is read from.
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "daemon/config.h"
#include "daemon/p2p_config.h"
#include "p2p/membership.h"
#include "p2p/peer_client.h"
#include "p2p/peer_server.h"
#include "p2p/rate_limiter.h"
#include "p2p/rendezvous.h"
#include "test/test_util.h"

namespace {

using nydus::Code;
using nydus::Result;
using nydus::Status;
using nydus::p2p::Membership;
using nydus::p2p::P2pConfig;
using nydus::test::TempDir;
using json = nlohmann::json;
using namespace std::chrono_literals;

const std::string kDigest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr uint64_t kUnits = 10000;

std::vector<std::string> member_names(size_t n, const std::string& prefix = "10.0.0.") {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) out.push_back(prefix + std::to_string(i + 1) + ":65002");
  return out;
}

// owner[u] = the member (by name) that rendezvous puts first for unit u.
std::vector<std::string> owners(const std::vector<std::string>& members, const std::string& digest = kDigest) {
  std::vector<std::string> out;
  out.reserve(kUnits);
  for (uint64_t u = 0; u < kUnits; ++u) out.push_back(members[nydus::p2p::rendezvous_order(members, digest, u)[0]]);
  return out;
}

std::map<std::string, size_t> count(const std::vector<std::string>& owner) {
  std::map<std::string, size_t> c;
  for (const auto& o : owner) ++c[o];
  return c;
}

// Within 15% of the fair share (about 7 standard deviations at N = 5).
void check_balanced(const std::vector<std::string>& members, const std::vector<std::string>& owner) {
  const auto c = count(owner);
  const double fair = static_cast<double>(kUnits) / members.size();
  for (const auto& m : members) {
    INFO("member " << m << " owns " << (c.count(m) ? c.at(m) : 0) << " of " << kUnits << ", fair share " << fair);
    REQUIRE(c.count(m) == 1);
    CHECK(std::abs(static_cast<double>(c.at(m)) - fair) <= 0.15 * fair);
  }
}

}  // namespace

// ---------------------------------------------------------------- rendezvous

TEST_CASE("rendezvous: weight and order are deterministic and depend on every input", "[p2p][rendezvous]") {
  using nydus::p2p::rendezvous_order;
  using nydus::p2p::rendezvous_weight;
  CHECK(rendezvous_weight("10.0.0.1:65002", kDigest, 7) == rendezvous_weight("10.0.0.1:65002", kDigest, 7));
  CHECK(rendezvous_weight("10.0.0.1:65002", kDigest, 7) != rendezvous_weight("10.0.0.2:65002", kDigest, 7));
  CHECK(rendezvous_weight("10.0.0.1:65002", kDigest, 7) != rendezvous_weight("10.0.0.1:65002", kDigest, 8));
  std::string other = kDigest;
  other[63] = 'e';
  CHECK(rendezvous_weight("10.0.0.1:65002", kDigest, 7) != rendezvous_weight("10.0.0.1:65002", other, 7));

  const auto members = member_names(6);
  for (uint64_t u = 0; u < 200; ++u) CHECK(rendezvous_order(members, kDigest, u) == rendezvous_order(members, kDigest, u));

  // The order is by member, not by position: a shuffled list yields the
  // same members in the same order.
  std::vector<std::string> shuffled = {members[3], members[0], members[5], members[1], members[4], members[2]};
  for (uint64_t u = 0; u < 200; ++u) {
    const auto a = rendezvous_order(members, kDigest, u), b = rendezvous_order(shuffled, kDigest, u);
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) CHECK(members[a[i]] == shuffled[b[i]]);
  }
  // Owners of different blobs are not the same placement.
  CHECK(owners(members) != owners(members, other));
}

TEST_CASE("rendezvous: order is a permutation sorted by weight", "[p2p][rendezvous]") {
  using nydus::p2p::rendezvous_order;
  using nydus::p2p::rendezvous_weight;
  for (size_t n : {0u, 1u, 2u, 7u}) {
    const auto members = member_names(n);
    for (uint64_t u = 0; u < 100; ++u) {
      auto order = rendezvous_order(members, kDigest, u);
      REQUIRE(order.size() == n);
      for (size_t i = 1; i < order.size(); ++i)
        CHECK(rendezvous_weight(members[order[i - 1]], kDigest, u) >= rendezvous_weight(members[order[i]], kDigest, u));
      std::sort(order.begin(), order.end());
      std::vector<size_t> iota(n);
      std::iota(iota.begin(), iota.end(), 0);
      CHECK(order == iota);
    }
  }
}

TEST_CASE("rendezvous: each of N members owns about 1/N of the units", "[p2p][rendezvous]") {
  for (size_t n : {2u, 3u, 5u, 8u}) {
    INFO("N = " << n);
    const auto members = member_names(n);
    check_balanced(members, owners(members));
  }
  // Names that differ in one character only, IPv6 and host names too.
  const std::vector<std::string> mixed = {"[fd00::1]:65002", "[fd00::2]:65002", "node-a:7000", "node-b:7000"};
  check_balanced(mixed, owners(mixed));
}

TEST_CASE("rendezvous: removing a member moves only that member's units", "[p2p][rendezvous]") {
  const auto members = member_names(5);
  const auto before = owners(members);
  for (size_t gone = 0; gone < members.size(); ++gone) {
    std::vector<std::string> rest = members;
    rest.erase(rest.begin() + gone);
    const auto after = owners(rest);
    size_t moved = 0;
    for (uint64_t u = 0; u < kUnits; ++u) {
      if (before[u] == members[gone]) {
        ++moved;
        CHECK(after[u] != members[gone]);
      } else if (after[u] != before[u]) {
        FAIL("unit " << u << " moved from " << before[u] << " to " << after[u] << " when " << members[gone] << " left");
      }
    }
    CHECK(moved == count(before)[members[gone]]);
    check_balanced(rest, after);
  }
}

TEST_CASE("rendezvous: an added member takes about 1/(N+1) of the units, all from others to it",
          "[p2p][rendezvous]") {
  const auto members = member_names(4);
  const auto before = owners(members);
  auto grown = members;
  grown.push_back("10.0.0.99:65002");
  const auto after = owners(grown);
  size_t taken = 0;
  for (uint64_t u = 0; u < kUnits; ++u) {
    if (after[u] == before[u]) continue;
    if (after[u] != "10.0.0.99:65002") FAIL("unit " << u << " moved from " << before[u] << " to " << after[u]);
    ++taken;
  }
  const double fair = static_cast<double>(kUnits) / grown.size();
  INFO("the new member took " << taken << " units, fair share " << fair);
  CHECK(std::abs(static_cast<double>(taken) - fair) <= 0.15 * fair);
  check_balanced(grown, after);
}

// ---------------------------------------------------------------- host:port

TEST_CASE("split_host_port and join_host_port", "[p2p][membership]") {
  using nydus::p2p::join_host_port;
  using nydus::p2p::split_host_port;
  auto v4 = split_host_port("10.1.2.3:65002", "p2p.peers");
  REQUIRE(v4.ok());
  CHECK(v4->first == "10.1.2.3");
  CHECK(v4->second == 65002);
  auto name = split_host_port("peers.default.svc:1", "x");
  REQUIRE(name.ok());
  CHECK(name->first == "peers.default.svc");
  CHECK(name->second == 1);
  auto max = split_host_port("h:65535", "x");
  REQUIRE(max.ok());
  CHECK(max->second == 65535);
  auto v6 = split_host_port("[fd00::1]:7000", "x");
  REQUIRE(v6.ok());
  CHECK(v6->first == "fd00::1");
  CHECK(v6->second == 7000);
  auto any6 = split_host_port("[::]:65002", "x");
  REQUIRE(any6.ok());
  CHECK(any6->first == "::");

  CHECK(join_host_port("10.1.2.3", 65002) == "10.1.2.3:65002");
  CHECK(join_host_port("fd00::1", 7000) == "[fd00::1]:7000");
  for (const std::string& s : std::vector<std::string>{"10.1.2.3:65002", "[fd00::1]:7000", "node:1"}) {
    auto hp = split_host_port(s, "x");
    REQUIRE(hp.ok());
    CHECK(join_host_port(hp->first, hp->second) == s);
  }

  for (const std::string& bad : std::vector<std::string>{"10.1.2.3", "10.1.2.3:", "10.1.2.3:0", "10.1.2.3:65536", "10.1.2.3:99999",
                                "10.1.2.3:123456", "10.1.2.3:80a", "10.1.2.3:abc", "10.1.2.3:-1", "10.1.2.3: 80",
                                ":65002", "[]:65002", "fd00::1:7000", "[fd00::1]", "[fd00::1]7000", "[fd00::1]:",
                                "[fd00::1:7000", "", ":", "a:b:c"}) {
    INFO("input '" << bad << "'");
    auto r = split_host_port(bad, "p2p.what");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kInvalidInput);
    CHECK(r.status().message().find("p2p.what") != std::string::npos);
  }
}

// ---------------------------------------------------------------- Membership

namespace {

// A resolver the test steers: the answer (or a failure) and how often it was
// asked. Called from the membership thread too.
struct FakeDns {
  std::mutex mu;
  std::vector<std::string> answer;
  bool fail = false;
  std::vector<std::string> names;
  Membership::Resolver resolver() {
    return [this](const std::string& name) -> Result<std::vector<std::string>> {
      std::lock_guard<std::mutex> g(mu);
      names.push_back(name);
      if (fail) return Status::io("resolving " + name + ": no answer (test)");
      return answer;
    };
  }
  void set(std::vector<std::string> a, bool f = false) {
    std::lock_guard<std::mutex> g(mu);
    answer = std::move(a);
    fail = f;
  }
};

struct FakeProber {
  std::atomic<bool> up{false};
  std::mutex mu;
  std::vector<std::string> probed;
  Membership::Prober prober() {
    return [this](const std::string& member) {
      std::lock_guard<std::mutex> g(mu);
      probed.push_back(member);
      return up.load();
    };
  }
  size_t probes_of(const std::string& member) {
    std::lock_guard<std::mutex> g(mu);
    return static_cast<size_t>(std::count(probed.begin(), probed.end(), member));
  }
};

P2pConfig static_config() {
  P2pConfig c;
  c.listen = "0.0.0.0:65002";
  c.peers = {"10.0.0.3:65002", "10.0.0.1:65002", "10.0.0.2:65002"};
  c.advertise = "10.0.0.1:65002";
  c.dns_refresh_ms = 3600000;  // the tests call refresh() themselves
  return c;
}

// The static members with health checks fast enough to watch: a failed
// peer is probed after 10 ms, a peer that sent bad data only after 10 min.
std::unique_ptr<Membership> start_probed(FakeProber& probe) {
  P2pConfig c = static_config();
  c.failure_backoff_ms = 10;
  c.bad_data_backoff_ms = 600000;
  auto started = Membership::start(c, nullptr, probe.prober());
  REQUIRE(started.ok());
  return std::move(*started);
}

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 2000ms) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < give_up) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

}  // namespace

TEST_CASE("Membership: static peers with advertise", "[p2p][membership]") {
  auto m = Membership::start(static_config());
  REQUIRE(m.ok());
  CHECK((*m)->self() == "10.0.0.1:65002");
  const auto members = (*m)->members();
  REQUIRE(members);
  CHECK(*members == std::vector<std::string>{"10.0.0.1:65002", "10.0.0.2:65002", "10.0.0.3:65002"});
  for (const auto& p : *members) CHECK((*m)->usable(p));
  CHECK((*m)->previous_members(1h) == nullptr);  // never changed
  (*m)->refresh();                               // no DNS name: nothing happens
  CHECK(*(*m)->members() == *members);
}

TEST_CASE("Membership: static peers are normalized and deduplicated", "[p2p][membership]") {
  P2pConfig c = static_config();
  c.peers = {"[fd00::2]:65002", "10.0.0.1:65002", "10.0.0.1:65002", "[fd00::1]:65002"};
  auto m = Membership::start(c);
  REQUIRE(m.ok());
  CHECK(*(*m)->members() == std::vector<std::string>{"10.0.0.1:65002", "[fd00::1]:65002", "[fd00::2]:65002"});
}

TEST_CASE("Membership: advertise may be IPv6 and need not be in peers", "[p2p][membership]") {
  P2pConfig c = static_config();
  c.advertise = "[fd00::9]:65002";
  auto m = Membership::start(c);
  REQUIRE(m.ok());
  CHECK((*m)->self() == "[fd00::9]:65002");
}

TEST_CASE("Membership: self from a concrete listen address", "[p2p][membership]") {
  P2pConfig c = static_config();
  c.advertise.clear();
  c.listen = "10.0.0.2:65002";
  auto m = Membership::start(c);
  REQUIRE(m.ok());
  CHECK((*m)->self() == "10.0.0.2:65002");

  c.listen = "[fd00::5]:65002";
  auto v6 = Membership::start(c);
  REQUIRE(v6.ok());
  CHECK(v6.value()->self() == "[fd00::5]:65002");
}

TEST_CASE("Membership: self from a peer that is a local address when listen is a wildcard", "[p2p][membership]") {
  P2pConfig c = static_config();
  c.advertise.clear();
  c.listen = "0.0.0.0:65002";
  c.peers = {"10.0.0.1:65002", "127.0.0.1:65002", "127.0.0.1:65003"};
  auto m = Membership::start(c);
  REQUIRE(m.ok());
  CHECK((*m)->self() == "127.0.0.1:65002");

  // No peer is this host on the listen port: advertise must be set.
  c.peers = {"10.0.0.1:65002", "127.0.0.1:65003"};
  auto none = Membership::start(c);
  REQUIRE_FALSE(none.ok());
  CHECK(none.status().code() == Code::kInvalidInput);
  CHECK(none.status().message().find("advertise") != std::string::npos);
}

TEST_CASE("Membership: exactly one of peers and peers_dns", "[p2p][membership]") {
  FakeDns dns;
  dns.set({"10.0.0.1"});
  P2pConfig neither = static_config();
  neither.peers.clear();
  auto r1 = Membership::start(neither, dns.resolver());
  REQUIRE_FALSE(r1.ok());
  CHECK(r1.status().code() == Code::kInvalidInput);

  P2pConfig both = static_config();
  both.peers_dns = "peers.svc:65002";
  auto r2 = Membership::start(both, dns.resolver());
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.status().code() == Code::kInvalidInput);
}

TEST_CASE("Membership: malformed addresses are errors naming the field", "[p2p][membership]") {
  P2pConfig bad_peer = static_config();
  bad_peer.peers.push_back("10.0.0.9");
  auto r1 = Membership::start(bad_peer);
  REQUIRE_FALSE(r1.ok());
  CHECK(r1.status().message().find("p2p.peers") != std::string::npos);

  P2pConfig bad_listen = static_config();
  bad_listen.listen = "0.0.0.0:0";
  auto r2 = Membership::start(bad_listen);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.status().message().find("p2p.listen") != std::string::npos);

  P2pConfig bad_dns = static_config();
  bad_dns.peers.clear();
  bad_dns.peers_dns = "peers.svc";
  auto r3 = Membership::start(bad_dns, [](const std::string&) -> Result<std::vector<std::string>> {
    return std::vector<std::string>{"10.0.0.1"};
  });
  REQUIRE_FALSE(r3.ok());
  CHECK(r3.status().message().find("p2p.peers_dns") != std::string::npos);
}

TEST_CASE("Membership: DNS answers replace the list; failures and empty answers keep it", "[p2p][membership]") {
  FakeDns dns;
  dns.set({"10.0.0.2", "10.0.0.1"});
  P2pConfig c = static_config();
  c.peers.clear();
  c.peers_dns = "peers.svc:7000";
  c.advertise = "10.0.0.1:7000";
  auto started = Membership::start(c, dns.resolver());
  REQUIRE(started.ok());
  Membership& m = **started;
  CHECK(m.self() == "10.0.0.1:7000");
  const std::vector<std::string> first = {"10.0.0.1:7000", "10.0.0.2:7000"};
  CHECK(*m.members() == first);
  {
    std::lock_guard<std::mutex> g(dns.mu);
    REQUIRE_FALSE(dns.names.empty());
    for (const auto& n : dns.names) CHECK(n == "peers.svc");
  }
  CHECK(m.previous_members(1h) == nullptr);
  const uint64_t changes = m.membership_changes();

  // The same answer in another order is no change.
  dns.set({"10.0.0.1", "10.0.0.2"});
  m.refresh();
  CHECK(*m.members() == first);
  CHECK(m.membership_changes() == changes);

  dns.set({"10.0.0.3", "fd00::1", "10.0.0.1"});
  m.refresh();
  const std::vector<std::string> second = {"10.0.0.1:7000", "10.0.0.3:7000", "[fd00::1]:7000"};
  CHECK(*m.members() == second);
  CHECK(m.membership_changes() == changes + 1);
  auto prev = m.previous_members(1h);
  REQUIRE(prev);
  CHECK(*prev == first);

  // A failed answer keeps the list.
  dns.set({}, /*fail=*/true);
  m.refresh();
  CHECK(*m.members() == second);
  // So does an empty one.
  dns.set({});
  m.refresh();
  CHECK(*m.members() == second);
  CHECK(m.membership_changes() == changes + 1);
  REQUIRE(m.previous_members(1h));
  CHECK(*m.previous_members(1h) == first);

  // previous_members ages out.
  std::this_thread::sleep_for(30ms);
  CHECK(m.previous_members(10ms) == nullptr);
  CHECK(m.previous_members(1h) != nullptr);

  // Another change: the previous list is the one just replaced.
  dns.set({"10.0.0.4"});
  m.refresh();
  CHECK(*m.members() == std::vector<std::string>{"10.0.0.4:7000"});
  REQUIRE(m.previous_members(1h));
  CHECK(*m.previous_members(1h) == second);
}

TEST_CASE("Membership: a failed first answer is not an error; the list fills in later", "[p2p][membership]") {
  FakeDns dns;
  dns.set({}, /*fail=*/true);
  P2pConfig c = static_config();
  c.peers.clear();
  c.peers_dns = "peers.svc:7000";
  c.advertise = "10.0.0.1:7000";
  auto started = Membership::start(c, dns.resolver());
  REQUIRE(started.ok());
  Membership& m = **started;
  CHECK(m.members()->empty());
  dns.set({"10.0.0.1", "10.0.0.2"});
  m.refresh();
  CHECK(*m.members() == std::vector<std::string>{"10.0.0.1:7000", "10.0.0.2:7000"});
  // Filling an empty list is not a change with a previous list.
  CHECK(m.previous_members(1h) == nullptr);
}

TEST_CASE("Membership: the background thread re-resolves every dns_refresh_ms", "[p2p][membership]") {
  FakeDns dns;
  dns.set({"10.0.0.1"});
  P2pConfig c = static_config();
  c.peers.clear();
  c.peers_dns = "peers.svc:7000";
  c.advertise = "10.0.0.1:7000";
  c.dns_refresh_ms = 100;
  auto started = Membership::start(c, dns.resolver());
  REQUIRE(started.ok());
  Membership& m = **started;
  dns.set({"10.0.0.1", "10.0.0.7"});
  CHECK(eventually([&] { return m.members()->size() == 2; }));
  CHECK(*m.members() == std::vector<std::string>{"10.0.0.1:7000", "10.0.0.7:7000"});
}

TEST_CASE("Membership: report_failure takes a peer out at once; the prober puts it back", "[p2p][membership]") {
  FakeProber probe;
  auto probed = start_probed(probe);
  Membership& m = *probed;
  const std::string peer = "10.0.0.2:65002";

  m.report_failure(peer, /*bad_data=*/false);
  CHECK_FALSE(m.usable(peer));
  CHECK(m.usable("10.0.0.3:65002"));
  // The prober says it is still down: it stays out (and is asked again).
  CHECK(eventually([&] { return probe.probes_of(peer) >= 2; }));
  CHECK_FALSE(m.usable(peer));
  probe.up = true;
  CHECK(eventually([&] { return m.usable(peer); }));

  // This node never takes itself out.
  m.report_failure(m.self(), false);
  CHECK(m.usable(m.self()));

  // report_success clears a failure without waiting for a probe.
  probe.up = false;
  m.report_failure(peer, false);
  CHECK_FALSE(m.usable(peer));
  m.report_success(peer);
  CHECK(m.usable(peer));
}

TEST_CASE("Membership: bad data keeps a peer out for bad_data_backoff_ms before any probe", "[p2p][membership]") {
  FakeProber probe;
  probe.up = true;
  auto probed = start_probed(probe);
  Membership& m = *probed;
  const std::string peer = "10.0.0.3:65002";
  m.report_failure(peer, /*bad_data=*/true);
  // A later plain failure does not shorten the bad-data backoff.
  m.report_failure(peer, /*bad_data=*/false);
  std::this_thread::sleep_for(350ms);  // several loop rounds
  CHECK_FALSE(m.usable(peer));
  CHECK(probe.probes_of(peer) == 0);
}

TEST_CASE("Membership: without a prober a failed peer stays out", "[p2p][membership]") {
  P2pConfig c = static_config();
  c.failure_backoff_ms = 10;
  auto started = Membership::start(c);
  REQUIRE(started.ok());
  (*started)->report_failure("10.0.0.2:65002", false);
  std::this_thread::sleep_for(250ms);
  CHECK_FALSE((*started)->usable("10.0.0.2:65002"));
}

// ---------------------------------------------------------------- peer server parsers

TEST_CASE("parse_blob_path", "[p2p][peer_server]") {
  using nydus::p2p::parse_blob_path;
  auto t = parse_blob_path("/v2/library/ubuntu/blobs/sha256:" + kDigest);
  REQUIRE(t.ok());
  CHECK(t->repo == "library/ubuntu");
  CHECK(t->digest == kDigest);
  auto nested = parse_blob_path("/v2/a/b-c/d_e/f.g/blobs/sha256:" + kDigest);
  REQUIRE(nested.ok());
  CHECK(nested->repo == "a/b-c/d_e/f.g");
  auto single = parse_blob_path("/v2/x/blobs/sha256:" + kDigest);
  REQUIRE(single.ok());
  CHECK(single->repo == "x");

  // Malformed blob paths: 400.
  std::string upper = kDigest;
  upper[0] = 'A';
  std::string nonhex = kDigest;
  nonhex[10] = 'g';
  for (const std::string& bad : std::vector<std::string>{"/v2/repo/blobs/sha256:" + upper, "/v2/repo/blobs/sha256:" + kDigest.substr(1),
                                "/v2/repo/blobs/sha256:" + kDigest + "0", "/v2/repo/blobs/sha256:" + nonhex,
                                "/v2/repo/blobs/sha256:", "/v2/repo/blobs/sha512:" + kDigest,
                                "/v2/repo/blobs/" + kDigest, "/v2/repo/blobs/sha256:" + kDigest + "/",
                                "/v2/../etc/blobs/sha256:" + kDigest, "/v2/a/../b/blobs/sha256:" + kDigest,
                                "/v2/a/../../blobs/sha256:" + kDigest, "/v2/a//b/blobs/sha256:" + kDigest,
                                "/v2//a/blobs/sha256:" + kDigest, "/v2/a/b//blobs/sha256:" + kDigest,
                                "/v2/Library/ubuntu/blobs/sha256:" + kDigest, "/v2/a b/blobs/sha256:" + kDigest,
                                "/v2/a%2f../blobs/sha256:" + kDigest, "/v2/" + std::string(300, 'a') + "/blobs/sha256:" + kDigest}) {
    INFO("path " << bad);
    auto r = parse_blob_path(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kInvalidInput);
  }

  // Not blob paths at all: 404 / passthrough.
  for (const std::string& other : std::vector<std::string>{"/v2/repo/blobs/uploads/", "/v2/repo/blobs/uploads/1234-abcd",
                                  "/v2/repo/manifests/latest", "/v2/", "/v2", "/", "", "/server/ping",
                                  "/v3/repo/blobs/sha256:" + kDigest, "v2/repo/blobs/sha256:" + kDigest,
                                  "/V2/repo/blobs/sha256:" + kDigest, "/v2/blobs/sha256:" + kDigest}) {
    INFO("path " << other);
    auto r = parse_blob_path(other);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kNotFound);
  }
}

TEST_CASE("parse_range_header", "[p2p][peer_server]") {
  using nydus::p2p::parse_range_header;
  auto span = [](const std::string& v, uint64_t size) -> std::pair<uint64_t, uint64_t> {
    auto r = parse_range_header(v, size);
    INFO("Range '" << v << "' size " << size << ": " << (r.ok() ? "ok" : r.status().message()));
    REQUIRE(r.ok());
    CHECK(r->first <= r->last);
    CHECK(r->last < size);
    return {r->first, r->last};
  };
  auto code = [](const std::string& v, uint64_t size) {
    auto r = parse_range_header(v, size);
    INFO("Range '" << v << "' size " << size);
    REQUIRE_FALSE(r.ok());
    return r.status().code();
  };
  using P = std::pair<uint64_t, uint64_t>;
  CHECK(span("bytes=0-99", 1000) == P{0, 99});
  CHECK(span("bytes=10-10", 1000) == P{10, 10});
  CHECK(span("bytes=999-999", 1000) == P{999, 999});
  CHECK(span("bytes=100-", 1000) == P{100, 999});
  CHECK(span("bytes=0-", 1) == P{0, 0});
  CHECK(span("bytes=-10", 1000) == P{990, 999});
  CHECK(span("bytes=-1000", 1000) == P{0, 999});
  CHECK(span("bytes=-5000", 1000) == P{0, 999});  // suffix longer than the blob: all of it
  CHECK(span("bytes=500-5000", 1000) == P{500, 999});  // end clipped
  CHECK(span("bytes=0-9999999999999999999", 1000) == P{0, 999});  // 19 digits: clipped

  // Unsatisfiable: 416.
  CHECK(code("bytes=1000-", 1000) == Code::kNotFound);
  CHECK(code("bytes=1000-2000", 1000) == Code::kNotFound);
  CHECK(code("bytes=5000-6000", 1000) == Code::kNotFound);
  CHECK(code("bytes=0-0", 0) == Code::kNotFound);
  CHECK(code("bytes=0-", 0) == Code::kNotFound);
  CHECK(code("bytes=-10", 0) == Code::kNotFound);
  CHECK(code("bytes=-0", 1000) == Code::kNotFound);

  // Malformed: 400.
  for (const std::string& bad : std::vector<std::string>{"", "bytes", "bytes=", "bytes=-", "bytes=abc", "bytes=1", "bytes=a-b", "bytes=1-a",
                                "bytes=5-3", "bytes=0-1,5-6", "bytes=0-1, 5-6", "bytes=1--2", "bytes=1-2-3",
                                "items=0-1", "bytes 0-1", " bytes=0-1", "bytes= 0-1", "bytes=0 -1", "bytes=+1-2",
                                "bytes=-+5", "bytes=0x10-0x20", "bytes=1.5-2"}) {
    CHECK(code(bad, 1000) == Code::kInvalidInput);
  }
  // Huge numbers (25 digits) are refused rather than wrapped around.
  for (const std::string& huge : std::vector<std::string>{"bytes=0-9999999999999999999999999", "bytes=9999999999999999999999999-",
                                 "bytes=-9999999999999999999999999",
                                 "bytes=9999999999999999999999999-9999999999999999999999999"}) {
    auto r = parse_range_header(huge, 1000);
    INFO("Range '" << huge << "'");
    if (r.ok()) {
      CHECK(r->first <= r->last);
      CHECK(r->last < 1000);
    }
    CHECK_FALSE(r.ok());
  }
}

TEST_CASE("origin_from", "[p2p][peer_server]") {
  using nydus::p2p::origin_from;
  auto ok = [](const char* reg, const char* ns) {
    auto r = origin_from(reg, ns);
    INFO("registry " << (reg ? reg : "(null)") << " ns " << (ns ? ns : "(null)") << ": "
                     << (r.ok() ? *r : r.status().message()));
    REQUIRE(r.ok());
    return *r;
  };
  CHECK(ok("https://registry.example.com", nullptr) == "https://registry.example.com");
  CHECK(ok("http://10.0.0.5:5000", nullptr) == "http://10.0.0.5:5000");
  CHECK(ok("http://10.0.0.5:5000/", nullptr) == "http://10.0.0.5:5000");
  CHECK(ok("http://[fd00::5]:5000//", nullptr) == "http://[fd00::5]:5000");
  // The header wins over ns.
  CHECK(ok("http://a.example:5000", "b.example") == "http://a.example:5000");
  // ns is a host: https.
  CHECK(ok(nullptr, "docker.io") == "https://docker.io");
  CHECK(ok(nullptr, "registry.local:5000") == "https://registry.local:5000");
  CHECK(ok("", "registry.local:5000/") == "https://registry.local:5000");
  // Neither: "".
  CHECK(ok(nullptr, nullptr).empty());
  CHECK(ok("", "").empty());

  struct Bad {
    const char* reg;
    const char* ns;
  };
  for (const Bad b : {Bad{"ftp://registry.example", nullptr}, Bad{"registry.example", nullptr},
                      Bad{"HTTPS://registry.example", nullptr}, Bad{"https://", nullptr}, Bad{"http:///", nullptr},
                      Bad{"https://registry.example/v2", nullptr}, Bad{"https://registry.example/a/b", nullptr},
                      Bad{"https://user:pw@registry.example", nullptr}, Bad{"https://registry.example?x=1", nullptr},
                      Bad{"https://registry .example", nullptr}, Bad{"https://registry.example\r\nX: y", nullptr},
                      Bad{" https://registry.example", nullptr}, Bad{"https://registry.example#frag", nullptr},
                      Bad{nullptr, "registry.example/path"}, Bad{nullptr, "bad host"}, Bad{nullptr, "a@b"},
                      Bad{"ftp://x", "good.example"}}) {
    auto r = origin_from(b.reg, b.ns);
    INFO("registry " << (b.reg ? b.reg : "(null)") << " ns " << (b.ns ? b.ns : "(null)"));
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kInvalidInput);
  }
  const std::string long_host = "https://" + std::string(300, 'a');
  CHECK_FALSE(origin_from(long_host.c_str(), nullptr).ok());
}

// ---------------------------------------------------------------- peer client parser

TEST_CASE("parse_content_range", "[p2p][peer_client]") {
  using nydus::p2p::ContentRange;
  using nydus::p2p::parse_content_range;
  ContentRange cr;
  REQUIRE(parse_content_range("bytes 0-99/1000", &cr));
  CHECK(cr.first == 0);
  CHECK(cr.last == 99);
  CHECK(cr.total == 1000);
  REQUIRE(parse_content_range("bytes 999-999/1000", &cr));
  CHECK(cr.first == 999);
  CHECK(cr.last == 999);
  REQUIRE(parse_content_range("bytes 0-18446744073709551614/18446744073709551615", &cr));
  CHECK(cr.last == UINT64_MAX - 1);
  CHECK(cr.total == UINT64_MAX);

  const ContentRange untouched{7, 8, 9};
  for (const std::string& bad : std::vector<std::string>{"bytes 10-9/1000", "bytes 0-1000/1000", "bytes 0-5000/1000", "bytes 0-0/0", "bytes 0-99/*", "bytes */1000",
        "0-99/1000", "bytes=0-99/1000", "Bytes 0-99/1000", "bytes  0-99/1000", "bytes 0-99", "bytes 0/99-1000",
        "bytes 0-99/1000 ", "bytes 0 -99/1000", "bytes -1-99/1000", "bytes a-b/c", "bytes 0x1-0x2/0x10", "",
        "bytes ", "bytes -/", "bytes 0-18446744073709551616/18446744073709551617",
        "bytes 0-99/99999999999999999999999999"}) {
    INFO("Content-Range '" << bad << "'");
    ContentRange out = untouched;
    CHECK_FALSE(parse_content_range(bad, &out));
    CHECK(out.first == 7);  // not written on failure
    CHECK(out.last == 8);
    CHECK(out.total == 9);
  }
}

// ---------------------------------------------------------------- p2p config object

TEST_CASE("parse_p2p_object: defaults", "[p2p][config]") {
  auto c = nydus::daemon::parse_p2p_object(json{{"peers", {"10.0.0.1:65002"}}, {"insecure", true}});
  REQUIRE(c.ok());
  CHECK(c->secret_file.empty());
  CHECK(c->auth_window_s == 30);
  const P2pConfig d;
  CHECK(c->listen == "0.0.0.0:65002");
  CHECK(c->advertise.empty());
  CHECK(c->peers == std::vector<std::string>{"10.0.0.1:65002"});
  CHECK(c->peers_dns.empty());
  CHECK(c->dns_refresh_ms == 5000);
  CHECK(c->store_dir.empty());
  CHECK(c->store_size == 10ull << 30);
  CHECK(c->mirror_listen == "127.0.0.1:65001");
  CHECK(c->health_listen == "127.0.0.1:40901");
  CHECK(c->unit_size == 1ull << 20);
  CHECK(c->granule_size == 4096);
  CHECK(c->peer_timeout_ms == d.peer_timeout_ms);
  CHECK(c->peer_stall_ms == d.peer_stall_ms);
  CHECK(c->failure_backoff_ms == d.failure_backoff_ms);
  CHECK(c->bad_data_backoff_ms == d.bad_data_backoff_ms);
  CHECK(c->max_candidates == d.max_candidates);
  CHECK(c->upload_connections == d.upload_connections);
  CHECK(c->spread_uploads == d.spread_uploads);

  // Unknown keys and nulls are ignored.
  auto n = nydus::daemon::parse_p2p_object(
      json{{"peers_dns", "peers.svc:65002"}, {"listen", nullptr}, {"insecure", true}, {"future_key", {{"x", 1}}}});
  REQUIRE(n.ok());
  CHECK(n->listen == "0.0.0.0:65002");
  CHECK(n->peers_dns == "peers.svc:65002");
  CHECK(n->peers.empty());
}

TEST_CASE("parse_p2p_object: every field", "[p2p][config]") {
  const json o = {{"listen", "10.0.0.1:7000"},    {"advertise", "10.0.0.1:7001"},
                  {"peers_dns", "peers.svc:7000"}, {"dns_refresh_ms", 250},
                  {"store_dir", "/var/p2p"},       {"store_size", "2GiB"},
                  {"mirror_listen", "127.0.0.1:7002"}, {"unit_size", "1MiB"}, {"health_listen", ""},
                  {"granule_size", 8192},          {"peer_timeout_ms", 55},
                  {"peer_stall_ms", 777},          {"failure_backoff_ms", 123},
                  {"bad_data_backoff_ms", 4567},   {"max_candidates", 5},
                  {"upload_connections", 99},      {"spread_uploads", 0},
                  {"secret_file", "/run/secrets/p2p"}, {"auth_window_s", 10},
                  {"upload_rate", "100MiB"},       {"upload_rate_per_peer", 1048576},
                  {"max_uploads", 64}};
  auto c = nydus::daemon::parse_p2p_object(o);
  REQUIRE(c.ok());
  CHECK(c->listen == "10.0.0.1:7000");
  CHECK(c->advertise == "10.0.0.1:7001");
  CHECK(c->peers_dns == "peers.svc:7000");
  CHECK(c->peers.empty());
  CHECK(c->dns_refresh_ms == 250);
  CHECK(c->store_dir == "/var/p2p");
  CHECK(c->store_size == 2ull << 30);
  CHECK(c->mirror_listen == "127.0.0.1:7002");
  CHECK(c->health_listen.empty());
  CHECK(c->unit_size == 1ull << 20);
  CHECK(c->granule_size == 8192);
  CHECK(c->peer_timeout_ms == 55);
  CHECK(c->peer_stall_ms == 777);
  CHECK(c->failure_backoff_ms == 123);
  CHECK(c->bad_data_backoff_ms == 4567);
  CHECK(c->max_candidates == 5);
  CHECK(c->upload_connections == 99);
  CHECK(c->spread_uploads == 0);
  CHECK(c->secret_file == "/run/secrets/p2p");
  CHECK(c->auth_window_s == 10);
  CHECK_FALSE(c->insecure);
  CHECK(c->upload_rate == 100ull << 20);
  CHECK(c->upload_rate_per_peer == 1ull << 20);
  CHECK(c->max_uploads == 64);

  auto p = nydus::daemon::parse_p2p_object(json{{"peers", {"10.0.0.1:1", "[fd00::1]:2"}}, {"insecure", true}});
  REQUIRE(p.ok());
  CHECK(p->peers == std::vector<std::string>{"10.0.0.1:1", "[fd00::1]:2"});
}

TEST_CASE("parse_p2p_object: sizes", "[p2p][config]") {
  auto size_of = [](const json& v) -> uint64_t {
    auto c = nydus::daemon::parse_p2p_object(json{{"peers", {"a:1"}}, {"insecure", true}, {"store_size", v}});
    INFO("store_size " << v.dump() << ": " << (c.ok() ? "ok" : c.status().message()));
    REQUIRE(c.ok());
    return c->store_size;
  };
  CHECK(size_of("10GiB") == 10ull << 30);
  CHECK(size_of("4MiB") == 4ull << 20);
  CHECK(size_of("512KiB") == 512ull << 10);
  CHECK(size_of("1TiB") == 1ull << 40);
  CHECK(size_of("3GB") == 3ull << 30);
  CHECK(size_of("123") == 123);
  CHECK(size_of("123B") == 123);
  CHECK(size_of(123) == 123);
  CHECK(size_of(0) == 0);
  CHECK(size_of(json(uint64_t{1} << 40)) == 1ull << 40);

  auto unit_of = [](const json& v) -> uint64_t {
    auto c = nydus::daemon::parse_p2p_object(json{{"peers", {"a:1"}}, {"insecure", true}, {"unit_size", v}});
    REQUIRE(c.ok());
    return c->unit_size;
  };
  CHECK(unit_of("4MiB") == 4ull << 20);
  CHECK(unit_of(65536) == 65536);

  for (const json& bad : {json("10XB"), json("10 gigabytes"), json("GiB"), json(""), json("-5MiB"), json("1.5GiB"),
                         json("10GiB "), json(-1), json(1.5), json(true), json::array({1}), json::object(),
                         json("1234567890123456789"), json("99999999TiB"), json("20000000000GiB"),
                         json("16777216TiB")}) {
    auto c = nydus::daemon::parse_p2p_object(json{{"peers", {"a:1"}}, {"insecure", true}, {"store_size", bad}});
    INFO("store_size " << bad.dump() << ": " << (c.ok() ? "accepted as " + std::to_string(c->store_size) : ""));
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().code() == Code::kInvalidInput);
    CHECK(c.status().message().find("p2p.store_size") != std::string::npos);
  }
}

TEST_CASE("parse_p2p_object: errors name the field", "[p2p][config]") {
  const json base = {{"peers", {"10.0.0.1:65002"}}, {"insecure", true}};
  struct Case {
    std::string field;
    json value;
  };
  const std::vector<Case> cases = {
      {"listen", 7000},
      {"listen", ""},
      {"advertise", true},
      {"peers_dns", json::array({"a:1"})},
      {"store_dir", 1},
      {"mirror_listen", json::object()},
      {"health_listen", 40901},
      {"peers", "10.0.0.1:65002"},
      {"peers", json::array({1})},
      {"store_size", "big"},
      {"unit_size", "4XiB"},
      {"granule_size", 100},       // below 512
      {"granule_size", 2u << 20},  // above 1 MiB
      {"granule_size", 3000},      // not a power of two
      {"granule_size", "4096"},
      {"dns_refresh_ms", 10},
      {"dns_refresh_ms", -1},
      {"peer_timeout_ms", 0},
      {"peer_timeout_ms", 1.5},
      {"peer_stall_ms", 600001},
      {"failure_backoff_ms", 1},
      {"bad_data_backoff_ms", "30s"},
      {"max_candidates", 0},
      {"max_candidates", 65},
      {"upload_connections", 0},
      {"upload_connections", json(uint64_t{1} << 40)},
      {"spread_uploads", 65537},
      {"spread_uploads", -2},
      {"unit_size", 1000},        // not a multiple of the granule
      {"unit_size", 6000},
      {"unit_size", 2048},        // smaller than the granule
      {"unit_size", 0},
      {"unit_size", "2GiB"},      // above 1 GiB
      {"insecure", "yes"},        // true in so many words, nothing else
      {"insecure", 1},
      {"secret_file", true},
      {"auth_window_s", 0},
      {"auth_window_s", 3601},
      {"upload_rate", "fast"},
      {"upload_rate_per_peer", -1},
      {"max_uploads", 65537},
      {"tls_cert", 1},
      {"tls_ca", json::array()},
  };
  for (const auto& tc : cases) {
    json o = base;
    o[tc.field] = tc.value;
    auto c = nydus::daemon::parse_p2p_object(o);
    INFO(tc.field << " = " << tc.value.dump());
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().code() == Code::kInvalidInput);
    CHECK(c.status().message().find("p2p." + tc.field) != std::string::npos);
  }

  // Mutual TLS: all three files or none; with them, no secret is needed
  // to listen beyond loopback.
  const json no_guard = {{"peers", {"10.0.0.1:65002"}}, {"listen", "0.0.0.0:65002"}, {"mirror_listen", ""}};
  auto unguarded = nydus::daemon::parse_p2p_object(no_guard);
  REQUIRE_FALSE(unguarded.ok());
  CHECK(unguarded.status().message().find("p2p.tls_cert") != std::string::npos);
  json tls = no_guard;
  tls["tls_cert"] = "/etc/p2p/tls.crt";
  tls["tls_key"] = "/etc/p2p/tls.key";
  tls["tls_ca"] = "/etc/p2p/ca.crt";
  auto with_tls = nydus::daemon::parse_p2p_object(tls);
  REQUIRE(with_tls.ok());
  CHECK(with_tls->tls_cert == "/etc/p2p/tls.crt");
  CHECK(with_tls->tls_key == "/etc/p2p/tls.key");
  CHECK(with_tls->tls_ca == "/etc/p2p/ca.crt");
  for (const char* missing : {"tls_cert", "tls_key", "tls_ca"}) {
    json partial = tls;
    partial.erase(missing);
    auto c = nydus::daemon::parse_p2p_object(partial);
    INFO(missing);
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().message().find(std::string("p2p.") + missing) != std::string::npos);
  }

  // A unit that is a multiple of a non-default granule.
  auto g = nydus::daemon::parse_p2p_object(json{{"peers", {"a:1"}}, {"insecure", true}, {"granule_size", 8192}, {"unit_size", 24576}});
  REQUIRE(g.ok());
  CHECK(g->unit_size == 24576);
  auto g2 = nydus::daemon::parse_p2p_object(json{{"peers", {"a:1"}}, {"insecure", true}, {"granule_size", 8192}, {"unit_size", 12288}});
  REQUIRE_FALSE(g2.ok());
  CHECK(g2.status().message().find("p2p.unit_size") != std::string::npos);

  // peers and peers_dns: exactly one.
  auto neither = nydus::daemon::parse_p2p_object(json::object());
  REQUIRE_FALSE(neither.ok());
  CHECK(neither.status().message().find("p2p.peers") != std::string::npos);
  auto empty_list = nydus::daemon::parse_p2p_object(json{{"peers", json::array()}, {"insecure", true}});
  REQUIRE_FALSE(empty_list.ok());
  auto both = nydus::daemon::parse_p2p_object(json{{"peers", {"a:1"}}, {"insecure", true}, {"peers_dns", "b:1"}});
  REQUIRE_FALSE(both.ok());
  CHECK(both.status().message().find("p2p.peers") != std::string::npos);
  CHECK(both.status().message().find("peers_dns") != std::string::npos);

  for (const json& not_object : {json::array(), json("x"), json(1), json(nullptr)}) {
    auto c = nydus::daemon::parse_p2p_object(not_object);
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().message().find("p2p") != std::string::npos);
  }
}

TEST_CASE("parse_p2p_object: beyond loopback only with a secret or insecure: true", "[p2p][config]") {
  auto parse = [](json o) {
    o["peers"] = {"10.0.0.1:65002"};
    return nydus::daemon::parse_p2p_object(o);
  };
  // The default listen (0.0.0.0) without a secret: refused, naming the field and the two ways out.
  auto plain = parse(json::object());
  REQUIRE_FALSE(plain.ok());
  CHECK(plain.status().message().find("p2p.listen") != std::string::npos);
  CHECK(plain.status().message().find("p2p.secret_file") != std::string::npos);
  CHECK(plain.status().message().find("p2p.insecure") != std::string::npos);
  for (const char* listen : {"10.0.0.5:65002", "[fd00::5]:65002", "0.0.0.0:1"})
    CHECK_FALSE(parse(json{{"listen", listen}}).ok());
  for (const char* listen : {"127.0.0.1:65002", "127.0.0.2:1", "[::1]:65002", "localhost:65002"}) {
    INFO(listen);
    CHECK(parse(json{{"listen", listen}}).ok());
  }
  CHECK(parse(json{{"secret_file", "/s"}}).ok());
  CHECK(parse(json{{"insecure", true}}).ok());
  CHECK_FALSE(parse(json{{"insecure", false}}).ok());
  // The mirror answers without signatures: beyond loopback only with insecure, a secret is no help.
  auto mirror = parse(json{{"secret_file", "/s"}, {"mirror_listen", "0.0.0.0:65001"}});
  REQUIRE_FALSE(mirror.ok());
  CHECK(mirror.status().message().find("p2p.mirror_listen") != std::string::npos);
  CHECK(parse(json{{"insecure", true}, {"mirror_listen", "0.0.0.0:65001"}}).ok());
  CHECK(parse(json{{"secret_file", "/s"}, {"mirror_listen", ""}}).ok());
}

// ---------------------------------------------------------------- daemon-level P2P file

namespace {

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

// Sets (or clears) NYDUS_P2P_CONFIG for one scope.
struct EnvGuard {
  std::optional<std::string> saved;
  explicit EnvGuard(const char* value) {
    if (const char* v = std::getenv("NYDUS_P2P_CONFIG")) saved = v;
    if (value)
      setenv("NYDUS_P2P_CONFIG", value, 1);
    else
      unsetenv("NYDUS_P2P_CONFIG");
  }
  ~EnvGuard() {
    if (saved)
      setenv("NYDUS_P2P_CONFIG", saved->c_str(), 1);
    else
      unsetenv("NYDUS_P2P_CONFIG");
  }
};

}  // namespace

TEST_CASE("load_daemon_p2p_config: both file shapes", "[p2p][config]") {
  using nydus::daemon::load_daemon_p2p_config;
  EnvGuard env(nullptr);
  TempDir dir("p2p-config");
  write_file(dir / "wrapped.json", R"({"p2p": {"peers_dns": "peers.svc:7000", "unit_size": "1MiB", "insecure": true}, "other": 1})");
  write_file(dir / "bare.json", R"({"peers": ["10.0.0.1:65002", "10.0.0.2:65002"], "store_size": "1GiB", "insecure": true})");

  auto w = load_daemon_p2p_config(dir / "wrapped.json");
  REQUIRE(w.ok());
  REQUIRE(w->has_value());
  CHECK((*w)->peers_dns == "peers.svc:7000");
  CHECK((*w)->unit_size == 1ull << 20);

  auto b = load_daemon_p2p_config(dir / "bare.json");
  REQUIRE(b.ok());
  REQUIRE(b->has_value());
  CHECK((*b)->peers == std::vector<std::string>{"10.0.0.1:65002", "10.0.0.2:65002"});
  CHECK((*b)->store_size == 1ull << 30);
}

TEST_CASE("load_daemon_p2p_config: errors", "[p2p][config]") {
  using nydus::daemon::load_daemon_p2p_config;
  EnvGuard env(nullptr);
  TempDir dir("p2p-config");
  auto missing = load_daemon_p2p_config(dir / "nope.json");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find(dir / "nope.json") != std::string::npos);

  write_file(dir / "garbage.json", "{not json");
  auto garbage = load_daemon_p2p_config(dir / "garbage.json");
  REQUIRE_FALSE(garbage.ok());
  CHECK(garbage.status().message().find("garbage.json") != std::string::npos);

  write_file(dir / "array.json", "[1, 2]");
  CHECK_FALSE(load_daemon_p2p_config(dir / "array.json").ok());

  write_file(dir / "bad.json", R"({"p2p": {"peers": ["a:1"], "max_candidates": 0}})");
  auto bad = load_daemon_p2p_config(dir / "bad.json");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("p2p.max_candidates") != std::string::npos);
  CHECK(bad.status().message().find("bad.json") != std::string::npos);
}

TEST_CASE("load_daemon_p2p_config: NYDUS_P2P_CONFIG and the flag", "[p2p][config]") {
  using nydus::daemon::load_daemon_p2p_config;
  TempDir dir("p2p-config");
  write_file(dir / "env.json", R"({"p2p": {"peers": ["10.0.0.8:65002"], "insecure": true}})");
  write_file(dir / "flag.json", R"({"peers": ["10.0.0.9:65002"], "insecure": true})");
  {
    EnvGuard env((dir / "env.json").c_str());
    auto e = load_daemon_p2p_config("");
    REQUIRE(e.ok());
    REQUIRE(e->has_value());
    CHECK((*e)->peers == std::vector<std::string>{"10.0.0.8:65002"});
    // The flag wins over the environment.
    auto f = load_daemon_p2p_config(dir / "flag.json");
    REQUIRE(f.ok());
    REQUIRE(f->has_value());
    CHECK((*f)->peers == std::vector<std::string>{"10.0.0.9:65002"});
  }
  {
    EnvGuard env((dir / "missing.json").c_str());
    auto m = load_daemon_p2p_config("");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().message().find("NYDUS_P2P_CONFIG") != std::string::npos);
  }
}

TEST_CASE("load_daemon_p2p_config: nothing configured", "[p2p][config]") {
  struct stat st {};
  if (stat("/etc/nydus/p2p.json", &st) == 0) {
    WARN("/etc/nydus/p2p.json exists on this machine: skipped");
    return;
  }
  EnvGuard env(nullptr);
  auto none = nydus::daemon::load_daemon_p2p_config("");
  REQUIRE(none.ok());
  CHECK_FALSE(none->has_value());
  EnvGuard empty("");  // set but empty: as if unset
  auto none2 = nydus::daemon::load_daemon_p2p_config("");
  REQUIRE(none2.ok());
  CHECK_FALSE(none2->has_value());
}

// ---------------------------------------------------------------- the nydusd config file

TEST_CASE("parse_config: the p2p object in v1 JSON, v2 JSON and v2 TOML", "[p2p][config]") {
  using nydus::daemon::parse_config;
  const std::string v1 = R"({
    "device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}},
    "mode": "direct",
    "p2p": {"peers": ["10.0.0.1:65002", "10.0.0.2:65002"], "unit_size": "2MiB", "max_candidates": 2,
            "secret_file": "/run/secrets/p2p"}
  })";
  auto a = parse_config(v1);
  REQUIRE(a.ok());
  CHECK(a->source_version == 1);
  REQUIRE(a->p2p.has_value());
  CHECK(a->p2p->peers == std::vector<std::string>{"10.0.0.1:65002", "10.0.0.2:65002"});
  CHECK(a->p2p->unit_size == 2ull << 20);
  CHECK(a->p2p->max_candidates == 2);

  auto plain = parse_config(R"({"mode": "direct", "device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}}})");
  INFO((plain.ok() ? "" : plain.status().message()));
  REQUIRE(plain.ok());
  CHECK_FALSE(plain->p2p.has_value());

  const std::string toml = R"(version = 2
[backend]
type = "localfs"
[backend.localfs]
dir = "/x"
[p2p]
peers_dns = "peers.svc:65002"
secret_file = "/run/secrets/p2p"
store_size = "3GiB"
granule_size = 8192
unit_size = 4194304
dns_refresh_ms = 1000
)";
  auto t = parse_config(toml);
  REQUIRE(t.ok());
  CHECK(t->source_version == 2);
  REQUIRE(t->p2p.has_value());
  CHECK(t->p2p->peers_dns == "peers.svc:65002");
  CHECK(t->p2p->store_size == 3ull << 30);
  CHECK(t->p2p->granule_size == 8192);
  CHECK(t->p2p->unit_size == 4ull << 20);
  CHECK(t->p2p->dns_refresh_ms == 1000);

  const std::string v2json = R"({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/x"}},
                                 "p2p": {"peers": ["[fd00::1]:65002"], "insecure": true}})";
  auto j = parse_config(v2json);
  REQUIRE(j.ok());
  REQUIRE(j->p2p.has_value());
  CHECK(j->p2p->peers == std::vector<std::string>{"[fd00::1]:65002"});
}

TEST_CASE("parse_config: a bad p2p field fails the whole config, naming it", "[p2p][config]") {
  using nydus::daemon::parse_config;
  auto a = parse_config(R"({"mode": "direct", "device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}},
                            "p2p": {"peers": ["a:1"], "peer_timeout_ms": "fast"}})");
  REQUIRE_FALSE(a.ok());
  INFO(a.status().message());
  CHECK(a.status().message().find("p2p.peer_timeout_ms") != std::string::npos);

  auto t = parse_config("version = 2\n[backend]\ntype = \"localfs\"\n[backend.localfs]\ndir = \"/x\"\n"
                        "[p2p]\npeers = [\"a:1\"]\ngranule_size = 3000\n");
  REQUIRE_FALSE(t.ok());
  CHECK(t.status().message().find("p2p.granule_size") != std::string::npos);

  auto neither = parse_config(R"({"mode": "direct", "device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}}, "p2p": {}})");
  REQUIRE_FALSE(neither.ok());
  CHECK(neither.status().message().find("p2p.peers") != std::string::npos);

  auto not_object = parse_config(R"({"mode": "direct", "device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}}, "p2p": 5})");
  REQUIRE_FALSE(not_object.ok());
  CHECK(not_object.status().message().find("p2p") != std::string::npos);
}

TEST_CASE("RateLimiter: paces, and refuses a wait past the deadline at once", "[p2p][rate]") {
  using Clock = std::chrono::steady_clock;
  nydus::p2p::RateLimiter unlimited(0);
  CHECK(unlimited.take(1ull << 40, Clock::now()));
  nydus::p2p::RateLimiter limiter(1000);  // bytes per second
  CHECK(limiter.take(1000, Clock::now() + std::chrono::seconds(1)));  // goes now; the link is busy 1 s
  const auto t0 = Clock::now();
  CHECK_FALSE(limiter.take(10, t0 + std::chrono::milliseconds(100)));  // would start in ~1 s
  CHECK(Clock::now() - t0 < std::chrono::milliseconds(50));            // ... so no waiting
  nydus::p2p::UploadLimits limits(0, 1000);
  CHECK(limits.limited());
  CHECK(limits.take("10.0.0.1", 1000, Clock::now()));
  CHECK(limits.take("10.0.0.2", 1000, Clock::now()));  // another client, its own budget
  CHECK_FALSE(limits.take("10.0.0.1", 10, Clock::now() + std::chrono::milliseconds(100)));
  CHECK_FALSE(nydus::p2p::UploadLimits(0, 0).limited());
}

TEST_CASE("UploadLimits: idle clients are forgotten past 1024 addresses, busy ones kept", "[p2p][rate]") {
  using Clock = std::chrono::steady_clock;
  nydus::p2p::UploadLimits limits(0, 1000);
  CHECK(limits.take("busy", 1000, Clock::now()));  // its link is taken for 1 s
  for (int i = 0; i < 3000; ++i) CHECK(limits.take("10.1." + std::to_string(i), 1, Clock::now() + std::chrono::seconds(1)));
  CHECK(limits.tracked_clients() <= 1024 + 1);
  // The busy client's reservation survived every pruning.
  CHECK_FALSE(limits.take("busy", 10, Clock::now() + std::chrono::milliseconds(100)));
}

TEST_CASE("RateLimiter: on-demand bytes pass queued low-priority ones", "[p2p][rate]") {
  using Clock = std::chrono::steady_clock;
  nydus::p2p::RateLimiter limiter(1000);
  const auto far = Clock::now() + std::chrono::seconds(10);
  CHECK(limiter.take(1000, far, true));  // a prefetch block: the link is taken for 1 s
  // On-demand bytes do not wait behind it...
  const auto t0 = Clock::now();
  CHECK(limiter.take(100, far, false));
  CHECK(Clock::now() - t0 < std::chrono::milliseconds(50));
  // ... and push the next low-priority block back by their own time (0.1 s), after the first (1 s).
  CHECK_FALSE(limiter.take(10, Clock::now() + std::chrono::milliseconds(1050), true));
  CHECK(limiter.take(10, Clock::now() + std::chrono::milliseconds(1200), true));
  CHECK(Clock::now() - t0 >= std::chrono::milliseconds(1000));
}
