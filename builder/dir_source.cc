#include "builder/dir_source.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>

#include "common/log.h"
#include "common/unique_fd.h"
#include "common/text.h"

namespace nydus::builder {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

Status io_error(const std::string& what, const std::string& path, int err) {
  return Status::io("directory source: " + what + " '" + escape_bytes(path) + "': " + errno_text(err));
}

// Prefixes RAFS keeps (upstream RAFS_XATTR_PREFIXES, rafs/src/metadata/layout/mod.rs).
bool xattr_name_allowed(std::string_view name) {
  static constexpr std::string_view kPrefixes[] = {
      "user.", "security.", "trusted.", "system.posix_acl_access", "system.posix_acl_default"};
  for (auto p : kPrefixes) {
    if (name.starts_with(p)) return true;
  }
  return false;
}

Status read_xattrs(const std::string& path, std::vector<bootstrap::Xattr>* out) {
  out->clear();
  std::string names;
  for (;;) {
    ssize_t len = ::llistxattr(path.c_str(), nullptr, 0);
    if (len < 0) {
      if (errno == ENOTSUP || errno == ENOSYS) return Status::Ok();
      return io_error("llistxattr", path, errno);
    }
    if (len == 0) return Status::Ok();
    names.resize(static_cast<size_t>(len));
    len = ::llistxattr(path.c_str(), names.data(), names.size());
    if (len < 0 && errno == ERANGE) continue;  // grew in between
    if (len < 0) return io_error("llistxattr", path, errno);
    names.resize(static_cast<size_t>(len));
    break;
  }
  std::string value;
  size_t pos = 0;
  while (pos < names.size()) {
    size_t end = names.find('\0', pos);
    if (end == std::string::npos) end = names.size();
    std::string name = names.substr(pos, end - pos);
    pos = end + 1;
    if (name.empty()) continue;
    if (!xattr_name_allowed(name)) {
      LOG_WARN("directory source: '%s': skipping xattr '%s' (RAFS keeps only user., security., "
               "trusted. and system.posix_acl_*)", escape_bytes(path).c_str(), escape_bytes(name).c_str());
      continue;
    }
    for (;;) {
      ssize_t vlen = ::lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
      if (vlen < 0 && errno == ENODATA) break;  // removed in between
      if (vlen < 0) return io_error("lgetxattr " + name + " of", path, errno);
      value.resize(static_cast<size_t>(vlen));
      if (vlen > 0) {
        vlen = ::lgetxattr(path.c_str(), name.c_str(), value.data(), value.size());
        if (vlen < 0 && errno == ERANGE) continue;
        if (vlen < 0 && errno == ENODATA) break;
        if (vlen < 0) return io_error("lgetxattr " + name + " of", path, errno);
        value.resize(static_cast<size_t>(vlen));
      }
      out->push_back({name, value});
      break;
    }
  }
  std::sort(out->begin(), out->end(),
            [](const bootstrap::Xattr& a, const bootstrap::Xattr& b) { return a.name < b.name; });
  return Status::Ok();
}

// Data ranges of a file that may have holes. Only called when the blocks
// allocated are fewer than the size: other files are read whole anyway.
Status find_data_ranges(const std::string& path, uint64_t size, ContentSource* content) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return io_error("open", path, errno);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < size) {
    off_t data = ::lseek(fd.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole from here on
      if (errno == EINVAL || errno == ENOTSUP) return Status::Ok();  // no hole support: all data
      return io_error("lseek(SEEK_DATA)", path, errno);
    }
    off_t hole = ::lseek(fd.get(), data, SEEK_HOLE);
    if (hole < 0) return io_error("lseek(SEEK_HOLE)", path, errno);
    uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(hole), size);
    if (end > static_cast<uint64_t>(data)) ranges.emplace_back(data, end - static_cast<uint64_t>(data));
    pos = hole;
  }
  if (ranges.size() == 1 && ranges[0].first == 0 && ranges[0].second == size) return Status::Ok();
  content->data_ranges = std::move(ranges);
  content->sparse = true;
  return Status::Ok();
}

ContentSource file_content(const std::string& path) {
  ContentSource c;
  c.read = [path](uint64_t offset, std::span<uint8_t> dst) -> Status {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd.valid()) return io_error("open", path, errno);
    size_t done = 0;
    while (done < dst.size()) {
      ssize_t r = ::pread(fd.get(), dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return io_error("read", path, errno);
      }
      if (r == 0) {
        return Status::io("directory source: '" + escape_bytes(path) + "' ended at " +
                          std::to_string(offset + done) + " (file shrank since the walk?)");
      }
      done += static_cast<size_t>(r);
    }
    return Status::Ok();
  };
  return c;
}

