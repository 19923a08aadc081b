#include "backend/read_trace.h"

#include <cinttypes>
#include <cstdio>

#include "common/log.h"

namespace nydus::backend {

void ReadTrace::record(uint32_t blob_index, uint64_t offset, uint64_t length, uint32_t chunks) {
  bool first_drop = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Stamped under the lock, so the order of entries is the order of their
    // times.
    const auto now = std::chrono::steady_clock::now();
    if (!started_) {
      origin_ = now;
      started_ = true;
    }
    if (entries_.size() >= capacity_) {
      first_drop = dropped_++ == 0;
    } else {
      const auto t = std::chrono::duration_cast<std::chrono::microseconds>(now - origin_).count();
      entries_.push_back({static_cast<uint64_t>(t < 0 ? 0 : t), blob_index, offset, length, chunks});
    }
  }
  if (first_drop)
    LOG_WARN("backend read trace is full (%zu entries); later reads are counted but not recorded", capacity_);
}

std::vector<ReadTraceEntry> ReadTrace::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_;
}

size_t ReadTrace::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

uint64_t ReadTrace::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

std::string ReadTrace::csv(const std::vector<bootstrap::BlobInfo>& blobs) const {
  const std::vector<ReadTraceEntry> rows = entries();
  std::string out = kCsvHeader;
  out.reserve(out.size() + rows.size() * 120);
  char line[96];
  for (const ReadTraceEntry& e : rows) {
    const bool known = e.blob_index < blobs.size();
    std::snprintf(line, sizeof line, "%" PRIu64 ",", e.t_us);
    out += line;
    // Blob ids are checked hex when a blob is opened, but the bootstrap is
    // input: keep the CSV well-formed whatever the id holds.
    if (known)
      for (char c : blobs[e.blob_index].id)
        if (c != ',' && c != '"' && c != '\n' && c != '\r') out += c;
    std::snprintf(line, sizeof line, ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu32 "\n",
                  known ? blobs[e.blob_index].compressed_size : 0, e.offset, e.length, e.chunks);
    out += line;
  }
  return out;
}

}  // namespace nydus::backend
