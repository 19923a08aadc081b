// Membership: who the peers are and which of them are usable right now.
//
// Sources: a static list (`peers`) or a DNS name (`peers_dns`, "NAME:PORT")
// whose A/AAAA records are the members, resolved again every
// `dns_refresh_ms` (a Kubernetes headless Service answers with one record
// per ready pod). A resolution that fails or returns nothing keeps the last
// good list. Members are "ADDR:PORT" strings ("[v6addr]:PORT" for IPv6),
// kept sorted; this node is one of them (self()).
//
// Health comes from real requests (p2p/peer_health.h): report_failure()
// takes a peer out of rendezvous at once, for `failure_backoff_ms`
// (`bad_data_backoff_ms` when its bytes failed verification); a background
// thread then probes it (GET /server/ping) and puts it back when it
// answers. report_success() clears a failure.
//
// Thread-safety: all methods may be called from any thread; members()
// returns an immutable snapshot.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "p2p/p2p_config.h"
#include "p2p/peer_health.h"

namespace nydus::p2p {

// "ADDR:PORT" -> {addr, port}; IPv6 in brackets. kInvalidInput names `what`.
Result<std::pair<std::string, uint16_t>> split_host_port(const std::string& text, const std::string& what);
// {addr, port} -> "ADDR:PORT" ("[addr]:port" when addr holds a ':').
std::string join_host_port(const std::string& addr, uint16_t port);

class Membership {
 public:
  using Clock = std::chrono::steady_clock;
  using Resolver = std::function<Result<std::vector<std::string>>(const std::string& name)>;  // addresses
  using Prober = std::function<bool(const std::string& member)>;

  // Resolves peers_dns once (an empty or failed first answer is not an
  // error: the list fills in later), works out self(), and starts the
  // refresh-and-probe thread. `resolver` and `prober` replace getaddrinfo
  // and the HTTP ping in tests.
  static Result<std::unique_ptr<Membership>> start(const P2pConfig& config, Resolver resolver = nullptr,
                                                   Prober prober = nullptr);
  ~Membership();

  const std::string& self() const { return self_; }
  // Every known member (this node included), sorted.
  std::shared_ptr<const std::vector<std::string>> members() const;
  // The list before the last change, when that change is at most `within`
  // old (units that moved are still held by their previous owners); else
  // null.
  std::shared_ptr<const std::vector<std::string>> previous_members(Clock::duration within) const;
  bool usable(const std::string& member) const;
  void report_failure(const std::string& member, bool bad_data);
  void report_success(const std::string& member);
  // Resolves peers_dns now (tests; the thread does it periodically).
  void refresh();
  uint64_t membership_changes() const;

 private:
  Membership(P2pConfig config, Resolver resolver, Prober prober);
  void set_members(std::vector<std::string> members);
  void loop();

  const P2pConfig config_;
  Resolver resolver_;
  Prober prober_;
  std::string self_;
  std::string dns_name_;
  uint16_t dns_port_ = 0;

  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<std::string>> members_;
  std::shared_ptr<const std::vector<std::string>> previous_;
  Clock::time_point changed_at_{};
  PeerHealth health_;
  uint64_t changes_ = 0;
  bool stopping_ = false;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace nydus::p2p