class Walker {
 public:
  Status fill(Node& node, const std::string& path, const struct stat& st) {
    node.mode = st.st_mode;
    node.uid = st.st_uid;
    node.gid = st.st_gid;
    node.mtime = st.st_mtim.tv_sec < 0 ? 0 : static_cast<uint64_t>(st.st_mtim.tv_sec);
    node.mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
    NYDUS_TRY(read_xattrs(path, &node.xattrs));
    switch (st.st_mode & S_IFMT) {
      case S_IFREG: {
        node.size = static_cast<uint64_t>(st.st_size);
        node.content = file_content(path);
        if (static_cast<uint64_t>(st.st_blocks) * 512 < node.size) {
          NYDUS_TRY(find_data_ranges(path, node.size, &node.content));
        }
        if (st.st_nlink > 1) {
          auto [it, inserted] = links_.emplace(std::make_pair(st.st_dev, st.st_ino), next_group_);
          if (inserted) ++next_group_;
          node.hardlink_group = it->second;
        }
        break;
      }
      case S_IFLNK: {
        std::string target(static_cast<size_t>(st.st_size > 0 ? st.st_size : PATH_MAX) + 1, '\0');
        for (;;) {
          ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
          if (n < 0) return io_error("readlink", path, errno);
          if (static_cast<size_t>(n) < target.size()) {
            target.resize(static_cast<size_t>(n));
            break;
          }
          if (target.size() > 2 * PATH_MAX) {
            return Status::invalid("directory source: symlink '" + escape_bytes(path) + "' target too long");
          }
          target.resize(target.size() * 2);  // grew since lstat
        }
        node.symlink_target = std::move(target);
        node.size = node.symlink_target.size();
        break;
      }
      case S_IFCHR:
      case S_IFBLK:
        node.rdev = new_encode_dev(major(st.st_rdev), minor(st.st_rdev));
        break;
      default:
        break;
    }
    return Status::Ok();
  }

  // Reads every directory below `root` (iteratively: no recursion limit).
  Status walk(Node& root, const std::string& root_path) {
    std::vector<std::pair<Node*, std::string>> pending{{&root, root_path}};
    std::vector<std::string> names;
    while (!pending.empty()) {
      auto [dir, dir_path] = std::move(pending.back());
      pending.pop_back();
      NYDUS_TRY(list(dir_path, &names));
      std::sort(names.begin(), names.end());
      dir->children.reserve(names.size());
      const std::string prefix = dir_path == "/" ? dir_path : dir_path + "/";
      for (auto& name : names) {
        std::string path = prefix + name;
        struct stat st;
        if (::lstat(path.c_str(), &st) != 0) return io_error("lstat", path, errno);
        auto node = std::make_unique<Node>();
        node->name = std::move(name);
        NYDUS_TRY(fill(*node, path, st));
        Node* raw = node.get();
        dir->children.push_back(std::move(node));
        if (raw->is_dir()) pending.emplace_back(raw, std::move(path));
      }
    }
    return Status::Ok();
  }

 private:
  static Status list(const std::string& path, std::vector<std::string>* names) {
    names->clear();
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return io_error("opendir", path, errno);
    for (;;) {
      errno = 0;
      struct dirent* e = ::readdir(d);
      if (e == nullptr) {
        int err = errno;
        ::closedir(d);
        if (err != 0) return io_error("readdir", path, err);
        break;
      }
      std::string_view name(e->d_name);
      if (name == "." || name == "..") continue;
      if (name.size() > 255) {
        ::closedir(d);
        return Status::invalid("directory source: name longer than 255 bytes in '" + escape_bytes(path) + "'");
      }
      names->emplace_back(name);
    }
    return Status::Ok();
  }

  std::map<std::pair<dev_t, ino_t>, uint64_t> links_;
  uint64_t next_group_ = 1;
};

}  // namespace

Result<std::unique_ptr<Tree>> read_directory(const std::string& root) {
  return read_directory(root, DirSourceOptions());
}

Result<std::unique_ptr<Tree>> read_directory(const std::string& root, const DirSourceOptions& options) {
  // The root path itself may be a symlink to the tree; nothing below it is
  // followed.
  char* resolved = ::realpath(root.c_str(), nullptr);
  if (resolved == nullptr) return io_error("resolve", root, errno);
  std::string root_path(resolved);
  std::free(resolved);
  struct stat st;
  if (::lstat(root_path.c_str(), &st) != 0) return io_error("lstat", root_path, errno);
  if (!S_ISDIR(st.st_mode)) {
    return Status(Code::kNotDir, "directory source: '" + escape_bytes(root) + "' is not a directory");
  }
  auto tree = std::make_unique<Tree>();
  Walker walker;
  Node& top = tree->root();
  NYDUS_TRY(walker.fill(top, root_path, st));
  top.mtime = 0;
  top.mtime_nsec = 0;
  NYDUS_TRY(walker.walk(top, root_path));
  tree->finalize();
  if (options.strip_whiteouts) strip_whiteouts(*tree, options.whiteout_spec);
  return tree;
}

}  // namespace nydus::builder
