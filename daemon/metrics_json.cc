#include "daemon/metrics_json.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

namespace nydus::daemon {
namespace {

using ordered_json = nlohmann::ordered_json;

std::string dump(const ordered_json& j) { return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace); }

template <size_t N>
ordered_json to_array(const std::atomic<uint64_t> (&counters)[N]) {
  ordered_json a = ordered_json::array();
  for (const auto& c : counters) a.push_back(c.load(std::memory_order_relaxed));
  return a;
}

uint64_t load(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }

int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A prefetch timestamp (unix ms, 0 = unset) as upstream's secs + millis pair.
uint64_t ms_secs(int64_t ms) { return ms > 0 ? static_cast<uint64_t>(ms / 1000) : 0; }
uint64_t ms_millis(int64_t ms) { return ms > 0 ? static_cast<uint64_t>(ms % 1000) : 0; }

// ---- Prometheus text format ----

using Labels = std::vector<std::pair<std::string_view, std::string>>;

// Upper bounds ("le") of the size and latency buckets, last one +Inf.
constexpr std::array<std::string_view, 8> kSizeLe = {"1023",   "4095",    "16383",   "65535",
                                                     "131071", "524287",  "1048575", "+Inf"};
constexpr std::array<std::string_view, 8> kFsLatencyLe = {"200",    "1000",    "20000",   "50000",
                                                          "500000", "1000000", "2000000", "+Inf"};
constexpr std::array<std::string_view, 8> kBackendLatencyLe = {"1",   "20",   "50",   "100",
                                                               "500", "1000", "2000", "+Inf"};

class PromWriter {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }

  void sample(std::string_view name, const Labels& labels, uint64_t value) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      bool first = true;
      for (const auto& [key, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += key;
        out_ += "=\"";
        escape(v);
        out_ += '"';
      }
      out_ += '}';
    }
    out_ += ' ';
    out_ += std::to_string(value);
    out_ += '\n';
  }

  // Cumulative buckets from per-bucket `counts`, then _sum and _count.
  void histogram(std::string_view name, Labels labels, const std::array<std::string_view, 8>& le,
                 const std::array<uint64_t, 8>& counts, uint64_t sum) {
    const std::string bucket = std::string(name) + "_bucket";
    uint64_t cumulative = 0;
    labels.emplace_back("le", "");
    for (size_t i = 0; i < 8; ++i) {
      cumulative += counts[i];
      labels.back().second = std::string(le[i]);
      sample(bucket, labels, cumulative);
    }
    labels.pop_back();
    sample(std::string(name) + "_sum", labels, sum);
    sample(std::string(name) + "_count", labels, cumulative);
  }

  std::string take() { return std::move(out_); }

 private:
  void escape(std::string_view v) {
    for (char c : v) {
      if (c == '\\')
        out_ += "\\\\";
      else if (c == '"')
        out_ += "\\\"";
      else if (c == '\n')
        out_ += "\\n";
      else
        out_ += c;
    }
  }

  std::string out_;
};

template <size_t N>
std::array<uint64_t, N> loads(const std::atomic<uint64_t> (&counters)[N]) {
  std::array<uint64_t, N> out{};
  for (size_t i = 0; i < N; ++i) out[i] = load(counters[i]);
  return out;
}

// Emits one family with a sample per source in `items` (nothing when empty).
template <typename T, typename Fn>
void each_family(PromWriter& w, const std::vector<T>& items, std::string_view name, std::string_view type,
                 std::string_view help, Fn&& fn) {
  if (items.empty()) return;
  w.family(name, type, help);
  for (const auto& item : items) fn(item);
}

