#include "backend/blob_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <utility>

#include "backend/blob_id.h"
#include "bootstrap/blob_meta.h"
#include "bootstrap/image.h"
#include "common/bits.h"
#include "common/fd_io.h"
#include "common/log.h"

namespace nydus::backend {
namespace {

std::string errno_text() { return std::strerror(errno); }

std::string hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string join(const std::string& dir, const std::string& name) {
  if (!dir.empty() && dir.back() == '/') return dir + name;
  return dir + "/" + name;
}


// Removes a temporary file unless it was renamed into place.
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  ~TempFileGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  void dismiss() { path_.clear(); }

 private:
  std::string path_;
};

}  // namespace

std::string blob_data_path(const std::string& work_dir, const std::string& blob_id) {
  return join(work_dir, blob_id + ".blob.data");
}

std::string blob_meta_path(const std::string& work_dir, const std::string& blob_id) {
  return join(work_dir, blob_id + ".blob.meta");
}

Status ensure_work_dir(const std::string& work_dir) {
  if (work_dir.empty()) return Status::invalid("cache work_dir is empty");
  struct stat st {};
  if (::stat(work_dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return Status::io("cannot stat cache work_dir " + work_dir + ": " + errno_text());
    std::error_code ec;
    std::filesystem::create_directories(work_dir, ec);
    // Another process may have created it meanwhile; the stat decides.
    if (::stat(work_dir.c_str(), &st) != 0)
      return Status::io("cannot create cache work_dir " + work_dir + ": " +
                        (ec ? ec.message() : errno_text()));
  }
  if (!S_ISDIR(st.st_mode)) return Status(Code::kNotDir, "cache work_dir " + work_dir + " is not a directory");
  return Status::Ok();
}

Result<std::unique_ptr<BlobCacheFile>> BlobCacheFile::open(const std::string& work_dir, const std::string& blob_id,
                                                           uint64_t uncompressed_size, uint32_t chunk_count) {
  NYDUS_TRY(check_blob_id(blob_id));
  NYDUS_TRY(ensure_work_dir(work_dir));
  if (uncompressed_size > static_cast<uint64_t>(std::numeric_limits<off_t>::max()))
    return Status::invalid("blob " + blob_id + ": uncompressed size " + std::to_string(uncompressed_size) +
                           " is too large for a file");

  std::string data_path = blob_data_path(work_dir, blob_id);
  UniqueFd fd(::open(data_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666));
  if (!fd.valid()) return Status::io("cannot open or create blob data file " + data_path + ": " + errno_text());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::io("cannot stat " + data_path + ": " + errno_text());
  if (!S_ISREG(st.st_mode)) return Status::invalid("blob data file " + data_path + " is not a regular file");

  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  const std::string map_path = chunk_map_path(work_dir, blob_id);
  if (file_size == 0 || file_size < uncompressed_size) {
    if (file_size == 0 && uncompressed_size != 0) {
      // No data, so any bit left in an old chunk_map would serve zeros.
      // Unlinking (rather than truncating) is safe for a process that still
      // has the old map mapped: it keeps its inode and cannot fault.
      if (::unlink(map_path.c_str()) == 0)
        LOG_WARN("blob %s: data file %s was missing or empty; discarded its stale chunk_map", blob_id.c_str(),
                 data_path.c_str());
      else if (errno != ENOENT)
        return Status::io("cannot remove stale chunk_map file " + map_path + ": " + errno_text());
    }
    if (::ftruncate(fd.get(), static_cast<off_t>(uncompressed_size)) != 0)
      return Status::io("cannot set the size of blob data file " + data_path + " to " +
                        std::to_string(uncompressed_size) + ": " + errno_text());
  } else if (uncompressed_size != 0 && file_size != uncompressed_size) {
    // Upstream's words, so operators find the same message either way.
    return Status::invalid("blob data file size doesn't match: got " + hex64(file_size) + ", expect " +
                           hex64(uncompressed_size) + " (" + data_path + ")");
  }

  NYDUS_ASSIGN(std::unique_ptr<ChunkMap> map, ChunkMap::open(map_path, chunk_count));
  return std::unique_ptr<BlobCacheFile>(
      new BlobCacheFile(blob_id, std::move(data_path), std::move(fd), uncompressed_size, std::move(map)));
}

BlobCacheFile::BlobCacheFile(std::string blob_id, std::string data_path, UniqueFd fd, uint64_t uncompressed_size,
                             std::unique_ptr<ChunkMap> map)
    : blob_id_(std::move(blob_id)),
      data_path_(std::move(data_path)),
      fd_(std::move(fd)),
      uncompressed_size_(uncompressed_size),
      map_(std::move(map)) {}

Status BlobCacheFile::check_range(uint32_t chunk_index, uint64_t offset, uint64_t len, const char* what) const {
  if (chunk_index >= map_->chunk_count())
    return Status::invalid("blob " + blob_id_ + ": cannot " + what + " chunk " + std::to_string(chunk_index) +
                           ": the blob has " + std::to_string(map_->chunk_count()) + " chunks");
  if (offset > uncompressed_size_ || len > uncompressed_size_ - offset)
    return Status::invalid("blob " + blob_id_ + ": cannot " + what + " chunk " + std::to_string(chunk_index) +
                           ": range [" + std::to_string(offset) + ", +" + std::to_string(len) +
                           ") is outside the uncompressed size " + std::to_string(uncompressed_size_));
  return Status::Ok();
}

Status BlobCacheFile::read(uint32_t chunk_index, uint64_t uncompressed_offset, std::span<uint8_t> dst) const {
  NYDUS_TRY(check_range(chunk_index, uncompressed_offset, dst.size(), "read"));
  if (!map_->is_ready(chunk_index))
    return Status::not_found("blob " + blob_id_ + ": chunk " + std::to_string(chunk_index) + " is not cached");
  size_t done = 0;
  while (done < dst.size()) {
    const ssize_t n = ::pread(fd_.get(), dst.data() + done, dst.size() - done,
                              static_cast<off_t>(uncompressed_offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::io("cannot read " + std::to_string(dst.size()) + " bytes at offset " +
                        std::to_string(uncompressed_offset) + " of " + data_path_ + ": " + errno_text());
    }
    if (n == 0)
      return Status::io("short read of chunk " + std::to_string(chunk_index) + " from " + data_path_ + ": " +
                        std::to_string(done) + " of " + std::to_string(dst.size()) + " bytes at offset " +
                        std::to_string(uncompressed_offset) + " (file truncated?)");
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status BlobCacheFile::commit(uint32_t chunk_index, uint64_t uncompressed_offset, std::span<const uint8_t> data) {
  NYDUS_TRY(check_range(chunk_index, uncompressed_offset, data.size(), "commit"));
  if (map_->is_ready(chunk_index)) return Status::Ok();
  // Data first, bit second: the bit is the commit record.
  NYDUS_TRY(pwrite_all(fd_.get(), data.data(), data.size(), uncompressed_offset, data_path_));
  return map_->set_ready(chunk_index);
}

Status write_blob_meta_file(const std::string& work_dir, const std::string& blob_id,
                            std::span<const uint8_t> ci_uncompressed, std::span<const uint8_t> header4096) {
  NYDUS_TRY(check_blob_id(blob_id));
  const std::string where = "blob " + blob_id + ": not writing blob.meta";
  if (header4096.size() != bootstrap::kBlobMetaHeaderSize)
    return Status::invalid(where + ": header has " + std::to_string(header4096.size()) + " bytes, not 4096");
  // An empty BlobInfo: only the header's own consistency is checked here;
  // the reader cross-checks it with the bootstrap's blob entry.
  auto header = bootstrap::parse_blob_meta_header(header4096, bootstrap::BlobInfo{});
  if (!header.ok()) return header.status().with_context(where);
  if (header->ci_uncompressed_size != ci_uncompressed.size())
    return Status::invalid(where + ": header says " + std::to_string(header->ci_uncompressed_size) +
                           " bytes of chunk infos, got " + std::to_string(ci_uncompressed.size()));
  NYDUS_TRY(ensure_work_dir(work_dir));

  const std::string final_path = blob_meta_path(work_dir, blob_id);
  static std::atomic<uint64_t> counter{0};
  std::string tmp_path;
  UniqueFd fd;
  for (int attempt = 0; attempt < 100 && !fd.valid(); ++attempt) {
    tmp_path = final_path + ".tmp-" + std::to_string(::getpid()) + "-" +
               std::to_string(counter.fetch_add(1, std::memory_order_relaxed));
    fd.reset(::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
    if (!fd.valid() && errno != EEXIST)
      return Status::io("cannot create " + tmp_path + ": " + errno_text());
  }
  if (!fd.valid()) return Status::io("cannot find a free temporary name for " + final_path);
  TempFileGuard guard(tmp_path);

  const uint64_t header_offset = round_up_4k(ci_uncompressed.size());
  // The padding between the table and the header stays a hole (reads as
  // zeros), as in upstream's file, which it sizes with set_len first.
  if (::ftruncate(fd.get(), static_cast<off_t>(header_offset + bootstrap::kBlobMetaHeaderSize)) != 0)
    return Status::io("cannot size " + tmp_path + ": " + errno_text());
  NYDUS_TRY(pwrite_all(fd.get(), ci_uncompressed.data(), ci_uncompressed.size(), 0, tmp_path));
  NYDUS_TRY(pwrite_all(fd.get(), header4096.data(), header4096.size(), header_offset, tmp_path));
  if (::fsync(fd.get()) != 0) return Status::io("cannot fsync " + tmp_path + ": " + errno_text());
  if (::close(fd.release()) != 0) return Status::io("cannot close " + tmp_path + ": " + errno_text());
  if (::rename(tmp_path.c_str(), final_path.c_str()) != 0)
    return Status::io("cannot rename " + tmp_path + " to " + final_path + ": " + errno_text());
  guard.dismiss();

  // Make the rename itself durable.
  UniqueFd dir(::open(work_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid() || ::fsync(dir.get()) != 0)
    return Status::io("wrote " + final_path + " but cannot fsync directory " + work_dir + ": " + errno_text());
  return Status::Ok();
}

}  // namespace nydus::backend
