// RAFS v6 (EROFS-compatible) reader (rafs-format.md §4). Internal to
// bootstrap/: use bootstrap::Image::open().
#pragma once

#include <memory>
#include <string>

#include "bootstrap/image.h"
#include "common/file_bytes.h"

namespace nydus::bootstrap {

inline constexpr uint32_t kErofsMagic = 0xE0F5E1E2;
inline constexpr size_t kErofsSuperOffset = 1024;

// Takes ownership of the file bytes; validates everything (see image.h).
Result<std::unique_ptr<Image>> open_rafs_v6(FileBytes file, const std::string& name);

}  // namespace nydus::bootstrap
