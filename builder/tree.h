// builder::Tree: the in-memory file tree the image builder assembles from a
// source (a directory or an OCI layer tarball) and hands to the RAFS
// writers. It is plain data: built by one thread, then read by the writers.
//
// Conventions (shared by every source and writer):
// - Names are raw bytes (any byte but '/' and NUL; not necessarily UTF-8),
//   at most 255 bytes. Children are sorted by memcmp order of names once
//   finalize() has run (before that, see Tree::add).
// - `mode` is the full st_mode; `rdev` is in Linux new_encode_dev form.
// - Hardlinks: every name of a hardlinked regular file is its own Node;
//   all but the first in tree pre-order point at the first through
//   `hardlink_of`, and share its content and chunks. `nlink` is the group
//   size (directories: 2 + number of subdirectories), set by finalize().
//   Sources mark group membership with `hardlink_group` (any non-zero id
//   shared by the names; no pointers, so removing or replacing a name
//   before finalize() never leaves one dangling); a hand-set `hardlink_of`
//   before finalize() is honoured too. Only regular files are hardlinked
//   (upstream nydus-image gives symlinks and specials distinct inodes).
// - Regular file content is described by `content` (where to read it) and
//   after chunking by `chunks` (where it went in the blob).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::builder {

// Where a regular file's bytes come from. `read(offset, dst)` fills dst
// completely or fails; sources keep whatever handle they need.
struct ContentSource {
  std::function<Status(uint64_t offset, std::span<uint8_t> dst)> read;
  // Sparse files: data ranges (offset, length); empty = all data.
  std::vector<std::pair<uint64_t, uint64_t>> data_ranges;
  // True when the source knows the file is sparse: then data_ranges is
  // authoritative even when empty (the whole file is a hole). Bytes outside
  // the ranges read as zeros through read() all the same.
  bool sparse = false;
};

// Linux new_encode_dev(): the 32-bit device number RAFS stores (minor low
// byte, 12-bit major, then the high minor bits).
inline uint32_t new_encode_dev(uint32_t major, uint32_t minor) {
  return (minor & 0xffu) | (major << 8) | ((minor & ~0xffu) << 12);
}

struct Node {
  std::string name;             // "" for the root
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;            // regular: bytes; symlink: target length
  uint32_t rdev = 0;
  uint64_t mtime = 0;
  uint32_t mtime_nsec = 0;
  uint32_t nlink = 1;
  std::string symlink_target;
  std::vector<bootstrap::Xattr> xattrs;   // sorted by name
  ContentSource content;                  // regular files only
  std::vector<bootstrap::ChunkRef> chunks;  // filled by the chunker, file order
  Node* hardlink_of = nullptr;            // first name of the hardlink group
  uint64_t hardlink_group = 0;            // set by sources: 0 = none; equal ids = one inode
  Node* parent = nullptr;
  std::vector<std::unique_ptr<Node>> children;  // directories only; sorted by finalize()
  // Bookkeeping of Tree::add/find: children[0, sorted_prefix) are sorted,
  // later ones were appended out of order. Code that edits `children`
  // directly must call Tree::finalize() before the next add/find/remove.
  size_t sorted_prefix = 0;

  // Assigned by the writers (v5: inode index; v6: nid) while laying out.
  uint64_t ino = 0;

  bool is_dir() const { return (mode & 0170000) == 0040000; }
  bool is_reg() const { return (mode & 0170000) == 0100000; }
  bool is_symlink() const { return (mode & 0170000) == 0120000; }
};

class Tree {
 public:
  Tree();
  Node& root() { return *root_; }
  const Node& root() const { return *root_; }

  // Adds (or replaces) the node at `path` ("a/b/c", no leading slash),
  // creating missing parent directories with mode 0755. Returns the node.
  // Paths are normalized: leading '/', empty and "." components are
  // dropped, so "./a//b/" is "a/b"; a path with no component ("", ".",
  // "/") replaces the root, which must stay a directory. Refused with
  // kInvalidInput (message names the path): ".." components, components
  // longer than 255 bytes or containing NUL, and a parent component that
  // exists but is not a directory. add() sets node->name to the last
  // component. Replacing a directory by a directory that has no children of
  // its own keeps the old children (a tar entry for a directory after
  // entries inside it only sets its attributes); any other replacement
  // drops the old subtree. Names added in ascending order keep `children`
  // sorted at O(1) per add; names out of order are appended and merged in
  // batches of about sqrt(n) (O(n^1.5) overall for a directory of n
  // names), so `children` is sorted only after finalize().
  Result<Node*> add(const std::string& path, std::unique_ptr<Node> node);
  Node* find(const std::string& path);
  const Node* find(const std::string& path) const;
  // Removes the node at `path` (and its subtree). Returns false if absent
  // (and for the root, which cannot be removed).
  bool remove(const std::string& path);

  // Sorts children, computes nlink for directories and hardlink groups,
  // sets parent pointers, hardlink_of (first name in pre-order, nullptr for
  // that one and for files not hardlinked), hardlink_group (renumbered
  // 1.. in pre-order of the groups' first names; 0 when not hardlinked) and
  // symlink sizes. Deterministic. Call once after the last add(); calling
  // it again is harmless.
  void finalize();

  // Pre-order walk (parents before children, children in their current
  // order: sorted after finalize()).
  // `fn` must not add or remove nodes.
  void walk(const std::function<void(Node&)>& fn);
  void walk(const std::function<void(const Node&)>& fn) const;

 private:
  std::unique_ptr<Node> root_;
};

}  // namespace nydus::builder
