// RAFS v5 writer internals exposed for tests and tools only (the builder
// goes through write_rafs_v5() in bootstrap/writer.h).
//
// Contract
// - write_rafs_v5_root() is write_rafs_v5() over a bare root Node, so a test
//   can lay out a hand-built node tree without builder::Tree. The root must
//   be a directory; its name is ignored (the bootstrap calls it "/"). Same
//   output, same errors, same side effect (assigns Node::ino).
// - Not thread-safe on the same node tree; distinct trees may be written
//   concurrently.
#pragma once

#include <cstdint>
#include <vector>

#include "bootstrap/image.h"
#include "bootstrap/writer.h"
#include "common/status.h"

namespace nydus::builder {
struct Node;
}

namespace nydus::bootstrap {

Result<std::vector<uint8_t>> write_rafs_v5_root(builder::Node& root, const std::vector<BlobInfo>& blobs,
                                                const WriterOptions& options);

}  // namespace nydus::bootstrap
