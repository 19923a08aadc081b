// DaemonService: the nydusd process as the admin API sees it
// (DaemonController, daemon/api_v1.h). It owns the table of RAFS instances
// attached to the daemon's fs::Vfs, drives the state machine, and answers
// DaemonInfo, start/exit, mount/remount/umount, config (registry_auth),
// the metrics endpoints and the failover state from them.
//
// Dedicated mode (--bootstrap): main() attaches one instance at the virtual
// mountpoint ("/" unless --virtual-mountpoint) before the API starts.
// Shared mode (no --bootstrap): the daemon starts empty and RUNNING, and
// POST /api/v1/mount?mountpoint=/<sid> attaches instances at "/<sid>"
// (nydusd-contract.md §3.2, §4.4 B).
//
// Failover (§5): saved_state() lists every instance as its mount command
// plus its Vfs index and generation; restore() rebuilds them in a fresh
// daemon at the same indexes, so the node ids the kernel holds keep their
// meaning.
//
// Thread-safety: every method may be called from any thread. The instance
// table is guarded by a mutex; mount/umount serialize on it (the API worker
// is one thread anyway), and calls that only read take a snapshot of the
// table under it and work outside it. Vfs change hooks (cache invalidation)
// run on the thread that mounts, with the table mutex held: they must not
// call back into the service.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "daemon/api_v1.h"
#include "daemon/config.h"
#include "daemon/daemon_state.h"
#include "daemon/inflight.h"
#include "daemon/rafs_instance.h"
#include "daemon/saved_state.h"
#include "fs/vfs.h"

namespace nydus::daemon {

class DaemonService final : public DaemonController {
 public:
  DaemonService(BuildInfo build, std::optional<std::string> id, std::optional<std::string> supervisor,
                DaemonStateMachine& state, fs::Vfs& vfs);

  // Attaches `instance` at its mountpoint (at `index`/`generation` when
  // restoring; see fs::Vfs::mount_at). Errors as fs::Vfs::mount.
  Status attach(std::shared_ptr<RafsInstance> instance, std::optional<fs::MountIndex> index = std::nullopt,
                uint64_t generation = 0);
  // Every attached instance, in mount order.
  std::vector<std::shared_ptr<RafsInstance>> instances() const;

  // Failover: the mount commands and Vfs bookkeeping (fuse_conn_id and
  // fuse_init are the session's; the caller fills them in).
  DaemonSavedState saved_state() const;
  // Rebuilds every mount of `saved` (which must come from saved_state() of
  // a predecessor) into this daemon's empty Vfs at its old index. Mounts
  // whose mountpoint is already attached (dedicated mode attaches its own
  // instance from the command line first) are skipped. Stops at the first
  // failure.
  Status restore(const DaemonSavedState& saved);

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

  ControlStatus mount(const MountCommand& command) override;
  ControlStatus remount(const MountCommand& command) override;
  ControlStatus umount(const std::string& mountpoint) override;

  ControlResult<std::string> backend_info(const std::string& mountpoint) override;

  // Metrics of the instance `id` names (virtual mountpoint; blobcache:
  // device.id), or of the only instance without an id; 404 NoCounter else.
  ControlResult<std::string> fs_metrics(const std::optional<std::string>& id) override;
  ControlResult<std::string> files_metrics(const std::optional<std::string>& id, bool latest) override;
  ControlResult<std::string> access_patterns(const std::optional<std::string>& id) override;
  ControlResult<std::string> backend_metrics(const std::optional<std::string>& id) override;
  ControlResult<std::string> backend_reads(const std::optional<std::string>& id) override;
  ControlResult<std::string> blobcache_metrics(const std::optional<std::string>& id) override;
  // `inflight` (set by main: the FUSE session's workers) lists the
  // requests being handled; without it, or with none, the answer is 204.
  void set_inflight(std::function<std::vector<InflightOp>()> inflight) { inflight_ = std::move(inflight); }
  ControlResult<std::optional<std::string>> inflight_metrics() override;

  // Every counter above in the Prometheus text format (metrics_json.h
  // prometheus_text), for GET /api/v1/metrics/prometheus.
  std::string prometheus() const;

  ControlResult<std::map<std::string, std::string>> get_config(const std::optional<std::string>& id) override;
  ControlStatus update_config(const std::optional<std::string>& id,
                              const std::map<std::string, std::string>& values) override;

 private:
  // Builds an instance from an API mount command (config text parsed).
  Result<std::shared_ptr<RafsInstance>> build(const MountCommand& command) const;
  // The instance at virtual mountpoint `id`, or the only one when no id is
  // given; nullptr when there is no such instance.
  std::shared_ptr<RafsInstance> find(const std::optional<std::string>& id) const;

  const BuildInfo build_;
  const std::optional<std::string> id_;
  const std::optional<std::string> supervisor_;
  DaemonStateMachine& state_;
  fs::Vfs& vfs_;
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<RafsInstance>> instances_;  // GUARDED_BY(mu_), mount order
  std::function<ControlStatus()> send_state_;
  std::function<std::vector<InflightOp>()> inflight_;
};

}  // namespace nydus::daemon
