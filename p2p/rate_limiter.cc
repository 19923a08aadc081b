#include "p2p/rate_limiter.h"

#include <thread>

namespace nydus::p2p {

using Clock = std::chrono::steady_clock;

bool RateLimiter::take(uint64_t n, Clock::time_point give_up, bool low_priority) {
  if (rate_ == 0 || n == 0) return true;
  const auto cost = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(double(n) / double(rate_)));
  Clock::time_point start;
  {
    std::lock_guard<std::mutex> g(mu_);
    const Clock::time_point now = Clock::now();
    start = std::max(now, low_priority ? next_free_ : next_free_demand_);
    if (start > now && start > give_up) return false;  // would have to wait past the deadline
    if (!low_priority) next_free_demand_ = start + cost;
    next_free_ = std::max(next_free_, start) + cost;
  }
  // The bytes go at `start`; they occupy the link until next_free_.
  std::this_thread::sleep_until(start);
  return true;
}

size_t UploadLimits::tracked_clients() {
  std::lock_guard<std::mutex> g(mu_);
  return clients_.size();
}

bool RateLimiter::idle(Clock::time_point now) {
  std::lock_guard<std::mutex> g(mu_);
  return next_free_ <= now;
}

bool UploadLimits::take(const std::string& client, uint64_t n, Clock::time_point give_up, bool low_priority) {
  std::shared_ptr<RateLimiter> mine;
  if (per_client_rate_ > 0) {
    std::lock_guard<std::mutex> g(mu_);
    if (clients_.size() >= kMaxIdleClients && !clients_.count(client)) {
      const Clock::time_point now = Clock::now();
      std::erase_if(clients_, [&](const auto& e) { return e.second.use_count() == 1 && e.second->idle(now); });
    }
    auto& slot = clients_[client];
    if (!slot) slot = std::make_shared<RateLimiter>(per_client_rate_);
    mine = slot;
  }
  if (mine && !mine->take(n, give_up, low_priority)) return false;
  return total_.take(n, give_up, low_priority);
}

bool UploadSlots::claim(bool low_priority) {
  std::lock_guard<std::mutex> g(mu_);
  if (cap_ != 0 && (low_priority ? all_ : demand_) >= cap_) return false;
  ++all_;
  if (!low_priority) ++demand_;
  return true;
}

void UploadSlots::release(bool low_priority) {
  std::lock_guard<std::mutex> g(mu_);
  if (all_ > 0) --all_;
  if (!low_priority && demand_ > 0) --demand_;
  if (all_ == 0) idle_.notify_all();
}

uint32_t UploadSlots::wait_idle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait_until(lock, deadline, [&] { return all_ == 0; });
  return all_;
}

}  // namespace nydus::p2p
