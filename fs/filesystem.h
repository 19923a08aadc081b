// fs::Filesystem: the FUSE-free core of the daemon.
//
// It answers the questions a FUSE request asks (attributes, lookups,
// directory listings, link targets, xattrs, file data) from an immutable
// bootstrap::Image and a backend::ChunkReader, in POSIX types (struct stat,
// struct statvfs) and Status codes. The FUSE adapter in daemon/ translates
// requests to these calls and Status to errno; nothing here includes FUSE
// headers, so the core is testable without a mount.
//
// Node ids: the FUSE node id of the image root is kRootNode (1). Other ids
// are derived arithmetically from the image inode number (v5: ino itself;
// v6: nid + 2, so that no nid, 0 included, collides with the root's id).
// The mapping is a pure function of the image, so forget() needs no
// bookkeeping and ids stay valid for the life of the mount.
//
// Thread-safety: all methods are const or internally synchronized and may
// be called from any number of FUSE worker threads at once.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/chunk_reader.h"
#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::fs {

using NodeId = uint64_t;
inline constexpr NodeId kRootNode = 1;

struct FsOptions {
  bool enable_xattr = false;
  // Reported for every inode when the image does not record owners
  // (no EXPLICIT_UID_GID flag), as nydusd does: the daemon's own ids.
  uint32_t default_uid = 0;
  uint32_t default_gid = 0;
  // amplify_io: a read also plans this many bytes of the file beyond its
  // end, so the chunk reader may fetch them in the same backend request
  // (only when there is a cache to keep them in).
  uint64_t amplify_bytes = 0;
};

struct Entry {
  NodeId node = 0;
  struct stat attr {};
};

class Filesystem {
 public:
  // `image` may be shared with other Filesystems (shared mode mounts of
  // one bootstrap file share its parsed metadata): it is only read.
  Filesystem(std::shared_ptr<const bootstrap::Image> image, std::unique_ptr<backend::ChunkReader> reader,
             FsOptions options);

  const bootstrap::Image& image() const { return *image_; }
  const FsOptions& options() const { return options_; }
  // File bytes returned by read() so far (upstream's data_read).
  uint64_t bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }

  NodeId node_of(bootstrap::Ino ino) const;
  bootstrap::Ino ino_of(NodeId node) const;

  Result<struct stat> getattr(NodeId node) const;
  Result<Entry> lookup(NodeId parent, std::string_view name) const;
  Result<std::string> readlink(NodeId node) const;

  // Lists `dir` from `cookie` (0 = start; "." and ".." included). `fn`
  // receives the entry name, its node id, a stat with at least st_ino and
  // st_mode filled (full attributes when `full_attr`), and the cookie of the
  // next entry; it returns false to stop (e.g. reply buffer full).
  using DirFiller = std::function<bool(std::string_view name, NodeId node, const struct stat& attr,
                                       uint64_t next_cookie)>;
  Status readdir(NodeId dir, uint64_t cookie, bool full_attr, const DirFiller& fn) const;

  // kIsDir / kInvalidInput unless `node` is a regular file.
  Status open(NodeId node) const;

  // Reads file bytes [offset, offset + dst.size()) clipped at EOF; returns
  // the number of bytes written to dst. Chunks are fetched, decompressed
  // and (if configured) verified by the ChunkReader; any chunk failure fails
  // the whole read (no partial data that could be wrong).
  Result<size_t> read(NodeId node, uint64_t offset, std::span<uint8_t> dst) const;

  // xattrs: kUnsupported when xattrs are disabled; getxattr of a missing
  // name is kNoData.
  Result<std::string> getxattr(NodeId node, std::string_view name) const;
  Result<std::vector<std::string>> listxattr(NodeId node) const;

  struct statvfs statfs() const;

 private:
  struct stat to_stat(const bootstrap::InodeAttr& attr) const;

  std::shared_ptr<const bootstrap::Image> image_;
  std::unique_ptr<backend::ChunkReader> reader_;
  mutable std::atomic<uint64_t> bytes_read_{0};
  FsOptions options_;
  bootstrap::Ino root_ino_;
  uint64_t node_bias_;  // node = ino + node_bias_ for every non-root inode
};

}  // namespace nydus::fs
