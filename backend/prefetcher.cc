#include "backend/prefetcher.h"

#include <algorithm>
#include <chrono>

#include "common/log.h"

namespace nydus::backend {
namespace {

int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Prefetcher::Prefetcher(ChunkReader& reader, PrefetchOptions options, CacheMetrics* metrics)
    : reader_(reader),
      options_(options),
      metrics_(metrics),
      bucket_(options.bandwidth_rate, std::max<uint64_t>(options.merging_size, options.bandwidth_rate)) {}

Prefetcher::~Prefetcher() { stop(); }

void Prefetcher::start(std::vector<bootstrap::ChunkRef> plan) {
  uint64_t batch_bytes = 0;
  for (bootstrap::ChunkRef& chunk : plan) {
    if (batches_.empty() || batch_bytes + chunk.uncompressed_size > options_.merging_size) {
      batches_.emplace_back();
      batch_bytes = 0;
    }
    batch_bytes += chunk.uncompressed_size;
    batches_.back().push_back(std::move(chunk));
  }
  if (metrics_) {
    metrics_->prefetch_planned_chunks.fetch_add(plan.size());
    metrics_->prefetch_begin_ms = unix_ms_now();
  }
  began_ = std::chrono::steady_clock::now();
  const uint32_t threads =
      static_cast<uint32_t>(std::clamp<size_t>(batches_.size(), 1, std::max<uint32_t>(1, options_.threads)));
  LOG_INFO("prefetch: %zu chunks in %zu batches, %u workers, bandwidth %s", plan.size(), batches_.size(), threads,
           options_.bandwidth_rate ? (std::to_string(options_.bandwidth_rate) + " B/s").c_str() : "unlimited");
  if (batches_.empty()) {
    finished_ = true;
    if (metrics_) metrics_->prefetch_end_ms = unix_ms_now();
    return;
  }
  running_ = threads;
  if (metrics_) metrics_->prefetch_workers = threads;
  for (uint32_t i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

void Prefetcher::work() {
  while (!stopping_.load()) {
    const size_t index = next_batch_.fetch_add(1);
    if (index >= batches_.size()) break;
    const auto& batch = batches_[index];
    uint64_t fetched = 0;
    Status s = reader_.ensure_cached(batch, options_.merging_size, &fetched);
    if (!s.ok()) LOG_WARN("prefetch: batch of %zu chunks skipped: %s", batch.size(), s.message().c_str());
    fetched_bytes_ += fetched;
    if (metrics_) metrics_->prefetch_done_chunks.fetch_add(batch.size());
    if (fetched && !bucket_.acquire(fetched)) break;
  }
  if (running_.fetch_sub(1) == 1) {
    if (metrics_) {
      metrics_->prefetch_end_ms = unix_ms_now();
      metrics_->prefetch_workers = 0;
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - began_).count();
    if (!stopping_.load())
      LOG_INFO("prefetch: done, %.1f MiB fetched in %.2f s", static_cast<double>(fetched_bytes_.load()) / (1 << 20),
               secs);
    {
      std::lock_guard<std::mutex> g(done_mu_);
      finished_ = true;
    }
    done_cv_.notify_all();
  }
}

bool Prefetcher::wait(std::chrono::milliseconds deadline) {
  std::unique_lock<std::mutex> lock(done_mu_);
  return done_cv_.wait_for(lock, deadline, [&] { return finished_.load(); });
}

void Prefetcher::stop() {
  stopping_ = true;
  bucket_.cancel();
  for (std::thread& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
}

}  // namespace nydus::backend
