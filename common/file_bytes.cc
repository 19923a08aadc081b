#include "common/file_bytes.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cstring>
#include <utility>

#include "common/unique_fd.h"

namespace nydus {

Result<FileBytes> FileBytes::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::io("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return Status::io("cannot stat " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return Status::invalid(path + " is not a regular file");
  // RAFS metadata is at most 2 GiB; refuse anything larger before allocating.
  if (st.st_size > (off_t{1} << 31))
    return Status::invalid(path + " is larger than 2 GiB, the RAFS metadata limit");
  FileBytes file;
  const size_t size = static_cast<size_t>(st.st_size);
  file.owned_ = std::make_unique_for_overwrite<uint8_t[]>(size);
  file.size_ = size;
  size_t done = 0;
  while (done < size) {
    ssize_t n = pread(fd.get(), file.owned_.get() + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::io("cannot read " + path + ": " + std::strerror(errno));
    if (n == 0) return Status::io("file " + path + " shrank while being read");
    done += static_cast<size_t>(n);
  }
  return file;
}

FileBytes FileBytes::from_bytes(std::span<const uint8_t> bytes) {
  FileBytes file;
  file.owned_ = std::make_unique_for_overwrite<uint8_t[]>(bytes.size());
  file.size_ = bytes.size();
  if (!bytes.empty()) std::memcpy(file.owned_.get(), bytes.data(), bytes.size());
  return file;
}

}  // namespace nydus