void write_fs(PromWriter& w, const std::vector<const fs::FsMetrics*>& list) {
  using fs::Fop;
  auto id = [](const fs::FsMetrics* m) { return Labels{{"id", m->id()}}; };
  auto per_op = [&](std::string_view name, std::string_view help, uint64_t (fs::FsMetrics::*get)(Fop) const) {
    each_family(w, list, name, "counter", help, [&](const fs::FsMetrics* m) {
      for (size_t i = 0; i < fs::kFopCount; ++i) {
        const auto op = static_cast<Fop>(i);
        w.sample(name, {{"id", m->id()}, {"op", fs::fop_name(op)}}, (m->*get)(op));
      }
    });
  };
  each_family(w, list, "nydusd_fs_switch", "gauge", "Filesystem metrics switches (1 = on).",
              [&](const fs::FsMetrics* m) {
                w.sample("nydusd_fs_switch", {{"id", m->id()}, {"switch", "files_account"}}, m->files_account());
                w.sample("nydusd_fs_switch", {{"id", m->id()}, {"switch", "access_pattern"}}, m->access_pattern());
                w.sample("nydusd_fs_switch", {{"id", m->id()}, {"switch", "latest_read_files"}},
                         m->latest_read_files());
                w.sample("nydusd_fs_switch", {{"id", m->id()}, {"switch", "measure_latency"}}, m->measure_latency());
              });
  per_op("nydusd_fop_hits_total", "FUSE operations that succeeded.", &fs::FsMetrics::fop_hits);
  per_op("nydusd_fop_errors_total", "FUSE operations that failed.", &fs::FsMetrics::fop_errors);
  per_op("nydusd_fop_latency_microseconds_total", "Cumulative FUSE operation latency in microseconds.",
         &fs::FsMetrics::fop_latency_us);
  each_family(w, list, "nydusd_read_bytes_total", "counter", "File bytes returned by FUSE reads.",
              [&](const fs::FsMetrics* m) { w.sample("nydusd_read_bytes_total", id(m), m->data_read()); });
  each_family(w, list, "nydusd_open_files", "gauge", "Files open through FUSE OPEN and not yet released.",
              [&](const fs::FsMetrics* m) { w.sample("nydusd_open_files", id(m), m->nr_opens()); });
  each_family(w, list, "nydusd_read_size_bytes", "histogram", "FUSE reads by bytes returned.",
              [&](const fs::FsMetrics* m) {
                std::array<uint64_t, 8> counts{};
                for (size_t i = 0; i < 8; ++i) counts[i] = m->block_count_read(i);
                w.histogram("nydusd_read_size_bytes", id(m), kSizeLe, counts, m->data_read());
              });
  each_family(w, list, "nydusd_read_latency_microseconds", "histogram", "FUSE read latency in microseconds.",
              [&](const fs::FsMetrics* m) {
                std::array<uint64_t, 8> counts{};
                for (size_t i = 0; i < 8; ++i) counts[i] = m->read_latency_dist(i);
                w.histogram("nydusd_read_latency_microseconds", id(m), kFsLatencyLe, counts,
                            m->fop_latency_us(Fop::kRead));
              });
}

void write_backends(PromWriter& w, const std::vector<BackendMetricsSource>& list) {
  auto labels = [](const BackendMetricsSource& s) {
    return Labels{{"id", s.id}, {"backend_type", s.backend_type}};
  };
  auto scalar = [&](std::string_view name, std::string_view help, const std::atomic<uint64_t> backend::BackendMetrics::*field) {
    each_family(w, list, name, "counter", help,
                [&](const BackendMetricsSource& s) { w.sample(name, labels(s), load(s.metrics->*field)); });
  };
  scalar("nydusd_backend_read_count_total", "Backend read requests.", &backend::BackendMetrics::read_count);
  scalar("nydusd_backend_read_errors_total", "Backend read requests that failed.",
         &backend::BackendMetrics::read_errors);
  scalar("nydusd_backend_read_bytes_total", "Bytes received from the backend.",
         &backend::BackendMetrics::read_amount_total);
  each_family(w, list, "nydusd_backend_read_latency_milliseconds", "histogram",
              "Backend read latency in milliseconds.", [&](const BackendMetricsSource& s) {
                w.histogram("nydusd_backend_read_latency_milliseconds", labels(s), kBackendLatencyLe,
                            loads(s.metrics->read_latency_dist), load(s.metrics->read_latency_ms_total));
              });
  each_family(w, list, "nydusd_backend_read_size_bytes", "histogram", "Backend reads by bytes received.",
              [&](const BackendMetricsSource& s) {
                w.histogram("nydusd_backend_read_size_bytes", labels(s), kSizeLe,
                            loads(s.metrics->read_count_block_size_dist), load(s.metrics->read_amount_total));
              });
  each_family(w, list, "nydusd_backend_read_latency_milliseconds_by_size_total", "counter",
              "Cumulative backend read latency in milliseconds, by request size bucket (upper bound in bytes).",
              [&](const BackendMetricsSource& s) {
                for (size_t i = 0; i < 8; ++i) {
                  Labels l = labels(s);
                  l.emplace_back("size_le", std::string(kSizeLe[i]));
                  w.sample("nydusd_backend_read_latency_milliseconds_by_size_total", l,
                           load(s.metrics->read_cumulative_latency_millis_dist[i]));
                }
              });
  each_family(w, list, "nydusd_backend_reads_by_size_latency_total", "counter",
              "Backend reads by request size bucket (bytes) and latency bucket (milliseconds).",
              [&](const BackendMetricsSource& s) {
                for (size_t i = 0; i < 8; ++i) {
                  for (size_t k = 0; k < 8; ++k) {
                    Labels l = labels(s);
                    l.emplace_back("size_le", std::string(kSizeLe[i]));
                    l.emplace_back("latency_le", std::string(kBackendLatencyLe[k]));
                    w.sample("nydusd_backend_reads_by_size_latency_total", l,
                             load(s.metrics->read_latency_sizes_dist[i][k]));
                  }
                }
              });
}

