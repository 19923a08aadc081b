// DaemonSavedState: what a daemon hands to its successor through the
// supervisor (nydusd-contract.md §5) next to the /dev/fuse fd, and its
// wire encoding.
//
// The bytes are opaque to the snapshotter; only C++-to-C++ compatibility
// matters (decoding Rust nydusd's versionize state is out of scope). The
// encoding is one JSON object:
//
//   {"format": "nydus-p2p-daemon-state", "version": 1,
//    "fuse_conn_id": 47,
//    "fuse_init": {"major": 7, "minor": 45, "max_readahead": 131072,
//                  "flags": 4294967291, "flags2": 255},
//    "vfs": {"next_index": 3, "next_generation": 3, "next_pseudo_node": 2,
//            "pseudo_dirs": [["/a", 2]]},
//    "mounts": [{"mountpoint": "/42", "fs_type": "rafs", "source": "/x/image.boot",
//                "config": "{...config text...}", "prefetch_files": ["/etc"],
//                "vfs_index": 1, "generation": 1, "registry_auth": "dXNlcjpwYXNz"}]}
//
// "registry_auth" (optional) carries credentials renewed through
// PUT /api/v1/config after the mount: the config text still holds the
// ones it was mounted with.
//
// Strings that are not valid UTF-8 (file names may be any bytes) are
// written as {"base64": "..."} instead of a JSON string, so encoding is
// lossless and never fails. Decoding treats the input as untrusted: it never
// throws, bounds sizes and nesting, rejects unknown keys, wrong types,
// out-of-range numbers, duplicate mountpoints or vfs indexes, and relative
// paths, and names the offending field in the error. A different `version`
// is kUnsupported (so a newer daemon's state is refused cleanly).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace nydus::daemon {

// The FUSE_INIT request (struct fuse_init_in) the kernel sent when the
// connection was set up. A successor replays it to its own libfuse
// session, because the kernel never sends INIT again on a connection.
struct FuseInitParams {
  uint32_t major = 0;
  uint32_t minor = 0;
  uint32_t max_readahead = 0;
  uint32_t flags = 0;
  uint32_t flags2 = 0;  // only meaningful with FUSE_INIT_EXT in flags

  bool operator==(const FuseInitParams&) const = default;
};

// One filesystem instance of the VFS (upstream FsBackendMountCmd plus its
// VFS index), enough to rebuild it.
struct SavedMount {
  std::string mountpoint;                   // VFS path, absolute: "/" or "/<sid>"
  std::string fs_type;                      // "rafs" | "passthrough_fs"
  std::string source;                       // bootstrap path
  std::string config;                       // the config text as given (JSON v1/v2 or TOML)
  std::vector<std::string> prefetch_files;  // absolute paths
  uint8_t vfs_index = 0;                    // fs::MountIndex
  uint64_t generation = 0;                  // FUSE generation of the mount (0 for "/")
  std::optional<std::string> registry_auth;  // renewed credentials, replacing the config's

  bool operator==(const SavedMount&) const = default;
};

// fs::VfsState, mirrored here so this file does not depend on fs/.
struct SavedVfsState {
  uint8_t next_index = 1;
  uint64_t next_generation = 1;
  uint64_t next_pseudo_node = 2;
  std::vector<std::pair<std::string, uint64_t>> pseudo_dirs;  // absolute path, node id

  bool operator==(const SavedVfsState&) const = default;
};

struct DaemonSavedState {
  uint64_t fuse_conn_id = 0;  // /sys/fs/fuse/connections/<id>; major<<20|minor of st_dev
  FuseInitParams fuse_init;
  SavedVfsState vfs;
  std::vector<SavedMount> mounts;

  bool operator==(const DaemonSavedState&) const = default;
};

inline constexpr uint32_t kSavedStateVersion = 1;
// Decoding limits (the supervisor already caps the whole message).
inline constexpr size_t kSavedStateMaxBytes = 64u << 20;
inline constexpr size_t kSavedStateMaxMounts = 256;  // vfs_index is a u8
inline constexpr size_t kSavedStateMaxPathBytes = 4096;
inline constexpr size_t kSavedStateMaxConfigBytes = 4u << 20;

// Never fails for any value of `state`.
std::vector<uint8_t> encode_saved_state(const DaemonSavedState& state);

// Errors: kInvalidInput (malformed, with the field named), kUnsupported
// (a version this build does not know).
Result<DaemonSavedState> decode_saved_state(std::span<const uint8_t> bytes);

}  // namespace nydus::daemon
