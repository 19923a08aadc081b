// Counters of where blob bytes came from: per source (the origin registry,
// each mirror, the proxy, a local directory) and for the chunk cache. They
// are what `/api/v1/metrics/backend` and `/metrics/blobcache` report and
// what the end-of-run log line prints.
//
// Thread-safety: counters are atomics, updated lock-free from any thread;
// sources are registered before requests start and never removed, so the
// list itself needs no lock after start-up (register_source is guarded).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace nydus::backend {

struct SourceCounters {
  explicit SourceCounters(std::string source_name) : name(std::move(source_name)) {}
  const std::string name;  // "origin", "proxy", "mirror http://…", "localfs"
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> errors{0};  // transport errors and 5xx answers
  std::atomic<uint64_t> bytes{0};   // body bytes received
  std::atomic<uint64_t> latency_ms_total{0};
};

// Backend latency buckets in milliseconds, as upstream's
// read_cumulative_latency_millis_dist: <=1, <=20, <=50, <=100, <=500,
// <=1000, <=2000, >2000.
inline size_t latency_bucket_ms(uint64_t ms) {
  static constexpr uint64_t kBounds[] = {1, 20, 50, 100, 500, 1000, 2000};
  size_t i = 0;
  while (i < 7 && ms > kBounds[i]) ++i;
  return i;
}

class BackendMetrics {
 public:
  // The counters of `name`, created on first use. The reference stays
  // valid for the life of this object.
  SourceCounters& source(const std::string& name) {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& s : sources_)
      if (s.name == name) return s;
    return sources_.emplace_back(name);
  }

  // A snapshot-friendly walk over all sources.
  template <typename Fn>
  void for_each_source(Fn fn) const {
    std::lock_guard<std::mutex> g(mu_);
    for (const auto& s : sources_) fn(s);
  }

  // Totals across sources, as upstream's BackendMetrics.
  std::atomic<uint64_t> read_count{0};
  std::atomic<uint64_t> read_errors{0};
  std::atomic<uint64_t> read_amount_total{0};
  std::atomic<uint64_t> read_latency_ms_total{0};
  std::atomic<uint64_t> read_latency_dist[8] = {};

  void record_read(uint64_t bytes, std::chrono::steady_clock::duration took, bool ok) {
    const auto ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
    read_count.fetch_add(1, std::memory_order_relaxed);
    if (!ok) read_errors.fetch_add(1, std::memory_order_relaxed);
    read_amount_total.fetch_add(bytes, std::memory_order_relaxed);
    read_latency_ms_total.fetch_add(ms, std::memory_order_relaxed);
    read_latency_dist[latency_bucket_ms(ms)].fetch_add(1, std::memory_order_relaxed);
  }

 private:
  mutable std::mutex mu_;
  std::deque<SourceCounters> sources_;  // deque: references stay valid
};

// Counters of the chunk cache and prefetch (upstream's CacheMetrics).
struct CacheMetrics {
  std::atomic<uint64_t> chunk_reads{0};        // chunks asked for (total)
  std::atomic<uint64_t> cache_hits{0};         // served from <id>.blob.data
  std::atomic<uint64_t> cache_hit_bytes{0};
  std::atomic<uint64_t> backend_fetches{0};    // merged backend requests made
  std::atomic<uint64_t> backend_chunks{0};     // chunks those requests carried
  std::atomic<uint64_t> backend_bytes{0};      // raw bytes those requests carried
  std::atomic<uint64_t> singleflight_waits{0}; // readers that waited for another's fetch
  std::atomic<uint64_t> corrupt_fetches{0};    // fetched chunks that failed verification
  std::atomic<uint64_t> prefetch_requests{0};
  std::atomic<uint64_t> prefetch_chunks{0};
  std::atomic<uint64_t> prefetch_bytes{0};     // uncompressed bytes prefetched
  std::atomic<uint64_t> prefetch_planned_chunks{0};
  std::atomic<uint64_t> prefetch_done_chunks{0};  // planned chunks now ready (fetched or found)
  std::atomic<int64_t> prefetch_begin_ms{0};      // unix ms; 0 = not started
  std::atomic<int64_t> prefetch_end_ms{0};        // unix ms; 0 = not finished
  std::atomic<uint32_t> prefetch_workers{0};
};

}  // namespace nydus::backend
