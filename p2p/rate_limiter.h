// RateLimiter: upload pacing for the peer server (issue 12, "fair sharing").
//
// A limiter of `rate` bytes per second hands out send times: take(n) waits
// until the n bytes may go, so that over any stretch the bytes sent stay at
// the rate (no burst beyond one call's bytes; callers send at most one
// stream block, 256 KiB, per call). An idle stretch is not saved up.
// rate 0 means unlimited: take() returns at once.
//
// UploadLimits: one total limiter and one per client address, created on
// first use; a send waits for both.
//
// Thread-safety: any number of concurrent calls.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace nydus::p2p {

class RateLimiter {
 public:
  explicit RateLimiter(uint64_t bytes_per_second) : rate_(bytes_per_second) {}
  // Blocks until `n` more bytes may be sent; false (without waiting the
  // whole time) when that moment lies past `give_up`.
  bool take(uint64_t n, std::chrono::steady_clock::time_point give_up);
  uint64_t rate() const { return rate_; }

 private:
  const uint64_t rate_;
  std::mutex mu_;
  std::chrono::steady_clock::time_point next_free_{};  // guarded by mu_
};

class UploadLimits {
 public:
  UploadLimits(uint64_t total_rate, uint64_t per_client_rate) : total_(total_rate), per_client_rate_(per_client_rate) {}
  bool limited() const { return total_.rate() > 0 || per_client_rate_ > 0; }
  // Waits until `n` bytes to `client` may go, under both limits.
  bool take(const std::string& client, uint64_t n, std::chrono::steady_clock::time_point give_up);

 private:
  RateLimiter total_;
  const uint64_t per_client_rate_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<RateLimiter>> clients_;  // guarded by mu_
};

}  // namespace nydus::p2p
