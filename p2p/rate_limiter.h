// RateLimiter: upload pacing for the peer server (issue 12, "fair sharing").
//
// A limiter of `rate` bytes per second hands out send times: take(n) waits
// until the n bytes may go, so that over any stretch the bytes sent stay at
// the rate (no burst beyond one call's bytes; callers send at most one
// stream block, 256 KiB, per call). An idle stretch is not saved up.
// rate 0 means unlimited: take() returns at once.
//
// Two classes: on-demand bytes (a reader waits for them) queue only behind
// other on-demand bytes; low-priority bytes (prefetch, a stock client's
// whole-blob pull) go after everything reserved so far, and every on-demand
// reservation pushes them further back. The total can overshoot the rate
// by the low-priority blocks already under way (one block per stream).
//
// UploadLimits: one total limiter and one per client address, created on
// first use; a send waits for both. Past kMaxIdleClients addresses, the
// limiters of idle clients are forgotten (pod addresses come and go).
//
// Thread-safety: any number of concurrent calls.
#pragma once

#include <chrono>
#include <condition_variable>
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
  bool take(uint64_t n, std::chrono::steady_clock::time_point give_up, bool low_priority = false);
  uint64_t rate() const { return rate_; }
  // No reservation reaches past `now`: forgetting this limiter loses nothing.
  bool idle(std::chrono::steady_clock::time_point now);

 private:
  const uint64_t rate_;
  std::mutex mu_;
  std::chrono::steady_clock::time_point next_free_{};         // guarded by mu_: after all reservations
  std::chrono::steady_clock::time_point next_free_demand_{};  // guarded by mu_: after on-demand ones
};

class UploadLimits {
 public:
  UploadLimits(uint64_t total_rate, uint64_t per_client_rate) : total_(total_rate), per_client_rate_(per_client_rate) {}
  bool limited() const { return total_.rate() > 0 || per_client_rate_ > 0; }
  // Waits until `n` bytes to `client` may go, under both limits.
  bool take(const std::string& client, uint64_t n, std::chrono::steady_clock::time_point give_up,
            bool low_priority = false);

  // Client addresses with a limiter now (for tests and metrics).
  size_t tracked_clients();

 private:
  RateLimiter total_;
  const uint64_t per_client_rate_;
  std::mutex mu_;
  static constexpr size_t kMaxIdleClients = 1024;
  // guarded by mu_; shared so that a sender holds its limiter while it waits
  std::map<std::string, std::shared_ptr<RateLimiter>> clients_;
};

// max_uploads: data responses in flight at once (0 = no cap). A
// low-priority response counts against the cap with all the others; an
// on-demand one is refused only when on-demand responses alone fill it, so
// prefetch and whole-blob pulls never lock out a waiting reader. Responses
// are counted with or without a cap, so a draining node can wait for them.
class UploadSlots {
 public:
  explicit UploadSlots(uint32_t cap) : cap_(cap) {}
  // True: one slot held until release(low_priority).
  bool claim(bool low_priority);
  void release(bool low_priority);
  // Blocks until no response is in flight or `deadline` passes; returns
  // how many still are.
  uint32_t wait_idle(std::chrono::steady_clock::time_point deadline);

 private:
  const uint32_t cap_;
  std::mutex mu_;
  std::condition_variable idle_;  // notified when all_ drops to 0
  uint32_t all_ = 0;     // guarded by mu_
  uint32_t demand_ = 0;  // guarded by mu_
};

}  // namespace nydus::p2p