uint64_t entries_count(const std::vector<backend::BlobCacheState>& blobs) {
  uint64_t n = 0;
  for (const auto& b : blobs) n += b.ready_chunks;
  return n;
}

bool all_ready(const std::vector<backend::BlobCacheState>& blobs) {
  return !blobs.empty() &&
         std::all_of(blobs.begin(), blobs.end(), [](const backend::BlobCacheState& b) { return b.fully_cached; });
}

void write_caches(PromWriter& w, const std::vector<BlobcacheMetricsSource>& list) {
  auto id = [](const BlobcacheMetricsSource& s) { return Labels{{"id", s.id}}; };
  auto scalar = [&](std::string_view name, std::string_view type, std::string_view help,
                    const std::function<uint64_t(const BlobcacheMetricsSource&)>& value) {
    each_family(w, list, name, type, help, [&](const BlobcacheMetricsSource& s) { w.sample(name, id(s), value(s)); });
  };
  using CM = backend::CacheMetrics;
  auto field = [](const std::atomic<uint64_t> CM::*f) {
    return [f](const BlobcacheMetricsSource& s) { return load(s.metrics->*f); };
  };
  scalar("nydusd_blobcache_reads_total", "counter", "Chunk reads through the blob cache.", field(&CM::chunk_reads));
  scalar("nydusd_blobcache_hits_total", "counter", "Chunk reads served from the blob cache.", field(&CM::cache_hits));
  scalar("nydusd_blobcache_entries", "gauge", "Chunks ready in the blob cache.",
         [](const BlobcacheMetricsSource& s) { return entries_count(s.blobs); });
  scalar("nydusd_blobcache_backend_fetches_total", "counter", "Merged backend requests made by the blob cache.",
         field(&CM::backend_fetches));
  scalar("nydusd_blobcache_singleflight_waits_total", "counter",
         "Chunk reads that waited for another reader's fetch.", field(&CM::singleflight_waits));
  scalar("nydusd_blobcache_corrupt_fetches_total", "counter", "Fetched chunks that failed verification.",
         field(&CM::corrupt_fetches));
  scalar("nydusd_blobcache_prefetch_bytes_total", "counter", "Uncompressed bytes brought in by prefetch.",
         field(&CM::prefetch_bytes));
  scalar("nydusd_blobcache_prefetch_requests_total", "counter", "Backend requests made by prefetch.",
         field(&CM::prefetch_requests));
  scalar("nydusd_blobcache_prefetch_chunks_total", "counter", "Chunks fetched by prefetch.",
         field(&CM::prefetch_chunks));
  scalar("nydusd_blobcache_prefetch_workers", "gauge", "Prefetch worker threads running.",
         [](const BlobcacheMetricsSource& s) { return uint64_t{s.metrics->prefetch_workers.load(std::memory_order_relaxed)}; });
  scalar("nydusd_blobcache_data_all_ready", "gauge", "1 when every blob is fully cached.",
         [](const BlobcacheMetricsSource& s) { return uint64_t{all_ready(s.blobs)}; });
  auto per_blob = [&](std::string_view name, std::string_view help,
                      const std::function<uint64_t(const backend::BlobCacheState&)>& value) {
    each_family(w, list, name, "gauge", help, [&](const BlobcacheMetricsSource& s) {
      for (const auto& b : s.blobs) w.sample(name, {{"id", s.id}, {"blob", b.blob_id}}, value(b));
    });
  };
  per_blob("nydusd_blobcache_blob_ready_chunks", "Chunks of the blob ready in the cache.",
           [](const backend::BlobCacheState& b) { return uint64_t{b.ready_chunks}; });
  per_blob("nydusd_blobcache_blob_chunks", "Chunks in the blob.",
           [](const backend::BlobCacheState& b) { return uint64_t{b.chunk_count}; });
}

}  // namespace

