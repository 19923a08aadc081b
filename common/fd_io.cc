#include "common/fd_io.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace nydus {

Status pwrite_all(int fd, const uint8_t* data, size_t len, uint64_t offset, const std::string& path) {
  while (len > 0) {
    const ssize_t n = ::pwrite(fd, data, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::io("cannot write " + std::to_string(len) + " bytes at offset " + std::to_string(offset) +
                        " of " + path + ": " + std::strerror(errno));
    }
    if (n == 0) return Status::io("write at offset " + std::to_string(offset) + " of " + path + " made no progress");
    data += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status pread_all(int fd, uint8_t* data, size_t len, uint64_t offset, const std::string& path) {
  while (len > 0) {
    const ssize_t n = ::pread(fd, data, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::io("cannot read " + std::to_string(len) + " bytes at offset " + std::to_string(offset) +
                        " of " + path + ": " + std::strerror(errno));
    }
    if (n == 0) return Status::io(path + " ends before offset " + std::to_string(offset + len));
    data += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

}  // namespace nydus
