#include "backend/localfs_backend.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "backend/blob_id.h"
#include "common/unique_fd.h"

namespace nydus::backend {
namespace {

class LocalFsReader final : public BlobReader {
 public:
  LocalFsReader(UniqueFd fd, std::string path, BackendMetrics* metrics)
      : fd_(std::move(fd)), path_(std::move(path)), metrics_(metrics) {}

  Result<size_t> try_read(uint64_t offset, std::span<uint8_t> dst) override {
    if (dst.empty()) return size_t{0};
    if (!metrics_) return read_once(offset, dst);
    const auto start = std::chrono::steady_clock::now();
    auto n = read_once(offset, dst);
    metrics_->record_read(n.ok() ? *n : 0, std::chrono::steady_clock::now() - start, n.ok());
    return n;
  }

  Result<size_t> read_once(uint64_t offset, std::span<uint8_t> dst) {
    if (offset > static_cast<uint64_t>(std::numeric_limits<off_t>::max()))
      return Status::io("read of " + path_ + " at offset " + std::to_string(offset) +
                        " is out of range");
    for (;;) {
      const ssize_t n = ::pread(fd_.get(), dst.data(), dst.size(), static_cast<off_t>(offset));
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      return Status::io("cannot read " + std::to_string(dst.size()) + " bytes at offset " +
                        std::to_string(offset) + " of " + path_ + ": " + std::strerror(errno));
    }
  }

  Result<uint64_t> size() override {
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0)
      return Status::io("cannot stat " + path_ + ": " + std::strerror(errno));
    return static_cast<uint64_t>(st.st_size);
  }

 private:
  // pread on one fd from many threads is safe: it does not move the file
  // position, so the fd needs no lock.
  const UniqueFd fd_;
  const std::string path_;
  BackendMetrics* const metrics_;
};

// Opens `path` as a blob. Ok(invalid fd) when the file does not exist, so
// the caller can try the next directory.
Result<UniqueFd> open_blob_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return UniqueFd();
    return Status::io("cannot open " + path + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::io("cannot stat " + path + ": " + std::strerror(errno));
  // A directory or FIFO named like a blob would fail (or block) on the
  // first read; refuse it up front.
  if (!S_ISREG(st.st_mode))
    return Status::invalid(path + " is not a regular file");
  return fd;
}

std::string join(const std::string& dir, const std::string& name) {
  if (!dir.empty() && dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

class LocalFsBackend final : public BlobBackend {
 public:
  explicit LocalFsBackend(LocalFsConfig config) : config_(std::move(config)) {}

  Result<std::shared_ptr<BlobReader>> reader(const std::string& blob_id) override {
    // Checked even for blob_file, where the id is not part of a path: an id
    // that is not a plain name is a broken or hostile bootstrap either way.
    NYDUS_TRY(check_blob_id(blob_id));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = readers_.find(blob_id); it != readers_.end()) return it->second;
    }
    // Open outside the lock so a slow filesystem does not stall readers of
    // other blobs. Misses are not cached: the blob may be copied in later.
    NYDUS_ASSIGN(auto reader, open_reader(blob_id));
    std::lock_guard<std::mutex> lock(mu_);
    // Another thread may have opened it meanwhile; keep one reader per blob.
    auto [it, inserted] = readers_.emplace(blob_id, std::move(reader));
    return it->second;
  }

  std::string type() const override { return "localfs"; }

 private:
  Result<std::shared_ptr<BlobReader>> open_reader(const std::string& blob_id) {
    if (!config_.blob_file.empty()) {
      NYDUS_ASSIGN(UniqueFd fd, open_blob_file(config_.blob_file));
      if (!fd.valid())
        return Status::not_found("blob " + blob_id + " not found: blob_file " + config_.blob_file +
                                 " does not exist");
      return std::shared_ptr<BlobReader>(
          std::make_shared<LocalFsReader>(std::move(fd), config_.blob_file, config_.metrics));
    }
    if (config_.dir.empty() && config_.alt_dirs.empty())
      return Status::invalid("localfs backend: neither dir nor blob_file is configured");
    std::string searched;
    auto try_dir = [&](const std::string& dir) -> Result<std::shared_ptr<BlobReader>> {
      if (dir.empty()) return std::shared_ptr<BlobReader>();
      if (!searched.empty()) searched += ", ";
      searched += dir;
      const std::string path = join(dir, blob_id);
      NYDUS_ASSIGN(UniqueFd fd, open_blob_file(path));
      if (!fd.valid()) return std::shared_ptr<BlobReader>();
      return std::shared_ptr<BlobReader>(std::make_shared<LocalFsReader>(std::move(fd), path, config_.metrics));
    };
    NYDUS_ASSIGN(auto reader, try_dir(config_.dir));
    if (reader) return reader;
    for (const auto& alt : config_.alt_dirs) {
      NYDUS_ASSIGN(reader, try_dir(alt));
      if (reader) return reader;
    }
    return Status::not_found("blob " + blob_id + " not found in " + searched);
  }

  const LocalFsConfig config_;
  std::mutex mu_;  // guards readers_
  std::unordered_map<std::string, std::shared_ptr<BlobReader>> readers_;
};

}  // namespace

std::unique_ptr<BlobBackend> make_localfs_backend(LocalFsConfig config) {
  return std::make_unique<LocalFsBackend>(std::move(config));
}

}  // namespace nydus::backend
