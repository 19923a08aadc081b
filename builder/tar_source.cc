#include "builder/tar_source.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "common/log.h"
#include "common/unique_fd.h"
#include "common/text.h"

namespace nydus::builder {

namespace {

constexpr size_t kWriteBufferSize = 1 << 20;

// The unlinked file holding every regular file's data. Written only while
// the archive is read; read-only (pread) afterwards, so sharing it between
// threads is safe.
class StagingFile {
 public:
  static Result<std::shared_ptr<StagingFile>> create(const std::string& dir_option) {
    std::string dir = dir_option;
    if (dir.empty()) {
      const char* env = std::getenv("TMPDIR");
      dir = env != nullptr && *env != '\0' ? env : "/tmp";
    }
    auto file = std::shared_ptr<StagingFile>(new StagingFile());
    file->fd_.reset(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600));
    if (!file->fd_.valid()) {
      // Filesystems without O_TMPFILE: a named file, unlinked at once.
      std::string templ = dir + "/nydus-tar-XXXXXX";
      int fd = ::mkostemp(templ.data(), O_CLOEXEC);
      if (fd < 0) {
        return Status::io("tar source: cannot create a staging file in '" + dir + "': " + std::strerror(errno));
      }
      ::unlink(templ.c_str());
      file->fd_.reset(fd);
    }
    file->dir_ = dir;
    file->buffer_.reserve(kWriteBufferSize);
    return file;
  }

  uint64_t size() const { return size_; }

  // Appends; returns the offset the bytes start at.
  Result<uint64_t> append(const void* data, size_t len) {
    uint64_t at = size_;
    const auto* p = static_cast<const uint8_t*>(data);
    while (len > 0) {
      size_t n = std::min(len, kWriteBufferSize - buffer_.size());
      buffer_.insert(buffer_.end(), p, p + n);
      p += n;
      len -= n;
      size_ += n;
      if (buffer_.size() == kWriteBufferSize) NYDUS_TRY(flush());
    }
    return at;
  }

  Status flush() {
    size_t done = 0;
    while (done < buffer_.size()) {
      ssize_t w = ::pwrite(fd_.get(), buffer_.data() + done, buffer_.size() - done,
                           static_cast<off_t>(flushed_ + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        return Status::io("tar source: writing the staging file in '" + dir_ + "': " + std::strerror(errno));
      }
      done += static_cast<size_t>(w);
    }
    flushed_ += buffer_.size();
    buffer_.clear();
    return Status::Ok();
  }

  Status read(uint64_t offset, uint8_t* dst, size_t len) const {
    size_t done = 0;
    while (done < len) {
      ssize_t r = ::pread(fd_.get(), dst + done, len - done, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return Status::io("tar source: reading the staging file: " + std::string(std::strerror(errno)));
      }
      if (r == 0) return Status::io("tar source: staging file ends early (was it flushed?)");
      done += static_cast<size_t>(r);
    }
    return Status::Ok();
  }

 private:
  StagingFile() = default;
  UniqueFd fd_;
  std::string dir_;
  std::vector<uint8_t> buffer_;
  uint64_t flushed_ = 0;
  uint64_t size_ = 0;
};

// A run of file bytes stored contiguously in the staging file.
struct Extent {
  uint64_t file_offset;
  uint64_t length;
  uint64_t staged_offset;
};

ContentSource staged_content(std::shared_ptr<StagingFile> staging, std::vector<Extent> extents_in,
                             uint64_t size) {
  auto extents = std::make_shared<const std::vector<Extent>>(std::move(extents_in));
  ContentSource c;
  c.read = [staging = std::move(staging), extents, size](uint64_t offset, std::span<uint8_t> dst) -> Status {
    if (offset > size || dst.size() > size - offset) {
      return Status::invalid("tar source: read of " + std::to_string(dst.size()) + " bytes at " +
                             std::to_string(offset) + " past the end of a " + std::to_string(size) +
                             "-byte file");
    }
    uint64_t pos = offset;
    const uint64_t end = offset + dst.size();
    // First extent ending after `pos`.
    auto it = std::upper_bound(extents->begin(), extents->end(), pos,
                               [](uint64_t p, const Extent& e) { return p < e.file_offset + e.length; });
    while (pos < end) {
      uint8_t* out = dst.data() + (pos - offset);
      if (it == extents->end() || it->file_offset >= end) {
        std::memset(out, 0, end - pos);
        break;
      }
      if (it->file_offset > pos) {  // hole
        std::memset(out, 0, it->file_offset - pos);
        pos = it->file_offset;
        continue;
      }
      uint64_t n = std::min(end, it->file_offset + it->length) - pos;
      NYDUS_TRY(staging->read(it->staged_offset + (pos - it->file_offset), out, n));
      pos += n;
      ++it;
    }
    return Status::Ok();
  };
  return c;
}

bool xattr_name_allowed(std::string_view name) {
  static constexpr std::string_view kPrefixes[] = {
      "user.", "security.", "trusted.", "system.posix_acl_access", "system.posix_acl_default"};
  for (auto p : kPrefixes) {
    if (name.starts_with(p)) return true;
  }
  return false;
}

std::string normalize(std::string_view path) {
  std::string out;
  while (!path.empty()) {
    size_t slash = path.find('/');
    std::string_view part = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
    if (part.empty() || part == ".") continue;
    if (!out.empty()) out += '/';
    out += part;
  }
  return out;
}

bool is_stargz_special(const std::string& normalized) {
  return normalized == "stargz.index.json" || normalized == ".prefetch.landmark" ||
         normalized == ".no.prefetch.landmark";
}

struct ArchiveDeleter {
  void operator()(struct archive* a) const { archive_read_free(a); }
};

class TarReader {
 public:
  TarReader(std::string path, std::shared_ptr<StagingFile> staging)
      : path_(std::move(path)), staging_(std::move(staging)), tree_(std::make_unique<Tree>()) {}

