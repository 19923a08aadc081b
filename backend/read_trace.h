// ReadTrace: a bounded, in-memory record of the backend reads a ChunkReader
// makes, so that a simulator can replay which raw blob bytes a workload
// (e.g. a container start) asked for, and when.
//
// Contract:
//   - One entry per backend request the ChunkReader issues: every chunk
//     fetch (a merged group or a single chunk, including a chunk fetched
//     again after it failed verification), and the metadata reads it makes
//     of the blob itself: the blob.meta chunk-info table and its header, the
//     ToC and the chunk digest array. Metadata reads carry `chunks == 0`;
//     chunk fetches carry the number of chunks in the request (>= 1).
//     Reads served from the local blob cache, from a `<id>.blob.meta` file
//     in work_dir, and size probes (BlobReader::size) are not backend
//     fetches and are not recorded.
//   - An entry is recorded when the request is issued, before its answer,
//     whether or not it then succeeds; a request that cannot be issued (the
//     blob cannot be opened) is not recorded.
//   - offset/length are in the raw (compressed) blob, as the backend is
//     asked for them; blob_index is the index in the bootstrap's blob table.
//   - t_us: microseconds (steady clock) since the first entry was recorded
//     (the first entry has t_us 0). Entries are kept in the order they were
//     recorded, and t_us never decreases along it.
//   - Bounded: at most `capacity` entries are kept (default 65536, about
//     2 MiB). Past it, new entries are dropped (the earliest are kept, which
//     is what a start-up trace needs) and counted in dropped(); the first
//     drop logs one WARN line.
//
// Thread-safety: record() and every reader may be called from any number of
// threads at once (one mutex, held for a push_back or a copy, never across
// I/O).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "bootstrap/image.h"

namespace nydus::backend {

struct ReadTraceEntry {
  uint64_t t_us = 0;        // since the first recorded entry
  uint32_t blob_index = 0;  // index in the bootstrap's blob table
  uint64_t offset = 0;      // in the raw (compressed) blob
  uint64_t length = 0;      // bytes asked for
  uint32_t chunks = 0;      // chunks carried; 0 = a metadata read (blob.meta, ToC, digests)
};

class ReadTrace {
 public:
  static constexpr size_t kDefaultCapacity = 65536;
  static constexpr const char* kCsvHeader = "t_us,blob,blob_size,offset,length,chunks\n";

  explicit ReadTrace(size_t capacity = kDefaultCapacity) : capacity_(capacity) {}
  ReadTrace(const ReadTrace&) = delete;
  ReadTrace& operator=(const ReadTrace&) = delete;

  // Records one backend request, stamped now.
  void record(uint32_t blob_index, uint64_t offset, uint64_t length, uint32_t chunks);

  // A copy of the entries kept so far, in recording order.
  std::vector<ReadTraceEntry> entries() const;
  // Entries kept so far.
  size_t size() const;
  // Entries not kept because the trace was full.
  uint64_t dropped() const;
  size_t capacity() const { return capacity_; }

  // The entries as CSV: the header line `t_us,blob,blob_size,offset,length,chunks`,
  // then one line per entry, where blob is the blob's id and blob_size its
  // compressed size from `blobs` (the bootstrap's BlobInfo::compressed_size:
  // the size of the whole blob file; 0 when the image does not record it,
  // as old v5 images). An entry whose blob_index is outside `blobs` gets an
  // empty id and size 0; commas, quotes and line breaks in an id (never in
  // a valid one) are left out. Lines end in "\n".
  std::string csv(const std::vector<bootstrap::BlobInfo>& blobs) const;

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  std::vector<ReadTraceEntry> entries_;           // GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point origin_;  // GUARDED_BY(mu_): time of the first entry
  bool started_ = false;                          // GUARDED_BY(mu_)
  uint64_t dropped_ = 0;                          // GUARDED_BY(mu_)
};

}  // namespace nydus::backend
