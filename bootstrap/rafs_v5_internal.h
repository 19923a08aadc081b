// RAFS v5 reader internals exposed for tests and tools only (not for fs/ or
// daemon/, which go through bootstrap::Image::open()).
//
// Contract
// - open_rafs_v5_layout() is open_rafs_v5() with the inode record layout
//   forced instead of detected (rafs-format.md §3.7 standard, §3.12 legacy).
//   Forcing a layout never weakens validation: a file read with the wrong
//   layout is refused exactly like any other malformed file. kLegacy images
//   are still refused unless every inode digest verifies.
// - verify_rafs_v5_inode_digests() recomputes every inode table entry's
//   i_digest (§3.11) with the image digester: kCorrupt naming the first
//   entry that does not match, kInvalidInput if `image` is not a v5 image.
//   Cost is one hash per entry over data already in memory.
// - All functions are thread-safe on an opened image (it is immutable).
#pragma once

#include <memory>
#include <string>

#include "bootstrap/image.h"
#include "common/file_bytes.h"

namespace nydus::bootstrap {

enum class RafsV5Layout {
  kDetect,    // what open_rafs_v5() does: legacy iff the root record says so
  kStandard,  // §3.7, written by every released nydus-image
  kLegacy,    // §3.12, only seen in nydusd_daemon_test_bootstrap
};

Result<std::unique_ptr<Image>> open_rafs_v5_layout(FileBytes file, const std::string& name,
                                                   RafsV5Layout layout);

Status verify_rafs_v5_inode_digests(const Image& image);

// The layout `image` was decoded with (kStandard or kLegacy); kDetect when
// `image` is not a RAFS v5 image.
RafsV5Layout rafs_v5_layout(const Image& image);

}  // namespace nydus::bootstrap
