// AccessTrace: the raw-blob reads one node makes, in order, as the daemon
// records them (GET /api/v1/metrics/backend/reads: CSV with the columns
// t_us,blob,blob_size,offset,length[,chunks]), or a whole-image read made
// up from the blobs of such a trace.
//
// Plain data; not thread-safe to modify.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace nydus::sim {

struct TraceBlob {
  std::string digest;  // 64 hex digits
  uint64_t size = 0;   // compressed blob size
};

struct TraceRead {
  uint32_t blob = 0;  // index into AccessTrace::blobs
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct AccessTrace {
  std::vector<TraceBlob> blobs;
  std::vector<TraceRead> reads;

  // Bytes in the union of all reads (each byte once).
  uint64_t unique_bytes() const;
};

// Parses the CSV text (header line first; columns by name). Every row is
// checked: blob a sha256 hex digest with one size throughout, the read
// inside the blob, length > 0. Errors name the line.
Result<AccessTrace> parse_access_trace(const std::string& csv);
Result<AccessTrace> load_access_trace(const std::string& path);

// Every byte of every blob of `trace`, in `read_size` reads in blob order.
AccessTrace whole_image_trace(const AccessTrace& trace, uint64_t read_size);

// The python3 -V container start shipped with the simulator
// (examples/traces/python-start.csv, compiled in).
const std::string& builtin_python_start_trace();

}  // namespace nydus::sim
