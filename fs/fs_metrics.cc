#include "fs/fs_metrics.h"

#include <algorithm>
#include <shared_mutex>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "backend/backend_metrics.h"

namespace nydus::fs {
namespace {

using ordered_json = nlohmann::ordered_json;

constexpr const char* kFopNames[kFopCount] = {
    "getattr", "readlink", "open",    "release", "read",   "statfs",      "getxattr",    "listxattr",
    "opendir", "lookup",   "readdir", "readdirplus", "access", "forget", "batch_forget",
};

template <size_t N>
ordered_json to_array(const std::atomic<uint64_t> (&counters)[N]) {
  ordered_json a = ordered_json::array();
  for (const auto& c : counters) a.push_back(c.load(std::memory_order_relaxed));
  return a;
}

template <typename Array>
ordered_json to_array(const Array& values) {
  ordered_json a = ordered_json::array();
  for (uint64_t v : values) a.push_back(v);
  return a;
}

// Ids and other strings come from clients; never throw on bad UTF-8.
std::string dump(const ordered_json& j) { return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace); }

uint64_t unix_nanos_now() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

const char* fop_name(Fop fop) {
  const auto i = static_cast<size_t>(fop);
  return i < kFopCount ? kFopNames[i] : "unknown";
}

size_t read_size_bucket(uint64_t bytes) { return backend::size_bucket(bytes); }

size_t latency_bucket_us(uint64_t micros) {
  static constexpr uint64_t kBounds[] = {200, 1'000, 20'000, 50'000, 500'000, 1'000'000, 2'000'000};
  size_t i = 0;
  while (i < 7 && micros > kBounds[i]) ++i;
  return i;
}

// ---- Per-inode storage ----

struct FsMetrics::FileCounters {
  explicit FileCounters(uint64_t inode) : ino(inode) {}
  const uint64_t ino;
  std::atomic<uint64_t> total_fops{0};
  std::atomic<uint64_t> data_read{0};
  std::atomic<uint64_t> block_count_read[kSizeBuckets] = {};
  std::atomic<uint64_t> fop_hits[kFopCount] = {};
  std::atomic<uint64_t> fop_errors[kFopCount] = {};
};

struct FsMetrics::AccessRecord {
  explicit AccessRecord(uint64_t inode) : ino(inode) {}
  const uint64_t ino;
  std::atomic<uint64_t> nr_read{0};
  std::atomic<uint64_t> first_access_ns{0};  // unix time; 0 = not yet
};

// Records by ino in kShards maps, each behind its own reader/writer lock.
// Records are never removed, so a pointer handed out stays valid for the
// life of the table.
template <typename T>
class FsMetrics::InodeTable {
 public:
  // The record of `ino`, created on first use. May throw bad_alloc.
  T& get(uint64_t ino) {
    Shard& s = shard(ino);
    {
      std::shared_lock<std::shared_mutex> lock(s.mu);
      if (auto it = s.map.find(ino); it != s.map.end()) return *it->second;
    }
    std::unique_lock<std::shared_mutex> lock(s.mu);
    auto& slot = s.map[ino];
    if (!slot) slot = std::make_unique<T>(ino);
    return *slot;
  }

  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const Shard& s : shards_) {
      std::shared_lock<std::shared_mutex> lock(s.mu);
      for (const auto& [ino, record] : s.map) fn(*record);
    }
  }

 private:
  static constexpr size_t kShardBits = 4;
  struct alignas(64) Shard {
    mutable std::shared_mutex mu;
    std::unordered_map<uint64_t, std::unique_ptr<T>> map;  // GUARDED_BY(mu)
  };
  // Fibonacci hashing: neighbouring inos (a directory walk) spread out.
  Shard& shard(uint64_t ino) { return shards_[(ino * 0x9E3779B97F4A7C15ull) >> (64 - kShardBits)]; }

  std::array<Shard, size_t{1} << kShardBits> shards_;
};

// Upstream's InodeBitmap (utils/src/inode_bitmap.rs): 64-inode words in an
// ordered map; a word is created under the exclusive lock, bits are set and
// cleared under the shared one.
class FsMetrics::InodeBitmap {
 public:
  void set(uint64_t ino) {
    const uint64_t word = ino >> 6;
    const uint64_t mask = uint64_t{1} << (ino & 63);
    {
      std::shared_lock<std::shared_mutex> lock(mu_);
      if (auto it = words_.find(word); it != words_.end()) {
        // Re-reading a file is the common case: skip the write.
        if ((it->second.load(std::memory_order_relaxed) & mask) == 0)
          it->second.fetch_or(mask, std::memory_order_relaxed);
        return;
      }
    }
    std::unique_lock<std::shared_mutex> lock(mu_);
    words_.try_emplace(word).first->second.fetch_or(mask, std::memory_order_relaxed);
  }

