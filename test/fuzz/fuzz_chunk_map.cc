// libFuzzer target: an existing `<blob>.blob.data.chunk_map` file (another
// daemon, a crash or a user may have left anything there). Opening it
// either succeeds with a consistent map or fails with a message; it never
// crashes or reads out of bounds.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/chunk_map.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  // The first two bytes choose the chunk count; the rest is the file.
  const uint32_t chunk_count = (uint32_t{data[0]} << 8 | data[1]) + 1;
  static const std::string path = "/tmp/fuzz-chunk-map-" + std::to_string(getpid());
  int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return 0;
  if (::write(fd, data + 2, size - 2) != static_cast<ssize_t>(size - 2)) std::abort();
  ::close(fd);
  auto map = nydus::backend::ChunkMap::open(path, chunk_count);
  if (!map.ok()) {
    if (map.status().message().empty()) std::abort();
    return 0;
  }
  uint32_t ready = 0;
  for (uint32_t i = 0; i < chunk_count + 8; ++i) ready += (*map)->is_ready(i) ? 1 : 0;
  if (ready > chunk_count) std::abort();
  if (!(*map)->set_ready(chunk_count / 2).ok() || !(*map)->is_ready(chunk_count / 2)) std::abort();
  return 0;
}
