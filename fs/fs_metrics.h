// fs::FsMetrics: per-mount filesystem counters, upstream nydusd's FsIoStats
// (utils/src/metrics.rs), served by GET /api/v1/metrics, /metrics/files and
// /metrics/pattern (nydusd-contract.md §3.2).
//
// What is counted, per FUSE op (fop index as upstream's StatsFop: 0 getattr,
// 1 readlink, 2 open, 3 release, 4 read, 5 statfs, 6 getxattr, 7 listxattr,
// 8 opendir, 9 lookup, 10 readdir, 11 readdirplus, 12 access, 13 forget,
// 14 batch_forget):
//   - fop_hits[op] on success, fop_errors[op] on failure;
//   - fop_cumulative_latency_total[op]: microseconds, when measure_latency;
//   - reads only: data_read (bytes returned), block_count_read[size bucket of
//     the bytes returned: <1K,<4K,<16K,<64K,<128K,<512K,<1M,>=1M; a failed
//     read counts in bucket 0, as upstream], read_latency_dist[µs bucket:
//     <=200,<=1ms,<=20ms,<=50ms,<=500ms,<=1s,<=2s,>2s] when measure_latency;
//   - nr_opens: +1 per successful open, -1 per successful release (never
//     reported below 0). With zero-message open (kernel FUSE_NO_OPEN_SUPPORT)
//     the kernel sends one OPEN, which we answer ENOSYS, and then no OPEN or
//     RELEASE at all: that OPEN counts as an open hit but not in nr_opens.
// Switches (each a relaxed atomic, may be flipped at any time; config v1
// `iostats_files`, `access_pattern`, `latest_read_files`):
//   - files_account: per-inode counters (total_fops, data_read,
//     block_count_read[8], fop_hits[15], fop_errors[15]) for every op on an
//     inode (lookup/readdir count on the directory);
//   - access_pattern: per inode, every read (success or not) bumps nr_read
//     and the first one stamps the wall-clock time;
//   - record_latest_read_files: a bitmap of inodes read successfully since
//     the last GET /metrics/files?latest=true;
//   - measure_latency (default on): the latency counters above.
//
// Differences from upstream, all deliberate: upstream Rafs counts only
// lookup, getattr, readlink, read, getxattr, listxattr, readdir(plus) and
// access, and latency only for reads that reach the blob device; we count
// every op listed above and time every op (read_latency_dist stays
// read-only). Upstream's per-inode fop_hits also counts failed ops; ours
// splits them into fop_errors. Upstream pre-creates per-inode entries on
// lookup/readdir, so never-touched inodes appear with zeros; ours appear on
// their first op.
//
// Inode numbers are the image's (bootstrap::Ino: v5 i_ino, v6 nid), as
// upstream's, not FUSE node ids; the FUSE adapter translates.
//
// Thread-safety: everything may be called from any thread at once. The
// global counters are relaxed atomics (lock-free). Per-inode records live in
// sharded maps: a shared lock on one shard to find the record, an exclusive
// one only to create it; nothing is taken when the switches are off.
// Readers (the JSON serializers) see each counter atomically but not a
// consistent snapshot across counters.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace nydus::fs {

// Upstream's StatsFop order; the index into fop_hits/fop_errors/latency.
enum class Fop : uint8_t {
  kGetattr = 0,
  kReadlink,
  kOpen,
  kRelease,
  kRead,
  kStatfs,
  kGetxattr,
  kListxattr,
  kOpendir,
  kLookup,
  kReaddir,
  kReaddirplus,
  kAccess,
  kForget,
  kBatchForget,
};
inline constexpr size_t kFopCount = 15;
inline constexpr size_t kSizeBuckets = 8;
inline constexpr size_t kLatencyBuckets = 8;

// "getattr", "readlink", ..., "batch_forget" (upstream's names, lower case).
const char* fop_name(Fop fop);

// block_count_read bucket of a read of `bytes` (backend::size_bucket).
size_t read_size_bucket(uint64_t bytes);
// read_latency_dist bucket of `micros` (upstream latency_micros_range_index):
// <=200, <=1000, <=20000, <=50000, <=500000, <=1000000, <=2000000, more.
size_t latency_bucket_us(uint64_t micros);

// An ino that takes no per-inode accounting (e.g. batch_forget).
inline constexpr uint64_t kNoInode = ~uint64_t{0};

