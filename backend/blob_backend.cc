#include "backend/blob_backend.h"

namespace nydus::backend {

namespace {
thread_local bool t_reading_ahead = false;
}

bool reading_ahead() { return t_reading_ahead; }
PrefetchScope::PrefetchScope() : outer_(t_reading_ahead) { t_reading_ahead = true; }
PrefetchScope::~PrefetchScope() { t_reading_ahead = outer_; }

Status BlobReader::read_exact(uint64_t offset, std::span<uint8_t> dst) {
  size_t done = 0;
  while (done < dst.size()) {
    const uint64_t at = offset + done;
    if (at < offset) return Status::invalid("read at offset " + std::to_string(offset) + " overflows");
    auto n = try_read(at, dst.subspan(done));
    if (!n.ok()) return n.status();
    if (*n == 0)
      return Status::io("blob ends at offset " + std::to_string(at) + " while reading " +
                        std::to_string(dst.size()) + " bytes at offset " + std::to_string(offset));
    // A reader returning more than asked would be a bug in the reader; do
    // not let it push us past the buffer.
    if (*n > dst.size() - done)
      return Status::io("internal: reader returned " + std::to_string(*n) + " bytes for a " +
                        std::to_string(dst.size() - done) + "-byte read");
    done += *n;
  }
  return Status::Ok();
}

}  // namespace nydus::backend
