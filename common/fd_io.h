// Whole-range positional I/O on a file descriptor: pwrite/pread looped over
// short transfers and EINTR. Errors are kIo naming `path`, the offset and
// errno; a read that meets the end of the file first is kIo too.
//
// Thread-safety: as pread/pwrite (no shared state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace nydus {

Status pwrite_all(int fd, const uint8_t* data, size_t len, uint64_t offset, const std::string& path);
Status pread_all(int fd, uint8_t* data, size_t len, uint64_t offset, const std::string& path);

}  // namespace nydus