struct FsMetricsOptions {
  bool files_account = false;      // iostats_files
  bool access_pattern = false;     // access_pattern
  bool latest_read_files = false;  // latest_read_files
  bool measure_latency = true;
};

// How one op ended, for FsMetrics::record.
enum class FopOutcome : uint8_t {
  kError,
  kOk,
  // Succeeded in a way after which no RELEASE follows (zero-message open):
  // a hit, but nr_opens is left alone.
  kOkNoRelease,
};

class FsMetrics {
 public:
  // `id`: the mount's id in the API (the virtual mountpoint, "/" for the
  // dedicated mount).
  explicit FsMetrics(std::string id, FsMetricsOptions options = {});
  ~FsMetrics();
  FsMetrics(const FsMetrics&) = delete;
  FsMetrics& operator=(const FsMetrics&) = delete;

  const std::string& id() const { return id_; }

  void set_files_account(bool on) { files_account_.store(on, std::memory_order_relaxed); }
  void set_access_pattern(bool on) { access_pattern_.store(on, std::memory_order_relaxed); }
  void set_latest_read_files(bool on) { latest_read_files_.store(on, std::memory_order_relaxed); }
  void set_measure_latency(bool on) { measure_latency_.store(on, std::memory_order_relaxed); }
  bool files_account() const { return files_account_.load(std::memory_order_relaxed); }
  bool access_pattern() const { return access_pattern_.load(std::memory_order_relaxed); }
  bool latest_read_files() const { return latest_read_files_.load(std::memory_order_relaxed); }
  bool measure_latency() const { return measure_latency_.load(std::memory_order_relaxed); }

  // Records one finished op on inode `ino` (kNoInode: no per-inode
  // accounting). `bytes`: for reads, the bytes returned (ignored
  // otherwise). `latency_us`: std::nullopt when not measured. Never throws;
  // if a per-inode record cannot be allocated, only that record is skipped.
  void record(Fop fop, uint64_t ino, FopOutcome outcome, uint64_t bytes,
              std::optional<uint64_t> latency_us) noexcept;

  // --- Counter reads (relaxed; for tests, logs and exporters) ---
  uint64_t fop_hits(Fop fop) const { return fop_hits_[index(fop)].load(std::memory_order_relaxed); }
  uint64_t fop_errors(Fop fop) const { return fop_errors_[index(fop)].load(std::memory_order_relaxed); }
  uint64_t fop_latency_us(Fop fop) const { return fop_latency_us_[index(fop)].load(std::memory_order_relaxed); }
  uint64_t data_read() const { return data_read_.load(std::memory_order_relaxed); }
  uint64_t block_count_read(size_t bucket) const { return block_count_read_[bucket].load(std::memory_order_relaxed); }
  uint64_t read_latency_dist(size_t bucket) const { return read_latency_dist_[bucket].load(std::memory_order_relaxed); }
  // Open files as counted (see the header comment); never below 0.
  uint64_t nr_opens() const;

  // One inode's counters, copied out.
  struct FileSnapshot {
    uint64_t ino = 0;
    uint64_t total_fops = 0;
    uint64_t data_read = 0;
    std::array<uint64_t, kSizeBuckets> block_count_read{};
    std::array<uint64_t, kFopCount> fop_hits{};
    std::array<uint64_t, kFopCount> fop_errors{};
  };
  struct AccessSnapshot {
    uint64_t ino = 0;
    uint64_t nr_read = 0;
    uint64_t first_access_time_secs = 0;
    uint32_t first_access_time_nanos = 0;
  };
  // Per-inode counters, by ino.
  std::vector<FileSnapshot> file_stats() const;
  // Access records with nr_read > 0, by first access time, then ino.
  std::vector<AccessSnapshot> access_patterns() const;
  // Inodes in the latest-read bitmap as upstream's runs: [[start,end],[ino],...]
  // ([x] for a run of one), ascending. With `clear`, the bits reported are
  // cleared atomically word by word: a read racing with it is reported now
  // or next time, never lost.
  std::vector<std::vector<uint64_t>> latest_read_files(bool clear);

