// Prefetcher: background workers that pull a plan of chunks into the blob
// cache (fs_prefetch: threads_count, merging_size, bandwidth_rate).
//
// The plan is cut into batches of at most `merging_size` uncompressed
// bytes; each worker takes the next batch and hands it to
// ChunkReader::ensure_cached, which skips cached chunks, merges contiguous
// ones into single backend reads and yields to on-demand fetches. After
// each batch the worker pays for the raw bytes it fetched from a shared
// token bucket (`bandwidth_rate` bytes/s, 0 = unlimited), so the average
// rate stays under the limit. A failed batch is logged and skipped: the
// chunks are fetched on demand later.
//
// Progress is in CacheMetrics (planned and done chunks, begin and end
// times, workers). stop() cancels the remaining batches and joins; the
// destructor stops. Thread-safety: start/stop/finished/wait from any
// thread; start() once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/backend_metrics.h"
#include "backend/chunk_reader.h"
#include "bootstrap/image.h"
#include "common/token_bucket.h"

namespace nydus::backend {

struct PrefetchOptions {
  uint32_t threads = 8;
  uint64_t merging_size = 1 << 20;
  uint64_t bandwidth_rate = 0;  // bytes per second; 0 = unlimited
};

class Prefetcher {
 public:
  Prefetcher(ChunkReader& reader, PrefetchOptions options, CacheMetrics* metrics);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  void start(std::vector<bootstrap::ChunkRef> plan);
  void stop();
  bool finished() const { return finished_.load(); }
  // Waits until every batch is done or the deadline passes; true if done.
  bool wait(std::chrono::milliseconds deadline);

 private:
  void work();

  ChunkReader& reader_;
  const PrefetchOptions options_;
  CacheMetrics* const metrics_;
  TokenBucket bucket_;
  std::vector<std::vector<bootstrap::ChunkRef>> batches_;
  std::atomic<size_t> next_batch_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<uint32_t> running_{0};
  std::atomic<bool> finished_{false};
  std::atomic<uint64_t> fetched_bytes_{0};
  std::chrono::steady_clock::time_point began_;
  std::mutex done_mu_;
  std::condition_variable done_cv_;
  std::vector<std::thread> workers_;
};

}  // namespace nydus::backend
