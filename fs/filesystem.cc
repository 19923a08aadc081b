#include "fs/filesystem.h"

#include <algorithm>
#include <sys/sysmacros.h>

#include <cstring>

namespace nydus::fs {

using bootstrap::Ino;

Filesystem::Filesystem(std::shared_ptr<const bootstrap::Image> image,
                       std::unique_ptr<backend::ChunkReader> reader, FsOptions options)
    : image_(std::move(image)),
      reader_(std::move(reader)),
      options_(options),
      root_ino_(image_->root()),
      // v5 inode numbers start at 1 with the root at 1, so they are node ids
      // as they are. v6 nids may be 0 or 1, which FUSE reserves.
      node_bias_(image_->super().version == 5 && root_ino_ == 1 ? 0 : 2) {}

NodeId Filesystem::node_of(Ino ino) const { return ino == root_ino_ ? kRootNode : ino + node_bias_; }

Ino Filesystem::ino_of(NodeId node) const {
  if (node == kRootNode) return root_ino_;
  // Ids below the bias never come from node_of(); map them to an ino that
  // cannot exist so the image answers kNotFound.
  if (node < node_bias_) return ~Ino{0};
  return node - node_bias_;
}

struct stat Filesystem::to_stat(const bootstrap::InodeAttr& attr) const {
  struct stat st {};
  st.st_ino = attr.ino;
  st.st_mode = attr.mode;
  st.st_nlink = attr.nlink;
  if (image_->super().explicit_uid_gid) {
    st.st_uid = attr.uid;
    st.st_gid = attr.gid;
  } else {
    st.st_uid = options_.default_uid;
    st.st_gid = options_.default_gid;
  }
  st.st_size = static_cast<off_t>(attr.size);
  st.st_blocks = static_cast<blkcnt_t>(attr.blocks);
  st.st_blksize = 4096;
  // new_encode_dev form: minor low 8 bits | major << 8 | minor high bits << 12.
  const uint32_t major = (attr.rdev & 0xfff00) >> 8;
  const uint32_t minor = (attr.rdev & 0xff) | ((attr.rdev >> 12) & 0xfff00);
  st.st_rdev = makedev(major, minor);
  st.st_mtim.tv_sec = static_cast<time_t>(attr.mtime);
  st.st_mtim.tv_nsec = attr.mtime_nsec;
  st.st_atim = st.st_mtim;
  st.st_ctim = st.st_mtim;
  return st;
}

Result<struct stat> Filesystem::getattr(NodeId node) const {
  auto attr = image_->inode(ino_of(node));
  if (!attr.ok()) return attr.status();
  return to_stat(*attr);
}

Result<Entry> Filesystem::lookup(NodeId parent, std::string_view name) const {
  const Ino dir = ino_of(parent);
  Result<Ino> target = Status::not_found("unset");
  if (name == ".") {
    target = dir;
  } else if (name == "..") {
    target = image_->parent(dir);
  } else {
    target = image_->lookup(dir, name);
  }
  if (!target.ok()) return target.status();
  auto attr = image_->inode(*target);
  if (!attr.ok()) return attr.status();
  return Entry{node_of(*target), to_stat(*attr)};
}

Result<std::string> Filesystem::readlink(NodeId node) const { return image_->read_link(ino_of(node)); }

Status Filesystem::readdir(NodeId dir, uint64_t cookie, bool full_attr, const DirFiller& fn) const {
  Status inner;
  Status s = image_->read_dir(ino_of(dir), cookie, [&](const bootstrap::DirEntry& e, uint64_t next) {
    struct stat st {};
    if (full_attr) {
      auto attr = image_->inode(e.ino);
      if (!attr.ok()) {
        inner = attr.status();
        return false;
      }
      st = to_stat(*attr);
    } else {
      st.st_ino = e.ino;
      st.st_mode = e.type;
    }
    return fn(e.name, node_of(e.ino), st, next);
  });
  return s.ok() ? inner : s;
}

Status Filesystem::open(NodeId node) const {
  auto attr = image_->inode(ino_of(node));
  if (!attr.ok()) return attr.status();
  if (S_ISDIR(attr->mode)) return Status(Code::kIsDir, "is a directory");
  if (!S_ISREG(attr->mode)) return Status::invalid("not a regular file");
  return Status::Ok();
}

Result<size_t> Filesystem::read(NodeId node, uint64_t offset, std::span<uint8_t> dst) const {
  const Ino ino = ino_of(node);
  auto attr = image_->inode(ino);
  if (!attr.ok()) return attr.status();
  if (offset >= attr->size || dst.empty()) return size_t{0};
  const uint64_t length = std::min<uint64_t>(dst.size(), attr->size - offset);
  // The plan reaches past the read when the reader can use the extra
  // chunks (merged into the same backend request and cached).
  uint64_t planned = length;
  if (reader_->cache_enabled() && options_.amplify_bytes > length)
    planned = std::min<uint64_t>(options_.amplify_bytes, attr->size - offset);
  auto chunks = image_->chunks(ino, offset, planned);
  if (!chunks.ok()) return chunks.status();
  const std::span<const bootstrap::ChunkRef> plan(*chunks);

  const uint64_t end = offset + length;
  uint64_t filled = offset;  // bytes before this are written (or zeroed)
  for (size_t i = 0; i < plan.size(); ++i) {
    const bootstrap::ChunkRef& chunk = plan[i];
    const uint64_t chunk_end = chunk.file_offset + chunk.uncompressed_size;
    const uint64_t from = std::max(offset, chunk.file_offset);
    const uint64_t to = std::min(end, chunk_end);
    if (from >= to) {
      if (chunk.file_offset >= end) break;  // the rest is read-ahead only
      continue;
    }
    const auto following = plan.subspan(i + 1);
    if (from > filled) std::memset(dst.data() + (filled - offset), 0, from - filled);  // hole
    uint8_t* out = dst.data() + (from - offset);
    if (from == chunk.file_offset && to == chunk_end) {
      NYDUS_TRY(reader_->read_chunk(chunk, {out, chunk.uncompressed_size}, following));
    } else {
      NYDUS_TRY(reader_->read_chunk_range(chunk, from - chunk.file_offset, {out, to - from}, following));
    }
    filled = std::max(filled, to);
  }
  if (filled < end) std::memset(dst.data() + (filled - offset), 0, end - filled);  // trailing hole
  bytes_read_.fetch_add(length, std::memory_order_relaxed);
  return static_cast<size_t>(length);
}

Result<std::string> Filesystem::getxattr(NodeId node, std::string_view name) const {
  if (!options_.enable_xattr) return Status::unsupported("xattrs disabled (enable_xattr is false)");
  auto xattrs = image_->xattrs(ino_of(node));
  if (!xattrs.ok()) return xattrs.status();
  for (const auto& x : *xattrs)
    if (x.name == name) return x.value;
  return Status(Code::kNoData, "no such xattr");
}

Result<std::vector<std::string>> Filesystem::listxattr(NodeId node) const {
  if (!options_.enable_xattr) return Status::unsupported("xattrs disabled (enable_xattr is false)");
  auto xattrs = image_->xattrs(ino_of(node));
  if (!xattrs.ok()) return xattrs.status();
  std::vector<std::string> names;
  names.reserve(xattrs->size());
  for (const auto& x : *xattrs) names.push_back(x.name);
  return names;
}

struct statvfs Filesystem::statfs() const {
  struct statvfs sv {};
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_files = image_->super().inodes_count;
  sv.f_namemax = 255;
  sv.f_flag = ST_RDONLY;
  return sv;
}

}  // namespace nydus::fs
