// Bootstrap loader: rebuilds a builder::Tree from an existing RAFS v5/v6
// image, the way upstream's Tree::from_bootstrap does, so that a parent
// image (`create --parent-bootstrap`) or the layers of `merge` can be
// merged with merge_layer() and written again.
//
// Every node gets its attributes (mode, uid/gid, size, rdev, mtime with
// nanoseconds), xattrs (sorted), symlink target and, for regular files,
// the ChunkRefs of the image (every name of a hardlink group carries the
// group's chunks, so whichever name leads the group after a merge has
// them). Hardlinks: regular files sharing an inode number share a
// `hardlink_group`. Nodes carry no ContentSource: their data is already in
// the image's blobs. The tree is finalized.
//
// Errors name the bootstrap and the path that failed. Thread-compatible:
// the Image is only read.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "bootstrap/image.h"
#include "builder/tree.h"
#include "common/status.h"

namespace nydus::builder {

struct LoadOptions {
  // New blob index for each blob index of the image (merge renumbers the
  // layers' blob tables into one); empty = keep the indexes.
  std::vector<uint32_t> blob_index_map;
  std::string name;  // for messages; "" = "bootstrap"
};

Result<std::unique_ptr<Tree>> load_bootstrap(const bootstrap::Image& image, const LoadOptions& options = {});

}  // namespace nydus::builder
