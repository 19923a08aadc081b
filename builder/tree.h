// builder::Tree: the in-memory file tree the image builder assembles from a
// source (a directory or an OCI layer tarball) and hands to the RAFS
// writers. It is plain data: built by one thread, then read by the writers.
//
// Conventions (shared by every source and writer):
// - Names are raw bytes (any byte but '/' and NUL; not necessarily UTF-8),
//   at most 255 bytes. Children are kept sorted by memcmp order of names.
// - `mode` is the full st_mode; `rdev` is in Linux new_encode_dev form.
// - Hardlinks: every name of a hardlinked regular file is its own Node;
//   all but the first in tree pre-order point at the first through
//   `hardlink_of`, and share its content and chunks. `nlink` is the group
//   size (directories: 2 + number of subdirectories), set by finalize().
// - Regular file content is described by `content` (where to read it) and
//   after chunking by `chunks` (where it went in the blob).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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
};

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
  Node* parent = nullptr;
  std::vector<std::unique_ptr<Node>> children;  // directories only, sorted

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
  Result<Node*> add(const std::string& path, std::unique_ptr<Node> node);
  Node* find(const std::string& path);
  // Removes the node at `path` (and its subtree). Returns false if absent.
  bool remove(const std::string& path);

  // Sorts children, computes nlink for directories and hardlink groups,
  // sets parent pointers. Call once after the last add().
  void finalize();

  // Pre-order walk (parents before children, children in sorted order).
  void walk(const std::function<void(Node&)>& fn);
  void walk(const std::function<void(const Node&)>& fn) const;

 private:
  std::unique_ptr<Node> root_;
};

}  // namespace nydus::builder