  // --- JSON (upstream's serde output; keys in upstream's order) ---
  // GET /api/v1/metrics: {"files_account_enabled","access_pattern_enabled",
  // "record_latest_read_files_enabled","measure_latency","id","nr_opens",
  // "data_read","block_count_read"[8],"fop_hits"[15],"fop_errors"[15],
  // "fop_cumulative_latency_total"[15],"read_latency_dist"[8]}.
  std::string fs_metrics_json() const;
  // GET /api/v1/metrics/files: {"<ino>":{"total_fops","data_read",
  // "block_count_read"[8],"fop_hits"[15],"fop_errors"[15]},...} ({} when
  // files_account never recorded anything); with `latest`, the bitmap runs
  // `[[start,end],[ino],...]` instead, and the bitmap is cleared.
  std::string files_metrics_json(bool latest);
  // GET /api/v1/metrics/pattern: [{"ino","nr_read","first_access_time_secs",
  // "first_access_time_nanos"},...] ([] when nothing was recorded).
  std::string access_patterns_json() const;

 private:
  struct FileCounters;
  struct AccessRecord;
  template <typename T>
  class InodeTable;
  class InodeBitmap;

  static size_t index(Fop fop) { return static_cast<size_t>(fop); }
  void record_file(Fop fop, uint64_t ino, bool ok, uint64_t bytes);
  void record_access(uint64_t ino);

  const std::string id_;
  std::atomic<bool> files_account_;
  std::atomic<bool> access_pattern_;
  std::atomic<bool> latest_read_files_;
  std::atomic<bool> measure_latency_;

  std::atomic<int64_t> nr_opens_{0};
  std::atomic<uint64_t> data_read_{0};
  std::atomic<uint64_t> block_count_read_[kSizeBuckets] = {};
  std::atomic<uint64_t> fop_hits_[kFopCount] = {};
  std::atomic<uint64_t> fop_errors_[kFopCount] = {};
  std::atomic<uint64_t> fop_latency_us_[kFopCount] = {};
  std::atomic<uint64_t> read_latency_dist_[kLatencyBuckets] = {};

  std::unique_ptr<InodeTable<FileCounters>> files_;
  std::unique_ptr<InodeTable<AccessRecord>> access_;
  std::unique_ptr<InodeBitmap> latest_read_;
};

// Times one FUSE op and records it into a FsMetrics when it goes out of
// scope: an error unless success() (or success_no_release()) was called, so
// an early return or an exception counts as a failure. A null `metrics`
// makes every member a no-op (one branch). Cost with metrics: one
// steady_clock pair (none when measure_latency is off) and a few relaxed
// atomic adds; per-inode work only when a switch is on.
// Not copyable or movable; use on one thread.
class FopTimer {
 public:
  FopTimer(FsMetrics* metrics, Fop fop, uint64_t ino) noexcept : metrics_(metrics), ino_(ino), fop_(fop) {
    if (metrics_ && metrics_->measure_latency()) {
      timed_ = true;
      start_ = std::chrono::steady_clock::now();
    }
  }
  ~FopTimer() {
    if (metrics_) finish();
  }
  FopTimer(const FopTimer&) = delete;
  FopTimer& operator=(const FopTimer&) = delete;

  // The op succeeded; `bytes` is what a read returned.
  void success(uint64_t bytes = 0) noexcept {
    outcome_ = FopOutcome::kOk;
    bytes_ = bytes;
  }
  // Open answered with zero-message open: a hit, nr_opens unchanged.
  void success_no_release() noexcept { outcome_ = FopOutcome::kOkNoRelease; }
  // Back to failure (e.g. the reply could not be delivered).
  void failure() noexcept {
    outcome_ = FopOutcome::kError;
    bytes_ = 0;
  }

 private:
  void finish() noexcept;

  FsMetrics* const metrics_;
  const uint64_t ino_;
  uint64_t bytes_ = 0;
  std::chrono::steady_clock::time_point start_{};  // valid when timed_
  const Fop fop_;
  FopOutcome outcome_ = FopOutcome::kError;
  bool timed_ = false;
};

// The FsMetrics of every mounted instance, by id, with upstream's lookup
// rule (utils/src/metrics.rs export_global_stats): an id must match
// exactly; without an id the only instance answers, and with none or
// several there is no answer (the API's 404 NoCounter). Thread-safe.
class FsMetricsRegistry {
 public:
  // Replaces any instance with the same id.
  void add(std::shared_ptr<FsMetrics> metrics);
  // False when `id` is not registered.
  bool remove(const std::string& id);
  // nullptr when there is no answer (see above).
  std::shared_ptr<FsMetrics> find(const std::optional<std::string>& id) const;
  std::vector<std::shared_ptr<FsMetrics>> all() const;  // by id

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<FsMetrics>> by_id_;  // GUARDED_BY(mu_)
};

}  // namespace nydus::fs
