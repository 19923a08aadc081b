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
// latency_millis_range_index (utils/src/metrics.rs): <=1, <=20, <=50,
// <=100, <=500, <=1000, <=2000, >2000. The latency axis of
// read_latency_sizes_dist.
inline size_t latency_bucket_ms(uint64_t ms) {
  static constexpr uint64_t kBounds[] = {1, 20, 50, 100, 500, 1000, 2000};
  size_t i = 0;
  while (i < 7 && ms > kBounds[i]) ++i;
  return i;
}

// Request-size buckets, as upstream's request_size_index
// (utils/src/metrics.rs): <1K, <4K, <16K, <64K, <128K, <512K, <1M, >=1M.
// Used by the backend size dists and by the filesystem's block_count_read.
inline size_t size_bucket(uint64_t bytes) {
  static constexpr uint64_t kBounds[] = {1u << 10, 4u << 10, 16u << 10, 64u << 10, 128u << 10, 512u << 10, 1u << 20};
  size_t i = 0;
  while (i < 7 && bytes >= kBounds[i]) ++i;
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
  std::atomic<uint64_t> read_latency_dist[8] = {};  // count per latency_bucket_ms
  // By request size (size_bucket of `bytes`), as upstream's BackendMetrics:
  // milliseconds summed, request count, and count per [size][latency].
  std::atomic<uint64_t> read_cumulative_latency_millis_dist[8] = {};
  std::atomic<uint64_t> read_count_block_size_dist[8] = {};
  std::atomic<uint64_t> read_latency_sizes_dist[8][8] = {};

  // One backend request. `bytes` is what it delivered (0 for a failure, so
  // failed requests land in the smallest size bucket; upstream buckets them
  // by the requested length instead).
  void record_read(uint64_t bytes, std::chrono::steady_clock::duration took, bool ok) {
    const auto ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
    const size_t lat = latency_bucket_ms(ms);
    const size_t size = size_bucket(bytes);
    read_count.fetch_add(1, std::memory_order_relaxed);
    if (!ok) read_errors.fetch_add(1, std::memory_order_relaxed);
    read_amount_total.fetch_add(bytes, std::memory_order_relaxed);
    read_latency_ms_total.fetch_add(ms, std::memory_order_relaxed);
    read_latency_dist[lat].fetch_add(1, std::memory_order_relaxed);
    read_cumulative_latency_millis_dist[size].fetch_add(ms, std::memory_order_relaxed);
    read_count_block_size_dist[size].fetch_add(1, std::memory_order_relaxed);
    read_latency_sizes_dist[size][lat].fetch_add(1, std::memory_order_relaxed);
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
