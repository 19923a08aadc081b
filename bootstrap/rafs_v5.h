// RAFS v5 reader (rafs-format.md §3). Internal to bootstrap/: use
// bootstrap::Image::open().
#pragma once

#include <memory>
#include <string>

#include "bootstrap/image.h"
#include "common/file_bytes.h"

namespace nydus::bootstrap {

inline constexpr uint32_t kRafsV5Magic = 0x52414653;
inline constexpr uint32_t kRafsV5Version = 0x500;

// Takes ownership of the file bytes; validates everything (see image.h).
Result<std::unique_ptr<Image>> open_rafs_v5(FileBytes file, const std::string& name);

}  // namespace nydus::bootstrap
