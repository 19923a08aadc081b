#include "p2p/peer_health.h"

namespace nydus::p2p {

std::chrono::milliseconds PeerHealth::report_failure(const std::string& member, bool bad_data,
                                                     Clock::time_point now) {
  const auto backoff = bad_data ? bad_data_backoff_ : failure_backoff_;
  auto [it, inserted] = out_.try_emplace(member);
  const Clock::time_point until = now + backoff;
  if (inserted || until > it->second.until) it->second.until = until;
  it->second.bad_data = it->second.bad_data || bad_data;
  return inserted ? backoff : std::chrono::milliseconds(0);
}

std::vector<std::string> PeerHealth::due(Clock::time_point now) const {
  std::vector<std::string> out;
  for (const auto& [member, f] : out_)
    if (now >= f.until) out.push_back(member);
  return out;
}

bool PeerHealth::probed(const std::string& member, bool answered, Clock::time_point now) {
  auto it = out_.find(member);
  if (it == out_.end()) return false;
  if (answered) {
    out_.erase(it);
    return true;
  }
  it->second.until = now + failure_backoff_;
  return false;
}

}  // namespace nydus::p2p
