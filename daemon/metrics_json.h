// Serializers for the backend and blob-cache metrics endpoints
// (nydusd-contract.md §3.2, upstream utils/src/metrics.rs BackendMetrics and
// BlobcacheMetrics), and a Prometheus text exposition of every counter the
// JSON endpoints report. The filesystem endpoints' JSON is in
// fs/fs_metrics.h (FsMetrics::fs_metrics_json and friends).
//
// All functions read relaxed atomics: each value is read atomically, the
// set is not a consistent snapshot. They never throw on bad UTF-8 in ids
// (replaced by U+FFFD); they may throw bad_alloc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend_metrics.h"
#include "backend/chunk_reader.h"
#include "fs/fs_metrics.h"

namespace nydus::daemon {

// GET /api/v1/metrics/backend, keys in upstream's order:
// {"backend_type","read_count","read_errors","read_amount_total",
//  "read_cumulative_latency_millis_total",
//  "read_cumulative_latency_millis_dist"[8 size buckets: ms summed],
//  "read_count_block_size_dist"[8 size buckets: requests],
//  "read_latency_sizes_dist"[8 size buckets][8 latency buckets]}.
// Size buckets: <1K,<4K,<16K,<64K,<128K,<512K,<1M,>=1M (backend::size_bucket);
// latency buckets (ms): <=1,<=20,<=50,<=100,<=500,<=1000,<=2000,>2000.
// `backend_type`: BlobBackend::type() ("registry", "localfs", ...).
std::string backend_metrics_json(const backend::BackendMetrics& metrics, const std::string& backend_type);

// GET /api/v1/metrics/blobcache, exactly the contract's key set and order
// (no "id"). Where each value comes from:
//   underlying_files          "<blob_id>.blob.data" of every blob in `blobs`
//                             with an open cache file (cached), blob order
//   store_path                `store_path` (the cache work_dir)
//   partial_hits              0: every cache hit serves a whole chunk
//   whole_hits                CacheMetrics::cache_hits
//   total                     CacheMetrics::chunk_reads (so hit ratio =
//                             (partial_hits + whole_hits) / total, as upstream)
//   entries_count             sum of BlobCacheState::ready_chunks
//   prefetch_data_amount      CacheMetrics::prefetch_bytes (uncompressed bytes
//                             prefetch brought in; upstream counts requested
//                             compressed ranges)
//   prefetch_requests_count   CacheMetrics::prefetch_requests
//   prefetch_workers          CacheMetrics::prefetch_workers
//   prefetch_unmerged_chunks  CacheMetrics::prefetch_chunks
//   prefetch_cumulative_time_millis
//                             end - begin of the prefetch run (now - begin
//                             while it runs; 0 before it starts). Upstream
//                             sums per-request times; ours is the wall time.
//   prefetch_begin_time_secs/_millis, prefetch_end_time_secs/_millis
//                             CacheMetrics::prefetch_begin_ms / _end_ms split
//                             into seconds and the millisecond remainder
//   buffered_backend_size     0: fetched data is never buffered in memory
//   data_all_ready            true when `blobs` is non-empty and every blob
//                             is fully cached (upstream sets it only in
//                             fscache mode)
// `now_unix_ms`: the clock for the running-prefetch case; 0 = read it.
std::string blobcache_metrics_json(const backend::CacheMetrics& metrics,
                                   const std::vector<backend::BlobCacheState>& blobs,
                                   const std::string& store_path, int64_t now_unix_ms = 0);

// Inputs of prometheus_text(); the pointers must be non-null.
struct BackendMetricsSource {
  std::string id;            // the label `id` (virtual mountpoint)
  std::string backend_type;  // the label `backend_type`
  const backend::BackendMetrics* metrics = nullptr;
};
struct BlobcacheMetricsSource {
  std::string id;  // the label `id` (device.id)
  const backend::CacheMetrics* metrics = nullptr;
  std::vector<backend::BlobCacheState> blobs;
};

// Prometheus text exposition format 0.0.4. Every family gets # HELP and
// # TYPE once, then one sample per source; families without samples are
// left out. Label values are escaped (\\, \", \n). Names:
//
// Filesystem (labels id; op = fop_name(): getattr ... batch_forget):
//   nydusd_fs_switch{id,switch}                     gauge 0/1; switch =
//       files_account | access_pattern | latest_read_files | measure_latency
//   nydusd_fop_hits_total{id,op}                    counter (fop_hits)
//   nydusd_fop_errors_total{id,op}                  counter (fop_errors)
//   nydusd_fop_latency_microseconds_total{id,op}    counter (fop_cumulative_latency_total)
//   nydusd_read_bytes_total{id}                     counter (data_read)
//   nydusd_open_files{id}                           gauge (nr_opens)
//   nydusd_read_size_bytes{id,le}                   histogram of block_count_read,
//       le = 1023,4095,16383,65535,131071,524287,1048575,+Inf; _sum = data_read
//   nydusd_read_latency_microseconds{id,le}         histogram of read_latency_dist,
//       le = 200,1000,20000,50000,500000,1000000,2000000,+Inf;
//       _sum = fop_cumulative_latency_total[read]
// Backend (labels id, backend_type):
//   nydusd_backend_read_count_total                 counter (read_count)
//   nydusd_backend_read_errors_total                counter (read_errors)
//   nydusd_backend_read_bytes_total                 counter (read_amount_total)
//   nydusd_backend_read_latency_milliseconds{le}    histogram, le = 1,20,50,100,500,
//       1000,2000,+Inf; _sum = read_cumulative_latency_millis_total
//   nydusd_backend_read_size_bytes{le}              histogram of read_count_block_size_dist
//       (size le as above); _sum = read_amount_total
//   nydusd_backend_read_latency_milliseconds_by_size_total{size_le}
//                                                   counter (read_cumulative_latency_millis_dist)
//   nydusd_backend_reads_by_size_latency_total{size_le,latency_le}
//                                                   counter (read_latency_sizes_dist)
// Blob cache (labels id; blob = blob id):
//   nydusd_blobcache_reads_total                    counter (total: chunk reads)
//   nydusd_blobcache_hits_total                     counter (whole_hits)
//   nydusd_blobcache_entries                        gauge (entries_count)
//   nydusd_blobcache_backend_fetches_total          counter (merged backend requests)
//   nydusd_blobcache_singleflight_waits_total       counter
//   nydusd_blobcache_corrupt_fetches_total          counter
//   nydusd_blobcache_prefetch_bytes_total           counter (prefetch_data_amount)
//   nydusd_blobcache_prefetch_requests_total        counter (prefetch_requests_count)
//   nydusd_blobcache_prefetch_chunks_total          counter (prefetch_unmerged_chunks)
//   nydusd_blobcache_prefetch_workers               gauge
//   nydusd_blobcache_data_all_ready                 gauge 0/1
//   nydusd_blobcache_blob_ready_chunks{id,blob}     gauge
//   nydusd_blobcache_blob_chunks{id,blob}           gauge
// Per-inode counters are not exported (unbounded label cardinality).
std::string prometheus_text(const std::vector<const fs::FsMetrics*>& filesystems,
                            const std::vector<BackendMetricsSource>& backends,
                            const std::vector<BlobcacheMetricsSource>& caches);

}  // namespace nydus::daemon
