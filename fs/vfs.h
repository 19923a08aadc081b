// fs::Vfs: the one tree a FUSE session serves, with RAFS instances attached
// at paths (upstream: fuse-backend-rs api::vfs::Vfs + api::pseudo_fs).
//
// Shared mode (nydus-snapshotter daemon_mode=shared, nydusd-contract.md §4):
// one daemon, one FUSE mount, each image attached at "/<snapshot-id>" by
// POST /api/v1/mount. A pseudo filesystem of read-only directories holds the
// mountpoints; "/a/b" creates the pseudo directory "/a" as needed, and
// removes it again when the last mount beneath it goes away (upstream keeps
// empty pseudo directories forever, so a DELETEd "/sid" stays listed as an
// empty directory; we prune it).
//
// Dedicated mode: the single instance is attached at "/" and the Vfs is a
// pass-through: node ids and attributes are the instance's own, and the
// request path costs one atomic load (no reference counting). Upstream
// encodes dedicated-mode inodes as (1 << 56) | ino; we deliberately do not.
// While "/" is mounted nothing else can be; "/" can only be mounted on an
// empty Vfs.
//
// Node ids in shared mode (upstream VfsInode):
//   (index << 56) | inner   for instance nodes; index 1..255 names the
//                           mount, inner is the instance's own NodeId
//                           (root = kRootNode), which must be < 2^56
//                           (VFS_MAX_INO); a larger one fails the request
//                           with kIo instead of aliasing another instance;
//   index 0                 pseudo directories: kRootNode (1) is the FUSE
//                           root, others count up from 2 and are never
//                           reused within a process (export_state() carries
//                           the counter across failover).
// Attributes of instance nodes are the instance's with st_ino replaced by
// the encoded id (as upstream's convert_attr). The root of an instance
// appears at its mountpoint with the instance root's attributes; ".." of an
// instance root (lookup and readdir) is the pseudo parent directory.
//
// Indexes are allocated round-robin from 1 (upstream allocate_fs_idx), so an
// index is reused only after the other 254 have been handed out. Each mount
// also gets a FUSE generation (1..2^32-1, increasing): lookups report it, so
// a kernel that still holds an inode of an unmounted instance (open file,
// cwd) sees a generation change when the index is reused and drops the old
// inode (fuse_iget "nodeid was reused") instead of mixing the two images.
// Failover must restore both: mount_at(path, fs, index, generation).
//
// Errors (message texts the admin API forwards verbatim, upstream's
// service::Error Display):
//   mount of a mounted path     kInvalidInput "object or filesystem already exists"
//   umount of an unknown path   kNotFound     "object or filesystem doesn't exist"
//   requests for a node of an unmounted index or a removed pseudo directory:
//                               kNotFound (ENOENT, as upstream get_fs_by_idx).
//
// Thread-safety: every method may be called from any thread. Requests
// (getattr ... statfs) never block on mount/umount and never take an
// exclusive lock: they load an immutable snapshot of the mount table
// (std::atomic<std::shared_ptr<const Table>>) and keep the instance alive by
// shared_ptr for the duration of the call, so an umount racing a read frees
// the instance only when the read returns. mount/umount/mount_at/
// import_state serialize among themselves on a mutex, copy the table, modify
// it and publish it; the change hooks run after publication, outside every
// Vfs lock, on the calling thread.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "fs/filesystem.h"

