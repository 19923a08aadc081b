// DaemonService: the nydusd process as the admin API sees it
// (DaemonController, daemon/api_v1.h). It owns the state machine and the
// table of RAFS instances, and answers DaemonInfo, start/exit, config
// (registry_auth) and the metrics endpoints from the instances' counters.
//
// Dedicated mode (--bootstrap): one instance at virtual mountpoint "/",
// added before the API starts; sendfd and takeover for failover and hot
// upgrade. Shared mode (mounts through the API) is not served yet:
// mount/umount answer 501, and so does /metrics/inflight (libfuse 3.14 does
// not expose a request's unique id).
//
// Thread-safety: the API worker calls in while FUSE threads read and the
// main thread waits. The instance table is filled before the API starts;
// afterwards only the API worker (one thread, ApiServerOptions
// handler_threads = 1) reads or changes it. The state goes through
// DaemonStateMachine.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend_metrics.h"
#include "backend/chunk_reader.h"
#include "daemon/api_v1.h"
#include "daemon/config.h"
#include "daemon/daemon_state.h"
#include "fs/filesystem.h"
#include "fs/fs_metrics.h"

namespace nydus::daemon {

// One mounted RAFS image and the counters that describe it. The pointers
// stay valid for the life of the process (the objects live in main()).
struct RafsInstance {
  std::string mountpoint;  // virtual mountpoint: "/" in dedicated mode
  std::string bootstrap;
  RafsConfig config;
  std::chrono::system_clock::time_point mounted_at;
  fs::Filesystem* filesystem = nullptr;
  backend::ChunkReader* reader = nullptr;
  backend::BackendMetrics* backend_metrics = nullptr;
  backend::CacheMetrics* cache_metrics = nullptr;
  fs::FsMetrics* fs_metrics = nullptr;
};

class DaemonService final : public DaemonController {
 public:
  DaemonService(BuildInfo build, std::optional<std::string> id, std::optional<std::string> supervisor,
                DaemonStateMachine& state);

  // Before the API starts only.
  void add_instance(RafsInstance instance);

  BuildInfo build_info() const override { return build_; }
  std::optional<std::string> id() const override { return id_; }
  std::optional<std::string> supervisor() const override { return supervisor_; }
  DaemonState state() const override { return state_.state(); }
  nlohmann::json backend_collection() const override;

  ControlStatus start() override;
  ControlStatus exit() override;
  // PUT /daemon/fuse/sendfd runs `send_state` (set by main: it owns the
  // FUSE session); PUT /daemon/fuse/takeover fires Takeover, whose restore
  // action main supplied to the state machine.
  void set_send_state(std::function<ControlStatus()> send_state) { send_state_ = std::move(send_state); }
  ControlStatus send_fuse_fd() override;
  ControlStatus takeover() override;

  ControlResult<std::string> backend_info(const std::string& mountpoint) override;

  // Metrics of the instance `id` names (virtual mountpoint; blobcache:
  // device.id), or of the only instance without an id; 404 NoCounter else.
  ControlResult<std::string> fs_metrics(const std::optional<std::string>& id) override;
  ControlResult<std::string> files_metrics(const std::optional<std::string>& id, bool latest) override;
  ControlResult<std::string> access_patterns(const std::optional<std::string>& id) override;
  ControlResult<std::string> backend_metrics(const std::optional<std::string>& id) override;
  ControlResult<std::string> blobcache_metrics(const std::optional<std::string>& id) override;

  // Every counter above in the Prometheus text format (metrics_json.h
  // prometheus_text), for GET /api/v1/metrics/prometheus.
  std::string prometheus() const;

  ControlResult<std::map<std::string, std::string>> get_config(const std::optional<std::string>& id) override;
  ControlStatus update_config(const std::optional<std::string>& id,
                              const std::map<std::string, std::string>& values) override;

 private:
  // The instance `id` names (a virtual mountpoint), or the only one when
  // no id is given; nullptr when there is no such instance.
  RafsInstance* find(const std::optional<std::string>& id);

  const BuildInfo build_;
  const std::optional<std::string> id_;
  const std::optional<std::string> supervisor_;
  DaemonStateMachine& state_;
  std::vector<RafsInstance> instances_;
  std::function<ControlStatus()> send_state_;
};

}  // namespace nydus::daemon