  Result<std::unique_ptr<Tree>> run() {
    std::unique_ptr<struct archive, ArchiveDeleter> a(archive_read_new());
    if (!a) return Status::io("tar '" + path_ + "': cannot allocate a libarchive reader");
    // Only tar and the filters OCI layers use; no external programs for
    // anything else. ARCHIVE_WARN here only means a filter is run as an
    // external program, which is fine.
    archive_read_support_filter_gzip(a.get());
    archive_read_support_filter_zstd(a.get());
    archive_read_support_filter_xz(a.get());
    archive_read_support_filter_bzip2(a.get());
    archive_read_support_format_tar(a.get());
    archive_read_support_format_empty(a.get());
    if (archive_read_set_options(a.get(), "tar:read_concatenated_archives") < ARCHIVE_WARN) {
      return Status::io("tar '" + path_ + "': " + error_text(a.get()));
    }
    if (archive_read_open_filename(a.get(), path_.c_str(), 1 << 16) != ARCHIVE_OK) {
      return Status::io("tar '" + path_ + "': " + error_text(a.get()));
    }
    for (;;) {
      struct archive_entry* entry = nullptr;
      int r = archive_read_next_header(a.get(), &entry);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN) {
        std::string where = last_entry_.empty() ? "first entry" : "entry after '" + escape_bytes(last_entry_) + "'";
        return Status(Code::kInvalidInput, "tar '" + path_ + "': " + where + ": " + error_text(a.get()));
      }
      const char* name = archive_entry_pathname(entry);
      if (name == nullptr) {
        return Status::invalid("tar '" + path_ + "': entry after '" + escape_bytes(last_entry_) +
                               "' has no usable path");
      }
      last_entry_ = name;
      if (r == ARCHIVE_WARN) {
        // e.g. a pax UTF-8 name in the C locale: the raw bytes are kept.
        LOG_DEBUG("tar '%s': entry '%s': %s", path_.c_str(), escape_bytes(last_entry_).c_str(),
                  error_text(a.get()).c_str());
      }
      Status s = add_entry(a.get(), entry);
      if (!s.ok()) return s.with_context("tar '" + path_ + "': entry '" + escape_bytes(last_entry_) + "'");
    }
    NYDUS_TRY(staging_->flush());
    tree_->finalize();
    return std::move(tree_);
  }

 private:
  static std::string error_text(struct archive* a) {
    const char* e = archive_error_string(a);
    return e != nullptr ? e : "unknown libarchive error";
  }