namespace nydus::fs {

using MountIndex = uint8_t;

inline constexpr int kIndexShift = 56;
inline constexpr NodeId kInnerNodeMask = (NodeId{1} << kIndexShift) - 1;  // VFS_MAX_INO
inline constexpr MountIndex kPseudoIndex = 0;

inline constexpr NodeId encode_node(MountIndex index, NodeId inner) {
  return (NodeId{index} << kIndexShift) | inner;
}
inline constexpr MountIndex index_of(NodeId node) { return static_cast<MountIndex>(node >> kIndexShift); }
inline constexpr NodeId inner_of(NodeId node) { return node & kInnerNodeMask; }

// A lookup result plus the FUSE generation to reply with (0 for pseudo
// directories and in dedicated mode). Slices to fs::Entry.
struct VfsEntry : Entry {
  uint64_t generation = 0;
};

// One attached instance.
struct MountInfo {
  std::string path;                // normalized: "/" or "/a/b" (no trailing '/')
  MountIndex index = 0;
  uint64_t generation = 0;         // 0 for "/"
  std::shared_ptr<Filesystem> fs;
  NodeId root = 0;                 // the instance root as the kernel sees it
  NodeId parent = 0;               // pseudo directory holding it; kRootNode for "/"
  std::string name;                // last path component; "" for "/"
  std::shared_ptr<void> context;   // the caller's, from mount(): e.g. its FsMetrics
};

// What a mount or umount changed in the tree the kernel sees, for the FUSE
// adapter's cache invalidation (fuse_lowlevel_notify_inval_entry/_inode;
// never from inside a request handler).
struct VfsChange {
  MountInfo mount;
  // The topmost name that appeared (mount) or disappeared (umount): the
  // mountpoint itself, or the outermost pseudo directory created for it /
  // pruned with it. inval_entry(entry_parent, entry_name) drops a cached
  // negative dentry (mount) or the whole cached subtree (umount);
  // inval_inode(entry_parent, 0, 0) drops the parent's cached attributes
  // and listing (inval_entry alone does not when no dentry was cached).
  // On umount also inval_inode(mount.root, 0, 0). Empty name for "/" (then
  // only inval_inode(kRootNode, 0, 0) applies).
  NodeId entry_parent = 0;
  std::string entry_name;
};

// Serializable Vfs bookkeeping for failover/hot upgrade, besides the mount
// records (path, index, generation) the daemon persists with each mount
// command (nydusd-contract.md §5).
struct VfsState {
  MountIndex next_index = 1;
  uint64_t next_generation = 1;
  NodeId next_pseudo_node = 2;
  // Node ids of pseudo directories, by path ("/a"); only directories that
  // hold mounts exist. Mountpoints themselves are not pseudo directories.
  std::vector<std::pair<std::string, NodeId>> pseudo_dirs;
};

class Vfs {
 public:
  // Same shape as Filesystem::DirFiller plus the FUSE generation of `node`.
  using DirFiller = std::function<bool(std::string_view name, NodeId node, const struct stat& attr,
                                       uint64_t next_cookie, uint64_t generation)>;
  using ChangeHook = std::function<void(const VfsChange&)>;

  Vfs();
  ~Vfs();
  Vfs(const Vfs&) = delete;
  Vfs& operator=(const Vfs&) = delete;

  // --- mount table (API thread) -------------------------------------------

  // Attaches `fs` at `path` ("/" or "/a[/b...]"; components may not be
  // empty, ".", ".." or longer than 255 bytes) and returns its index.
  // Fails with "object or filesystem already exists" if `path` is mounted,
  // kInvalidInput if it lies inside another mount or has mounts beneath it,
  // or if "/" and anything else would coexist; kIo when all 255 indexes are
  // in use ("vfs maximum mountpoints reached").
  // `context` is stored with the mount and handed back by find(),
  // instances(), route() and the hooks (the Vfs never looks at it).
  Result<MountIndex> mount(std::string_view path, std::shared_ptr<Filesystem> fs,
                           std::shared_ptr<void> context = {});
  // Failover restore: like mount() but at the given index (1..255, unused)
  // and generation (0: allocate a new one). Later allocations continue past
  // both.
  Result<MountIndex> mount_at(std::string_view path, std::shared_ptr<Filesystem> fs, MountIndex index,
                              uint64_t generation = 0, std::shared_ptr<void> context = {});
  // Detaches the instance at `path`; its nodes answer kNotFound from now on.
  // The instance is destroyed when the last in-flight request using it
  // returns (for "/": when the Vfs is destroyed, see the .cc).
  Status umount(std::string_view path);

  std::optional<MountInfo> find(std::string_view path) const;
  // Every attached instance, sorted by path (metrics, backend_collection).
  std::vector<MountInfo> instances() const;
  // True while an instance is attached at "/" (pass-through mode).
  bool dedicated() const { return passthrough_.load(std::memory_order_acquire) != nullptr; }