std::string backend_metrics_json(const backend::BackendMetrics& m, const std::string& backend_type) {
  ordered_json j;
  j["backend_type"] = backend_type;
  j["read_count"] = load(m.read_count);
  j["read_errors"] = load(m.read_errors);
  j["read_amount_total"] = load(m.read_amount_total);
  j["read_cumulative_latency_millis_total"] = load(m.read_latency_ms_total);
  j["read_cumulative_latency_millis_dist"] = to_array(m.read_cumulative_latency_millis_dist);
  j["read_count_block_size_dist"] = to_array(m.read_count_block_size_dist);
  ordered_json matrix = ordered_json::array();
  for (const auto& row : m.read_latency_sizes_dist) matrix.push_back(to_array(row));
  j["read_latency_sizes_dist"] = std::move(matrix);
  return dump(j);
}

std::string blobcache_metrics_json(const backend::CacheMetrics& m, const std::vector<backend::BlobCacheState>& blobs,
                                   const std::string& store_path, int64_t now_unix_ms) {
  ordered_json files = ordered_json::array();
  for (const auto& b : blobs)
    if (b.cached) files.push_back(b.blob_id + ".blob.data");
  const int64_t begin = m.prefetch_begin_ms.load(std::memory_order_relaxed);
  const int64_t end = m.prefetch_end_ms.load(std::memory_order_relaxed);
  uint64_t cumulative = 0;
  if (begin > 0) {
    const int64_t until = end >= begin ? end : (now_unix_ms > 0 ? now_unix_ms : unix_ms_now());
    cumulative = static_cast<uint64_t>(std::max<int64_t>(0, until - begin));
  }

  ordered_json j;
  j["underlying_files"] = std::move(files);
  j["store_path"] = store_path;
  j["partial_hits"] = 0;
  j["whole_hits"] = load(m.cache_hits);
  j["total"] = load(m.chunk_reads);
  j["entries_count"] = entries_count(blobs);
  j["prefetch_data_amount"] = load(m.prefetch_bytes);
  j["prefetch_requests_count"] = load(m.prefetch_requests);
  j["prefetch_workers"] = m.prefetch_workers.load(std::memory_order_relaxed);
  j["prefetch_unmerged_chunks"] = load(m.prefetch_chunks);
  j["prefetch_cumulative_time_millis"] = cumulative;
  j["prefetch_begin_time_secs"] = ms_secs(begin);
  j["prefetch_begin_time_millis"] = ms_millis(begin);
  j["prefetch_end_time_secs"] = ms_secs(end);
  j["prefetch_end_time_millis"] = ms_millis(end);
  j["buffered_backend_size"] = 0;
  j["data_all_ready"] = all_ready(blobs);
  return dump(j);
}

std::string prometheus_text(const std::vector<const fs::FsMetrics*>& filesystems,
                            const std::vector<BackendMetricsSource>& backends,
                            const std::vector<BlobcacheMetricsSource>& caches) {
  PromWriter w;
  write_fs(w, filesystems);
  write_backends(w, backends);
  write_caches(w, caches);
  return w.take();
}

}  // namespace nydus::daemon
