// Daemon configuration: the nydusd config file in any of its three shapes
// (JSON v2, TOML v2, JSON v1; nydusd-contract.md §2), normalized into one
// RafsConfig. Parsing happens at start-up (and later for API mounts); the
// result is a plain value, safe to copy between threads.
//
// Unknown keys are ignored everywhere, as upstream does. Known keys with a
// wrong type or an out-of-range value are errors naming the key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/registry_config.h"
#include "p2p/p2p_config.h"
#include "common/status.h"

namespace nydus::daemon {

struct BackendConfig {
  std::string type;          // localfs, registry, oss, s3, localdisk, http-proxy
  nlohmann::json settings;   // the type's own keys, as written
  // localfs
  std::string dir;
  std::string blob_file;
  std::vector<std::string> alt_dirs;
  // registry
  backend::RegistryConfig registry;
};

struct CacheConfig {
  std::string type;          // blobcache, filecache, fscache, dummycache, ""
  std::string work_dir = ".";
  bool compressed = false;
  bool validate = false;
  bool disable_indexed_map = false;
};

struct PrefetchConfig {
  bool enable = false;
  uint32_t threads = 8;
  uint64_t merging_size = 1 << 20;
  uint64_t bandwidth_rate = 0;
  bool prefetch_all = true;
};

struct RafsConfig {
  int source_version = 1;    // 1 or 2: which shape the file had
  std::string id;            // device.id / v2 id
  BackendConfig backend;
  CacheConfig cache;
  std::string mode = "direct";
  bool digest_validate = false;
  bool iostats_files = false;
  bool enable_xattr = false;
  bool access_pattern = false;
  bool latest_read_files = false;
  uint64_t amplify_io = 1 << 20;
  PrefetchConfig prefetch;
  // The top-level `p2p` object (the same key in v1 JSON and v2 JSON/TOML),
  // when present; daemon/p2p_runtime.h says how it combines with the
  // daemon-level P2P file.
  std::optional<p2p::P2pConfig> p2p;
};

// Parses config text: JSON v2 ("version": 2), else TOML v2, else JSON v1.
// The error names the first problem found in the most plausible shape.
Result<RafsConfig> parse_config(const std::string& text);
Result<RafsConfig> load_config_file(const std::string& path);

// The config `--localfs-dir D` stands for: localfs backend at D, blobcache
// work_dir D.
RafsConfig localfs_dir_config(const std::string& dir);

// The normalized config as v2 JSON (as nydusd reports it in DaemonInfo).
nlohmann::json to_v2_json(const RafsConfig& config);

}  // namespace nydus::daemon