  // Which instance serves `node`, for per-instance bookkeeping in the FUSE
  // adapter (metrics: the mount's context, the image inode via
  // fs->ino_of(inner)). Empty `fs` for pseudo directories and nodes of
  // unmounted indexes. Holding the result keeps the instance alive. Costs
  // one snapshot load; in dedicated mode none (fs and context then alias the
  // pinned "/" mount without owning it, which is safe for the Vfs's life).
  struct Route {
    std::shared_ptr<Filesystem> fs;
    NodeId inner = 0;
    MountIndex index = 0;
    std::shared_ptr<void> context;
  };
  Route route(NodeId node) const;

  // Called after a successful mount / umount (see VfsChange). Set them
  // before serving; they run on the thread that called mount/umount.
  void set_on_mount(ChangeHook hook);
  void set_on_umount(ChangeHook hook);

  // Failover: export on the old daemon; import into a fresh, empty Vfs
  // before the mount_at() calls (pseudo directories they create then get
  // their old ids back).
  VfsState export_state() const;
  Status import_state(const VfsState& state);

  // --- requests (FUSE workers) --------------------------------------------
  // Same contracts as the fs::Filesystem methods of the same name.

  Result<struct stat> getattr(NodeId node) const;
  Result<VfsEntry> lookup(NodeId parent, std::string_view name) const;
  Result<std::string> readlink(NodeId node) const;
  Status readdir(NodeId dir, uint64_t cookie, bool full_attr, const DirFiller& fn) const;
  Status open(NodeId node) const;
  Result<size_t> read(NodeId node, uint64_t offset, std::span<uint8_t> dst) const;
  // Pseudo directories have no xattrs: kNoData / empty list. In shared
  // mode an instance with xattrs disabled answers the same instead of
  // kUnsupported: the adapter turns kUnsupported into ENOSYS, which the
  // kernel applies to the whole FUSE mount, i.e. to every other instance.
  // Dedicated mode passes kUnsupported through (upstream's behaviour).
  Result<std::string> getxattr(NodeId node, std::string_view name) const;
  Result<std::vector<std::string>> listxattr(NodeId node) const;
  Result<struct statvfs> statfs(NodeId node) const;
  // Node ids need no bookkeeping (instances' are pure functions of the
  // image, pseudo ones live as long as their directory).
  void forget(NodeId, uint64_t) const {}

  // True for pseudo directories (shared mode, index 0). Their contents
  // change with mounts: the adapter should not cache negative lookups in
  // them for long.
  bool is_pseudo(NodeId node) const {
    return !dedicated() && index_of(node) == kPseudoIndex;
  }

 private:
  struct Mount;
  struct Dir;
  struct Table;
  struct Target;

  std::shared_ptr<const Table> table() const { return table_.load(std::memory_order_acquire); }
  const Filesystem* passthrough_fs() const;
  Result<MountIndex> attach(std::string_view path, std::shared_ptr<Filesystem> fs,
                            std::optional<MountIndex> index, uint64_t generation, std::shared_ptr<void> context);
  Result<Target> resolve(NodeId node) const;
  Result<VfsEntry> mount_root_entry(const Mount& m) const;
  Result<struct stat> pseudo_attr(const Table& t, NodeId node) const;

  std::atomic<std::shared_ptr<const Table>> table_;
  // Dedicated fast path: the mount at "/", or null. Mounts that were ever
  // attached at "/" are kept in pinned_ until ~Vfs, so a request that
  // loaded this pointer just before umount("/") still uses a live object.
  std::atomic<const Mount*> passthrough_{nullptr};

  mutable std::mutex writer_mu_;  // serializes table changes; guards the members below
  std::vector<std::shared_ptr<const Mount>> pinned_;
  MountIndex next_index_ = 1;
  uint64_t next_generation_ = 1;
  NodeId next_pseudo_node_ = 2;
  std::vector<std::pair<std::string, NodeId>> reserved_dirs_;  // from import_state()
  ChangeHook on_mount_;
  ChangeHook on_umount_;
};

}  // namespace nydus::fs
