// RAFS bootstrap writers (rafs-format.md §6): lay out a builder::Tree whose
// regular files are already chunked into blobs as a RAFS v5 or v6
// bootstrap that upstream nydusd, our reader and (v6) the kernel's erofs
// driver read. Pure functions of their inputs: the same tree and options
// give byte-identical output. Not thread-safe on the same Tree (they assign
// Node::ino).
#pragma once

#include <cstdint>
#include <vector>

#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::builder {
class Tree;
}

namespace nydus::bootstrap {

struct WriterOptions {
  uint32_t chunk_size = 1 << 20;
  Compressor compressor = Compressor::kZstd;
  Digester digester = Digester::kBlake3;
  bool explicit_uid_gid = true;
  // Paths ("/a/b") whose inodes go into the prefetch table, in order.
  std::vector<std::string> prefetch_paths;
};

// `blobs` is the image's blob table, in order; every ChunkRef in the tree
// refers to it by blob_index. The blob infos carry the blob.meta fields the
// v6 blob table records.
Result<std::vector<uint8_t>> write_rafs_v6(builder::Tree& tree, const std::vector<BlobInfo>& blobs,
                                           const WriterOptions& options);
Result<std::vector<uint8_t>> write_rafs_v5(builder::Tree& tree, const std::vector<BlobInfo>& blobs,
                                           const WriterOptions& options);

}  // namespace nydus::bootstrap
