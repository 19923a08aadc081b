#include "daemon/image_cache.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

namespace nydus::daemon {
namespace {

struct FileKey {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;

  auto tie() const { return std::tie(dev, ino, size, mtime_ns, ctime_ns); }
  bool operator<(const FileKey& o) const { return tie() < o.tie(); }
  bool operator==(const FileKey& o) const { return tie() == o.tie(); }
};

bool key_of(const std::string& path, FileKey* key) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return false;
  key->dev = st.st_dev;
  key->ino = st.st_ino;
  key->size = st.st_size;
  key->mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  key->ctime_ns = int64_t{st.st_ctim.tv_sec} * 1'000'000'000 + st.st_ctim.tv_nsec;
  return true;
}

std::mutex g_mu;
std::map<FileKey, std::weak_ptr<const bootstrap::Image>> g_images;  // GUARDED_BY(g_mu)

}  // namespace

Result<std::shared_ptr<const bootstrap::Image>> ImageCache::open(const std::string& path) {
  FileKey before;
  const bool have_key = key_of(path, &before);
  if (have_key) {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_images.find(before);
    if (it != g_images.end()) {
      if (auto image = it->second.lock()) return image;
      g_images.erase(it);
    }
  }
  auto opened = bootstrap::Image::open(path);  // outside the lock: may take a while
  if (!opened.ok()) return opened.status();
  std::shared_ptr<const bootstrap::Image> image = std::move(opened).value();
  FileKey after;
  // Shared only when nothing changed the file while it was read.
  if (have_key && key_of(path, &after) && after == before) {
    std::lock_guard<std::mutex> lock(g_mu);
    for (auto it = g_images.begin(); it != g_images.end();)  // drop dead entries
      it = it->second.expired() ? g_images.erase(it) : std::next(it);
    auto& slot = g_images[before];
    if (auto existing = slot.lock()) return existing;  // a concurrent open won
    slot = image;
  }
  return image;
}

size_t ImageCache::live_images() {
  std::lock_guard<std::mutex> lock(g_mu);
  size_t n = 0;
  for (const auto& [key, image] : g_images) n += !image.expired();
  return n;
}

}  // namespace nydus::daemon
