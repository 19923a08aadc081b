// The daemon's P2P node and where its settings come from.
//
// Settings: a `p2p` object, read from (first match wins)
//   1. the instance's own config file (`--config`, or the config of an API
//      mount), when it has a top-level `p2p` object;
//   2. the daemon-level P2P file: `--p2p-config PATH`, else the file named
//      by $NYDUS_P2P_CONFIG, else /etc/nydus/p2p.json when it exists. The
//      file holds either {"p2p": {...}} or the object itself, as JSON.
// The daemon-level file exists because nydus-snapshotter rewrites the
// per-instance configs it hands to nydusd (dropping keys it does not know)
// and starts nydusd with a fixed argv; a deployment puts the file in place.
//
// One node per daemon: the first instance that wants P2P starts it (a
// shared-mode daemon starts it at start-up from the daemon-level file), and
// every later instance uses that node whatever its own `p2p` object says
// (a differing object is logged once). Without any `p2p` object nothing
// changes: no port is opened, backends are not wrapped.
//
// Thread-safety: all functions may be called from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "backend/blob_backend.h"
#include "backend/backend_metrics.h"
#include "common/status.h"
#include "daemon/config.h"
#include "daemon/p2p_config.h"
#include "p2p/p2p_config.h"

namespace nydus::p2p {
class P2pNode;
}

namespace nydus::daemon {

class P2pRuntime {
 public:
  // Remembers the daemon-level settings (main, before any instance).
  static void set_daemon_config(std::optional<p2p::P2pConfig> config);
  // Starts the node from the daemon-level settings now (shared mode), when
  // there are any and no node runs yet.
  static Status start_from_daemon_config();
  // The node an instance with `config` uses (starting it when needed), or
  // nullptr when P2P is off for it. `work_dir` places the piece store when
  // store_dir is not set.
  static Result<p2p::P2pNode*> node_for(const RafsConfig& config);
  // Wraps a registry backend in the P2P decorator when P2P is on.
  static Result<std::unique_ptr<backend::BlobBackend>> wrap(const RafsConfig& config,
                                                            std::unique_ptr<backend::BlobBackend> backend,
                                                            backend::BackendMetrics* metrics);
  // The running node, or nullptr.
  static p2p::P2pNode* node();
  // Whether the daemon is RUNNING, set by main; the health port's /ready
  // answers 503 until it is (and again once the daemon stops).
  static void set_daemon_serving(bool serving);
  // The daemon's whole Prometheus text, served on the health port's
  // /metrics (a scrape target for Kubernetes); null clears it (before
  // what it reads goes away). Without it, the P2P counters alone.
  static void set_prometheus_source(std::function<std::string()> source);
  // Drains the node when one runs (SIGTERM, PUT /api/v1/p2p/drain): see
  // P2pNode::drain(). Returns when drained or after drain_timeout_ms.
  static void drain();
  // Stops the node (at exit, after every instance is gone).
  static void shutdown();
  // Counters as a JSON object / Prometheus text / exit log lines ("" or
  // null when no node runs).
  static nlohmann::json metrics_json();
  static std::string prometheus_text();
  static void log_summary();
};

}  // namespace nydus::daemon