  std::vector<std::vector<uint64_t>> runs(bool clear) {
    std::vector<std::vector<uint64_t>> out;
    auto push = [&](uint64_t start, uint64_t end) {
      if (start == end)
        out.push_back({start});
      else
        out.push_back({start, end});
    };
    std::shared_lock<std::shared_mutex> lock(mu_);
    bool open = false;
    uint64_t start = 0, last = 0;
    for (auto& [word, bits] : words_) {
      uint64_t v = clear ? bits.exchange(0, std::memory_order_relaxed) : bits.load(std::memory_order_relaxed);
      while (v != 0) {
        const uint64_t ino = (word << 6) + static_cast<uint64_t>(__builtin_ctzll(v));
        v &= v - 1;
        if (!open) {
          open = true;
          start = ino;
        } else if (ino != last + 1) {
          push(start, last);
          start = ino;
        }
        last = ino;
      }
    }
    if (open) push(start, last);
    return out;
  }

 private:
  mutable std::shared_mutex mu_;
  std::map<uint64_t, std::atomic<uint64_t>> words_;  // GUARDED_BY(mu_) for insertion
};

// ---- FsMetrics ----

FsMetrics::FsMetrics(std::string id, FsMetricsOptions options)
    : id_(std::move(id)),
      files_account_(options.files_account),
      access_pattern_(options.access_pattern),
      latest_read_files_(options.latest_read_files),
      measure_latency_(options.measure_latency),
      files_(std::make_unique<InodeTable<FileCounters>>()),
      access_(std::make_unique<InodeTable<AccessRecord>>()),
      latest_read_(std::make_unique<InodeBitmap>()) {}

FsMetrics::~FsMetrics() = default;

uint64_t FsMetrics::nr_opens() const {
  // Releases of files opened before a takeover can outnumber the opens seen.
  return static_cast<uint64_t>(std::max<int64_t>(0, nr_opens_.load(std::memory_order_relaxed)));
}

void FsMetrics::record(Fop fop, uint64_t ino, FopOutcome outcome, uint64_t bytes,
                       std::optional<uint64_t> latency_us) noexcept {
  const size_t op = index(fop);
  if (op >= kFopCount) return;
  const bool ok = outcome != FopOutcome::kError;
  const bool read = fop == Fop::kRead;
  if (!ok || !read) bytes = 0;

  if (ok) {
    fop_hits_[op].fetch_add(1, std::memory_order_relaxed);
    if (read) {
      data_read_.fetch_add(bytes, std::memory_order_relaxed);
    } else if (fop == Fop::kOpen && outcome == FopOutcome::kOk) {
      nr_opens_.fetch_add(1, std::memory_order_relaxed);
    } else if (fop == Fop::kRelease) {
      nr_opens_.fetch_sub(1, std::memory_order_relaxed);
    }
  } else {
    fop_errors_[op].fetch_add(1, std::memory_order_relaxed);
  }
  // As upstream's fop_update: every read lands in a size bucket, a failed
  // one (0 bytes) in the first.
  if (read) block_count_read_[read_size_bucket(bytes)].fetch_add(1, std::memory_order_relaxed);
  if (latency_us) {
    fop_latency_us_[op].fetch_add(*latency_us, std::memory_order_relaxed);
    if (read) read_latency_dist_[latency_bucket_us(*latency_us)].fetch_add(1, std::memory_order_relaxed);
  }

  if (ino == kNoInode) return;
  try {
    if (files_account()) record_file(fop, ino, ok, bytes);
    if (read) {
      if (access_pattern()) record_access(ino);
      if (ok && latest_read_files()) latest_read_->set(ino);
    }
  } catch (...) {
    // Out of memory for a new per-inode record: that record is skipped.
  }
}

void FsMetrics::record_file(Fop fop, uint64_t ino, bool ok, uint64_t bytes) {
  FileCounters& f = files_->get(ino);
  const size_t op = index(fop);
  f.total_fops.fetch_add(1, std::memory_order_relaxed);
  (ok ? f.fop_hits : f.fop_errors)[op].fetch_add(1, std::memory_order_relaxed);
  if (fop == Fop::kRead) {
    f.data_read.fetch_add(bytes, std::memory_order_relaxed);
    f.block_count_read[read_size_bucket(bytes)].fetch_add(1, std::memory_order_relaxed);
  }
}

void FsMetrics::record_access(uint64_t ino) {
  AccessRecord& r = access_->get(ino);
  r.nr_read.fetch_add(1, std::memory_order_relaxed);
  if (r.first_access_ns.load(std::memory_order_relaxed) == 0) {
    uint64_t expected = 0;
    r.first_access_ns.compare_exchange_strong(expected, unix_nanos_now(), std::memory_order_relaxed);
  }
}

