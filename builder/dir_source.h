// Directory source: reads a directory tree from the local filesystem into a
// builder::Tree, the way upstream nydus-image's directory builder does
// (builder/src/directory.rs, core/node.rs).
//
// - Entries are lstat'ed; symlinks are never followed (only the root path
//   itself is resolved). Every kind is kept: regular files (sparse ones get
//   their data ranges from SEEK_DATA/SEEK_HOLE), directories, symlinks,
//   char/block devices (rdev in new_encode_dev form), FIFOs and sockets.
// - Names are raw bytes; children are sorted once per directory.
// - uid/gid, the full st_mode (setuid/setgid/sticky included) and
//   nanosecond mtimes are kept, except the root's mtime, which is 0:
//   upstream ignores it so repeated builds of the same tree are identical.
// - Xattrs (llistxattr/lgetxattr, never following symlinks) with the
//   prefixes RAFS accepts — "user.", "security.", "trusted.",
//   "system.posix_acl_access", "system.posix_acl_default" — are kept, sorted
//   by name; others are skipped with a warning (upstream refuses the
//   build). A filesystem without xattr support gives none.
// - Hardlinks: regular files with the same (st_dev, st_ino) share a
//   `hardlink_group`; nlink counts only the names inside the tree.
// - Regular file content is read lazily: ContentSource::read opens the file
//   by path on every call and preads from it, so the tree holds no fds. A
//   file that shrank since the walk is an error at read time.
// - Whiteouts: by default handled like `nydus-image create` without a
//   parent bootstrap: strip_whiteouts(tree, oci) (see whiteout.h).
//
// Errors (kIo / kInvalidInput) name the path that failed. The returned
// tree is finalized.
#pragma once

#include <memory>
#include <string>

#include "builder/tree.h"
#include "builder/whiteout.h"
#include "common/status.h"

namespace nydus::builder {

struct DirSourceOptions {
  WhiteoutSpec whiteout_spec = WhiteoutSpec::kOci;
  // true: drop whiteouts like a build without --parent-bootstrap; false:
  // keep them for a later merge_layer() (a build with a parent).
  bool strip_whiteouts = true;
};

Result<std::unique_ptr<Tree>> read_directory(const std::string& root);
Result<std::unique_ptr<Tree>> read_directory(const std::string& root, const DirSourceOptions& options);

}  // namespace nydus::builder
