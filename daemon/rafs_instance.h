// RafsInstance: one mounted RAFS image with everything that serves it: the
// opened bootstrap, its backend and blob cache (ChunkReader), the
// fs::Filesystem the Vfs routes requests to, the background prefetch, and
// the counters the admin API reports for it (FsMetrics, BackendMetrics,
// CacheMetrics) and, with `access_pattern`, the backend read trace.
//
// Built from upstream's mount command (FsBackendMountCmd): the bootstrap
// path, the config text (JSON v1/v2 or TOML), the prefetch file list, and
// the virtual mountpoint it is attached at ("/" in dedicated mode, "/<sid>"
// in shared mode). In dedicated mode main() builds it from the command line;
// in shared mode POST /api/v1/mount does. The mount command is kept
// (command()) so failover can rebuild the instance in a successor.
//
// Thread-safety: the accessors may be called from any thread. Lifetime: the
// Vfs holds filesystem() and metrics_context() (which keeps the whole
// instance alive) while requests use it, so an instance detached from the
// Vfs is destroyed when the last in-flight request returns. Destruction
// stops the prefetch workers before the filesystem goes.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend_metrics.h"
#include "backend/chunk_reader.h"
#include "backend/prefetcher.h"
#include "backend/read_trace.h"
#include "common/status.h"
#include "daemon/config.h"
#include "fs/filesystem.h"
#include "fs/fs_metrics.h"

namespace nydus::daemon {

// What it takes to build an instance (upstream's mount command).
struct RafsMountSpec {
  std::string mountpoint;   // virtual mountpoint: "/" or "/<sid>"
  std::string source;       // bootstrap path
  std::string config_text;  // as given; empty when `config` came from elsewhere (--localfs-dir)
  RafsConfig config;        // config_text parsed (or built from the command line)
  std::vector<std::string> prefetch_files;  // absolute paths; empty: the image's own prefetch list
  // Credentials that replace the config's registry `auth` (IMAGE_PULL_AUTH,
  // dedicated mode only, as upstream).
  std::optional<std::string> auth_override;
};

class RafsInstance {
 public:
  // Opens the bootstrap and the backend and starts the prefetch. Errors
  // name the bootstrap or the config key that is wrong (kInvalidInput,
  // kCorrupt, kIo, kUnsupported for features this build lacks: gzip blobs,
  // backend types other than localfs and registry, fscache).
  static Result<std::shared_ptr<RafsInstance>> create(RafsMountSpec spec);

  ~RafsInstance();
  RafsInstance(const RafsInstance&) = delete;
  RafsInstance& operator=(const RafsInstance&) = delete;

  const RafsMountSpec& spec() const { return spec_; }
  const std::string& mountpoint() const { return spec_.mountpoint; }
  // device.id (the key of /metrics/blobcache); the mountpoint when unset.
  const std::string& cache_id() const { return spec_.config.id.empty() ? spec_.mountpoint : spec_.config.id; }
  std::chrono::system_clock::time_point mounted_at() const { return mounted_at_; }

  const std::shared_ptr<fs::Filesystem>& filesystem() const { return filesystem_; }
  backend::ChunkReader& reader() const { return *reader_; }
  backend::BackendMetrics& backend_metrics() const { return *backend_metrics_; }
  backend::CacheMetrics& cache_metrics() const { return *cache_metrics_; }
  fs::FsMetrics& fs_metrics() const { return *fs_metrics_; }
  // Every backend request of this instance (backend/read_trace.h), kept
  // when the config has `access_pattern: true`; nullptr otherwise.
  const backend::ReadTrace* read_trace() const { return read_trace_.get(); }
  // The Vfs mount context: points at fs_metrics() (what the FUSE adapter
  // counts into) and owns this instance.
  std::shared_ptr<void> metrics_context();

  // The registry credentials now in use (after PUT /api/v1/config).
  std::string registry_auth() const;
  // Replaces the backend's credentials (registry backend only).
  Status update_registry_auth(const std::string& auth);
  // The credentials that replace the config's, if any (set by
  // update_registry_auth(), or given as spec().auth_override): what a
  // successor must use instead of the config's (failover).
  std::optional<std::string> renewed_registry_auth() const;

  // One log line per counter group: where the bytes came from.
  void log_summary() const;

 private:
  explicit RafsInstance(RafsMountSpec spec);

  std::weak_ptr<RafsInstance> self_;
  RafsMountSpec spec_;
  std::chrono::system_clock::time_point mounted_at_;
  // Counters first: the backend and reader below point at them.
  std::unique_ptr<backend::BackendMetrics> backend_metrics_;
  std::unique_ptr<backend::CacheMetrics> cache_metrics_;
  std::unique_ptr<fs::FsMetrics> fs_metrics_;
  std::unique_ptr<backend::ReadTrace> read_trace_;
  backend::ChunkReader* reader_ = nullptr;  // owned by filesystem_
  std::shared_ptr<fs::Filesystem> filesystem_;
  // Declared last: destroyed (joined) first.
  std::unique_ptr<backend::Prefetcher> prefetcher_;
  mutable std::mutex auth_mu_;
  std::string registry_auth_;  // GUARDED_BY(auth_mu_)
  bool auth_renewed_ = false;  // GUARDED_BY(auth_mu_): registry_auth_ is not the config's
};

}  // namespace nydus::daemon
