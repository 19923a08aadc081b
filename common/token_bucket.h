// TokenBucket: limits a byte rate (prefetch `bandwidth_rate`).
//
// acquire(n) takes n tokens, going into debt when the bucket holds fewer,
// and then sleeps until the debt is paid at `rate` bytes per second. A
// request larger than the burst is therefore allowed, just paid for after.
// The bucket starts full (burst tokens). rate 0 means unlimited.
//
// Thread-safety: acquire() may be called from any number of threads; the
// lock is never held while sleeping. cancel() wakes every sleeper early
// (acquire then returns false) and makes later calls return at once.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace nydus {

class TokenBucket {
 public:
  TokenBucket(uint64_t rate_bytes_per_sec, uint64_t burst_bytes)
      : rate_(rate_bytes_per_sec),
        burst_(static_cast<double>(std::max<uint64_t>(burst_bytes, 1))),
        tokens_(burst_),
        last_(Clock::now()) {}

  // True when the tokens were granted; false when cancelled.
  bool acquire(uint64_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    if (cancelled_) return false;
    if (rate_ == 0) return true;
    refill();
    tokens_ -= static_cast<double>(n);
    if (tokens_ >= 0) return true;
    const auto wait = std::chrono::duration<double>(-tokens_ / static_cast<double>(rate_));
    const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(wait);
    cv_.wait_until(lock, until, [&] { return cancelled_; });
    return !cancelled_;
  }

  void cancel() {
    {
      std::lock_guard<std::mutex> g(mu_);
      cancelled_ = true;
    }
    cv_.notify_all();
  }

  uint64_t rate() const { return rate_; }

 private:
  using Clock = std::chrono::steady_clock;

  void refill() {
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    tokens_ = std::min(burst_, tokens_ + elapsed * static_cast<double>(rate_));
  }

  const uint64_t rate_;
  const double burst_;
  std::mutex mu_;
  std::condition_variable cv_;
  double tokens_;
  Clock::time_point last_;
  bool cancelled_ = false;
};

}  // namespace nydus
