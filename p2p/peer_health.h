// PeerHealth: which peers are out of rendezvous after a failed request,
// and until when. Health comes from real requests (a failure takes a peer
// out at once for `failure_backoff`, or `bad_data_backoff` when its bytes
// failed verification); once the backoff ends the peer is probed and comes
// back when the probe answers, else stays out for another failure_backoff.
//
// The clock is a parameter, so Membership runs it on steady_clock and the
// scale simulator (test/sim) on simulated time.
//
// Thread-safety: none; Membership guards it with its mutex.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace nydus::p2p {

class PeerHealth {
 public:
  using Clock = std::chrono::steady_clock;

  PeerHealth(std::chrono::milliseconds failure_backoff, std::chrono::milliseconds bad_data_backoff)
      : failure_backoff_(failure_backoff), bad_data_backoff_(bad_data_backoff) {}

  bool usable(const std::string& member) const { return !out_.contains(member); }
  // Takes `member` out until now + its backoff (a longer backoff already
  // running stays). Returns the backoff when the member was usable until
  // now (the caller logs it), else zero.
  std::chrono::milliseconds report_failure(const std::string& member, bool bad_data, Clock::time_point now);
  void report_success(const std::string& member) { out_.erase(member); }
  // Members whose backoff has ended by `now`: to be probed.
  std::vector<std::string> due(Clock::time_point now) const;
  // A probe's answer: back in rendezvous, or out for another failure_backoff.
  // Returns true when the member came back.
  bool probed(const std::string& member, bool answered, Clock::time_point now);
  size_t out_count() const { return out_.size(); }

 private:
  struct Failure {
    Clock::time_point until;
    bool bad_data = false;
  };
  const std::chrono::milliseconds failure_backoff_;
  const std::chrono::milliseconds bad_data_backoff_;
  std::map<std::string, Failure> out_;
};

}  // namespace nydus::p2p
