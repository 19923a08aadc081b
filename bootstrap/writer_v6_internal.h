// RAFS v6 writer internals exposed for tests and tools only (the builder
// goes through write_rafs_v6() in bootstrap/writer.h).
//
// Contract
// - write_rafs_v6_root() is write_rafs_v6() over a bare root Node (a
//   finalized builder::Tree's root, or a hand-built node tree with
//   hardlink_of and nlink set as Tree::finalize() would). The root must be a
//   directory; its name is ignored. Same output, same errors, same side
//   effect (assigns Node::ino = nid).
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

Result<std::vector<uint8_t>> write_rafs_v6_root(builder::Node& root, const std::vector<BlobInfo>& blobs,
                                                const WriterOptions& options);

// Where mapped_blkaddr of the device slots is aligned to (current
// nydus-image: 512 KiB; the v2.2 fixture used 2 MiB).
inline constexpr uint64_t kV6DeviceAlignment = 512 * 1024;

}  // namespace nydus::bootstrap