  Status add_entry(struct archive* a, struct archive_entry* entry) {
    const std::string path = normalize(last_entry_);
    if (is_stargz_special(path)) return skip_data(a);

    auto node = std::make_unique<Node>();
    la_int64_t uid = archive_entry_uid(entry);
    la_int64_t gid = archive_entry_gid(entry);
    if (uid < 0 || uid > UINT32_MAX || gid < 0 || gid > UINT32_MAX) {
      return Status::invalid("uid " + std::to_string(uid) + " or gid " + std::to_string(gid) + " out of range");
    }
    node->uid = static_cast<uint32_t>(uid);
    node->gid = static_cast<uint32_t>(gid);
    if (archive_entry_mtime_is_set(entry)) {
      time_t mtime = archive_entry_mtime(entry);
      node->mtime = mtime < 0 ? 0 : static_cast<uint64_t>(mtime);
      long nsec = archive_entry_mtime_nsec(entry);
      node->mtime_nsec = mtime < 0 || nsec < 0 || nsec > 999999999 ? 0 : static_cast<uint32_t>(nsec);
    }
    NYDUS_TRY(read_xattrs(entry, &node->xattrs));
    const uint32_t perm = archive_entry_perm(entry) & 07777;

    if (const char* link = archive_entry_hardlink(entry); link != nullptr) {
      return add_hardlink(a, entry, path, std::move(node), perm, link);
    }
    switch (archive_entry_filetype(entry)) {
      case AE_IFREG:
        node->mode = perm | S_IFREG;
        NYDUS_TRY(stage_data(a, entry, *node));
        break;
      case AE_IFDIR:
        node->mode = perm | S_IFDIR;
        break;
      case AE_IFLNK: {
        const char* target = archive_entry_symlink(entry);
        if (target == nullptr) return Status::invalid("symlink without a target");
        node->mode = perm | S_IFLNK;
        node->symlink_target = target;
        node->size = node->symlink_target.size();
        break;
      }
      case AE_IFCHR:
      case AE_IFBLK:
        node->mode = perm | archive_entry_filetype(entry);
        node->rdev = new_encode_dev(static_cast<uint32_t>(archive_entry_rdevmajor(entry)),
                                    static_cast<uint32_t>(archive_entry_rdevminor(entry)));
        break;
      case AE_IFIFO:
        node->mode = perm | S_IFIFO;
        break;
      case AE_IFSOCK:
        node->mode = perm | S_IFSOCK;
        break;
      default:
        return Status::unsupported("unsupported entry type 0" +
                                   std::to_string(archive_entry_filetype(entry) >> 12));
    }
    if (!node->is_reg()) NYDUS_TRY(skip_data(a));
    if (path.empty() && !node->is_dir()) return Status::invalid("the root must be a directory");
    auto added = tree_->add(path, std::move(node));
    return added.ok() ? Status::Ok() : added.status();
  }

  Status add_hardlink(struct archive* a, struct archive_entry* entry, const std::string& path,
                      std::unique_ptr<Node> node, uint32_t perm, const char* link) {
    const std::string target_path = normalize(link);
    Node* target = tree_->find(target_path);
    if (target == nullptr || target_path.empty()) {
      return Status::invalid("hardlink target '" + escape_bytes(link) + "' is not an earlier entry");
    }
    if (target->is_dir()) return Status::invalid("hardlink target '" + escape_bytes(link) + "' is a directory");
    if (target->is_reg()) {
      node->mode = perm | S_IFREG;
      if (target->hardlink_group == 0) target->hardlink_group = next_group_++;
      node->hardlink_group = target->hardlink_group;
      node->xattrs = target->xattrs;
      if (archive_entry_size_is_set(entry) && archive_entry_size(entry) > 0) {
        // pax allows a hardlink to carry the data again.
        NYDUS_TRY(stage_data(a, entry, *node));
      } else {
        node->size = target->size;
        node->content = target->content;
        NYDUS_TRY(skip_data(a));
      }
    } else {
      // RAFS has no hardlinked symlinks or specials: keep a copy.
      node->mode = target->mode;
      node->rdev = target->rdev;
      node->symlink_target = target->symlink_target;
      node->size = target->size;
      node->xattrs = target->xattrs;
      NYDUS_TRY(skip_data(a));
    }
    auto added = tree_->add(path, std::move(node));
    return added.ok() ? Status::Ok() : added.status();
  }

