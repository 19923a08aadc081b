// RafsSuperFlags (rafs-format.md §1.4): the u64 flag word of the v5
// superblock and of the v6 extended superblock. Shared by the readers and
// the writers so both sides agree on one table.
#pragma once

#include <cstdint>

namespace nydus::bootstrap {

inline constexpr uint64_t kFlagCompressionNone = 0x1;
inline constexpr uint64_t kFlagCompressionLz4 = 0x2;
inline constexpr uint64_t kFlagHashBlake3 = 0x4;
inline constexpr uint64_t kFlagHashSha256 = 0x8;
inline constexpr uint64_t kFlagExplicitUidGid = 0x10;
inline constexpr uint64_t kFlagHasXattr = 0x20;
inline constexpr uint64_t kFlagCompressionGzip = 0x40;
inline constexpr uint64_t kFlagCompressionZstd = 0x80;
inline constexpr uint64_t kFlagInlinedChunkDigest = 0x100;
inline constexpr uint64_t kFlagTarfsMode = 0x200;

}  // namespace nydus::bootstrap
