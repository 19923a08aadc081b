#include "p2p/rate_limiter.h"

#include <thread>

namespace nydus::p2p {

using Clock = std::chrono::steady_clock;

bool RateLimiter::take(uint64_t n, Clock::time_point give_up) {
  if (rate_ == 0 || n == 0) return true;
  const auto cost = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(double(n) / double(rate_)));
  Clock::time_point start;
  {
    std::lock_guard<std::mutex> g(mu_);
    const Clock::time_point now = Clock::now();
    start = std::max(now, next_free_);
    if (start > now && start > give_up) return false;  // would have to wait past the deadline
    next_free_ = start + cost;
  }
  // The bytes go at `start`; they occupy the link until next_free_.
  std::this_thread::sleep_until(start);
  return true;
}

bool UploadLimits::take(const std::string& client, uint64_t n, Clock::time_point give_up) {
  RateLimiter* mine = nullptr;
  if (per_client_rate_ > 0) {
    std::lock_guard<std::mutex> g(mu_);
    auto& slot = clients_[client];
    if (!slot) slot = std::make_unique<RateLimiter>(per_client_rate_);
    mine = slot.get();
  }
  if (mine && !mine->take(n, give_up)) return false;
  return total_.take(n, give_up);
}

}  // namespace nydus::p2p