  Status read_xattrs(struct archive_entry* entry, std::vector<bootstrap::Xattr>* out) {
    std::map<std::string, std::string> xattrs;  // SCHILY and LIBARCHIVE both give the same names
    std::set<std::string> skipped;
    archive_entry_xattr_reset(entry);
    const char* name = nullptr;
    const void* value = nullptr;
    size_t size = 0;
    while (archive_entry_xattr_next(entry, &name, &value, &size) == ARCHIVE_OK) {
      if (name == nullptr) continue;
      if (!xattr_name_allowed(name)) {
        if (!skipped.insert(name).second) continue;
        LOG_WARN("tar '%s': entry '%s': skipping xattr '%s' (RAFS keeps only user., security., "
                 "trusted. and system.posix_acl_*)", path_.c_str(), escape_bytes(last_entry_).c_str(),
                 escape_bytes(name).c_str());
        continue;
      }
      xattrs[name] = std::string(static_cast<const char*>(value), size);
    }
    out->clear();
    for (auto& [k, v] : xattrs) out->push_back({k, std::move(v)});
    return Status::Ok();
  }

  // Streams the entry's data blocks into the staging file and points the
  // node's content at them.
  Status stage_data(struct archive* a, struct archive_entry* entry, Node& node) {
    la_int64_t size = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : 0;
    if (size < 0) return Status::invalid("negative size");
    node.size = static_cast<uint64_t>(size);

    std::vector<Extent> extents;
    for (;;) {
      const void* buf = nullptr;
      size_t len = 0;
      la_int64_t offset = 0;
      int r = archive_read_data_block(a, &buf, &len, &offset);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN) return Status::invalid(error_text(a));
      if (len == 0) continue;
      if (offset < 0 || static_cast<uint64_t>(offset) + len > node.size) {
        return Status::invalid("data block at " + std::to_string(offset) + " runs past the entry size " +
                               std::to_string(node.size));
      }
      NYDUS_ASSIGN(uint64_t at, staging_->append(buf, len));
      if (!extents.empty()) {
        Extent& last = extents.back();
        if (static_cast<uint64_t>(offset) < last.file_offset + last.length) {
          return Status::invalid("data blocks out of order");
        }
        if (last.file_offset + last.length == static_cast<uint64_t>(offset) &&
            last.staged_offset + last.length == at) {
          last.length += len;
          continue;
        }
      }
      extents.push_back({static_cast<uint64_t>(offset), len, at});
    }

    if (archive_entry_sparse_reset(entry) > 0) {
      la_int64_t off = 0, len = 0;
      std::vector<std::pair<uint64_t, uint64_t>> ranges;
      while (archive_entry_sparse_next(entry, &off, &len) == ARCHIVE_OK) {
        if (off < 0 || len <= 0 || static_cast<uint64_t>(off) >= node.size) continue;
        uint64_t start = static_cast<uint64_t>(off);
        uint64_t end = std::min(node.size, start + static_cast<uint64_t>(len));
        if (!ranges.empty() && ranges.back().first + ranges.back().second >= start) {
          uint64_t prev_end = ranges.back().first + ranges.back().second;
          ranges.back().second = std::max(prev_end, end) - ranges.back().first;
        } else {
          ranges.emplace_back(start, end - start);
        }
      }
      node.content = staged_content(staging_, std::move(extents), node.size);
      node.content.data_ranges = std::move(ranges);
      node.content.sparse = true;
    } else {
      node.content = staged_content(staging_, std::move(extents), node.size);
    }
    return Status::Ok();
  }

  static Status skip_data(struct archive* a) {
    if (archive_read_data_skip(a) < ARCHIVE_WARN) return Status::invalid(error_text(a));
    return Status::Ok();
  }

  std::string path_;
  std::shared_ptr<StagingFile> staging_;
  std::unique_ptr<Tree> tree_;
  std::string last_entry_;
  uint64_t next_group_ = 1;
};

}  // namespace

Result<std::unique_ptr<Tree>> read_tar(const std::string& path) { return read_tar(path, TarSourceOptions()); }

Result<std::unique_ptr<Tree>> read_tar(const std::string& path, const TarSourceOptions& options) {
  NYDUS_ASSIGN(auto staging, StagingFile::create(options.temp_dir));
  TarReader reader(path, std::move(staging));
  return reader.run();
}

}  // namespace nydus::builder