std::vector<FsMetrics::FileSnapshot> FsMetrics::file_stats() const {
  std::vector<FileSnapshot> out;
  files_->for_each([&](const FileCounters& f) {
    FileSnapshot s;
    s.ino = f.ino;
    s.total_fops = f.total_fops.load(std::memory_order_relaxed);
    s.data_read = f.data_read.load(std::memory_order_relaxed);
    for (size_t i = 0; i < kSizeBuckets; ++i) s.block_count_read[i] = f.block_count_read[i].load(std::memory_order_relaxed);
    for (size_t i = 0; i < kFopCount; ++i) {
      s.fop_hits[i] = f.fop_hits[i].load(std::memory_order_relaxed);
      s.fop_errors[i] = f.fop_errors[i].load(std::memory_order_relaxed);
    }
    out.push_back(s);
  });
  std::sort(out.begin(), out.end(), [](const FileSnapshot& a, const FileSnapshot& b) { return a.ino < b.ino; });
  return out;
}

std::vector<FsMetrics::AccessSnapshot> FsMetrics::access_patterns() const {
  struct Row {
    uint64_t ns;
    AccessSnapshot s;
  };
  std::vector<Row> rows;
  access_->for_each([&](const AccessRecord& r) {
    const uint64_t n = r.nr_read.load(std::memory_order_relaxed);
    if (n == 0) return;
    const uint64_t ns = r.first_access_ns.load(std::memory_order_relaxed);
    AccessSnapshot s;
    s.ino = r.ino;
    s.nr_read = n;
    s.first_access_time_secs = ns / 1'000'000'000;
    s.first_access_time_nanos = static_cast<uint32_t>(ns % 1'000'000'000);
    rows.push_back({ns, s});
  });
  std::sort(rows.begin(), rows.end(),
            [](const Row& a, const Row& b) { return a.ns != b.ns ? a.ns < b.ns : a.s.ino < b.s.ino; });
  std::vector<AccessSnapshot> out;
  out.reserve(rows.size());
  for (const Row& r : rows) out.push_back(r.s);
  return out;
}

std::vector<std::vector<uint64_t>> FsMetrics::latest_read_files(bool clear) { return latest_read_->runs(clear); }

std::string FsMetrics::fs_metrics_json() const {
  ordered_json j;
  j["files_account_enabled"] = files_account();
  j["access_pattern_enabled"] = access_pattern();
  j["record_latest_read_files_enabled"] = latest_read_files();
  j["measure_latency"] = measure_latency();
  j["id"] = id_;
  j["nr_opens"] = nr_opens();
  j["data_read"] = data_read();
  j["block_count_read"] = to_array(block_count_read_);
  j["fop_hits"] = to_array(fop_hits_);
  j["fop_errors"] = to_array(fop_errors_);
  j["fop_cumulative_latency_total"] = to_array(fop_latency_us_);
  j["read_latency_dist"] = to_array(read_latency_dist_);
  return dump(j);
}

std::string FsMetrics::files_metrics_json(bool latest) {
  if (latest) {
    ordered_json runs = ordered_json::array();
    for (const auto& run : latest_read_files(true)) runs.push_back(run);
    return dump(runs);
  }
  ordered_json j = ordered_json::object();
  for (const FileSnapshot& f : file_stats()) {
    ordered_json e;
    e["total_fops"] = f.total_fops;
    e["data_read"] = f.data_read;
    e["block_count_read"] = to_array(f.block_count_read);
    e["fop_hits"] = to_array(f.fop_hits);
    e["fop_errors"] = to_array(f.fop_errors);
    j[std::to_string(f.ino)] = std::move(e);
  }
  return dump(j);
}

std::string FsMetrics::access_patterns_json() const {
  ordered_json a = ordered_json::array();
  for (const AccessSnapshot& s : access_patterns()) {
    ordered_json e;
    e["ino"] = s.ino;
    e["nr_read"] = s.nr_read;
    e["first_access_time_secs"] = s.first_access_time_secs;
    e["first_access_time_nanos"] = s.first_access_time_nanos;
    a.push_back(std::move(e));
  }
  return dump(a);
}

// ---- FopTimer ----

void FopTimer::finish() noexcept {
  std::optional<uint64_t> latency;
  if (timed_) {
    const auto d = std::chrono::steady_clock::now() - start_;
    latency = static_cast<uint64_t>(std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(d).count()));
  }
  metrics_->record(fop_, ino_, outcome_, bytes_, latency);
}

// ---- FsMetricsRegistry ----

void FsMetricsRegistry::add(std::shared_ptr<FsMetrics> metrics) {
  if (!metrics) return;
  std::lock_guard<std::mutex> lock(mu_);
  const std::string id = metrics->id();
  by_id_[id] = std::move(metrics);
}

bool FsMetricsRegistry::remove(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return by_id_.erase(id) > 0;
}

std::shared_ptr<FsMetrics> FsMetricsRegistry::find(const std::optional<std::string>& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (id) {
    auto it = by_id_.find(*id);
    return it == by_id_.end() ? nullptr : it->second;
  }
  return by_id_.size() == 1 ? by_id_.begin()->second : nullptr;
}

std::vector<std::shared_ptr<FsMetrics>> FsMetricsRegistry::all() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<FsMetrics>> out;
  out.reserve(by_id_.size());
  for (const auto& [id, m] : by_id_) out.push_back(m);
  return out;
}

}  // namespace nydus::fs
