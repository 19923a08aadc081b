// The nydusd admin API endpoints (nydusd-contract.md §3.2) on top of
// ApiServer, and DaemonController: the interface the daemon implements so
// that the endpoints can act on it.
//
// register_api_v1() installs every upstream route (api/src/http_handler.rs
// HTTP_ROUTES). This file does the HTTP side of each: method and body rules,
// query parameters, body parsing, response shapes, and error messages in
// upstream's form `<HttpError variant>(<ApiError Debug>)`, e.g.
// `Configure(DaemonAbnormal(UnexpectedEvent("Start")))`, with the status
// upstream's translate_status_code picks. The daemon side is the controller.
//
// INTEGRATION POINTS FOR THE DAEMON (lead): implement DaemonController.
// The pure virtual methods are what every daemon has (identity, state, start,
// exit). The others default to 501 `<Variant>(DaemonAbnormal(Unsupported))`
// (what upstream answers when no filesystem service exists) until the
// feature is built: sendfd, takeover, mount/remount/umount, backend info,
// every metrics endpoint, config get/update. `/api/v2/blobs` (fscache
// singleton mode only) always answers 501.
#pragma once

#include <cstddef>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "daemon/api_server.h"
#include "daemon/daemon_state.h"

namespace nydus::daemon {

// DaemonInfo.version (upstream BuildTimeInfo). git_commit must be the exact
// string `nydusd --version` prints after "Git Commit:" (the snapshotter
// hot-upgrades every daemon when they differ): fill it from daemon/cli.h
// git_commit(), i.e. NYDUS_GIT_COMMIT of the generated version.h.
struct BuildInfo {
  std::string package_ver;
  std::string git_commit;
  std::string build_time;
  std::string profile;
  std::string rustc;
};

// Why a controller call failed, as upstream classifies it. `debug` is the
// Rust Debug text of upstream's ApiError; the endpoint wraps it in its own
// HttpError variant: GET /metrics turns `Metrics(Stats(NoCounter))` into
// `GlobalMetrics(Metrics(Stats(NoCounter)))`. Clients substring-match these
// messages (nydus smoke tests look for `Pattern(Metrics(Stats(NoCounter)))`).
struct ControlError {
  int http_status = 500;
  std::string debug;

  // 400 `DaemonAbnormal(UnexpectedEvent("<event>"))`: event not valid now.
  static ControlError unexpected_event(std::string_view event);
  // 503 `DaemonAbnormal(NotReady)`: e.g. sendfd before FUSE INIT.
  static ControlError not_ready();
  // 501 `DaemonAbnormal(Unsupported)`: feature or service absent.
  static ControlError unsupported();
  // 404 `Metrics(Stats(NoCounter))`: no metrics for that id (or no id and
  // not exactly one instance).
  static ControlError no_counter();
  // 500 `DaemonAbnormal(Other("<message>"))`.
  static ControlError daemon(std::string_view message);
  // 500 `MountFilesystem(Other("<message>"))`. Upstream's texts:
  // "object or filesystem already exists" (duplicate mount, which the
  // snapshotter's hot upgrade relies on), "object or filesystem doesn't
  // exist" (umount of an unknown path), "invalid prefetch file list".
  static ControlError mount(std::string_view message);
  // 500 `Metrics(Daemon(Other("<message>")))`.
  static ControlError metrics(std::string_view message);
  // A DaemonStateMachine::fire()/trigger_*() failure: kInvalidInput (no
  // such transition; the message is `UnexpectedEvent("<Event>")`) gives 400
  // `DaemonAbnormal(UnexpectedEvent("<Event>"))`; kUnsupported gives 501;
  // anything else (a failed action) gives 500 `DaemonAbnormal(Other(..))`.
  static ControlError from_transition(const Status& status);
};

// Success or a ControlError. Cheap value type.
class ControlStatus {
 public:
  ControlStatus() = default;
  ControlStatus(ControlError error) : error_(std::move(error)) {}  // NOLINT: implicit by design
  bool ok() const { return !error_.has_value(); }
  const ControlError& error() const { return *error_; }  // only when !ok()

 private:
  std::optional<ControlError> error_;
};

// A value or a ControlError.
template <typename T>
class ControlResult {
 public:
  ControlResult(T value) : v_(std::move(value)) {}            // NOLINT: implicit by design
  ControlResult(ControlError error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return std::holds_alternative<T>(v_); }
  const T& value() const { return std::get<T>(v_); }          // only when ok()
  const ControlError& error() const { return std::get<ControlError>(v_); }  // only when !ok()

 private:
  std::variant<T, ControlError> v_;
};

enum class FsType { kRafs, kPassthroughFs };

// POST/PUT /api/v1/mount?mountpoint=<mp> with body
// {"source","fs_type","config","prefetch_files"} (upstream ApiMountCmd).
// The endpoint has checked: mountpoint present, source and config strings
// present, fs_type one of rafs|passthrough|passthroughfs|passthrough_fs,
// prefetch_files (if any) an array of strings. It has NOT checked that the
// prefetch paths are absolute or that config parses: the controller does
// (upstream fails those with 500 MountFilesystem(...)).
struct MountCommand {
  std::string mountpoint;  // decoded query value, e.g. "/42"
  FsType fs_type = FsType::kRafs;
  std::string source;      // bootstrap path
  std::string config;      // config file contents (JSON v1/v2 or TOML) as a string
  std::optional<std::vector<std::string>> prefetch_files;
};

// What the admin API needs from the daemon.
//
// Threading: every method is called on an ApiServer handler thread, with
// handler_threads == 1 never two at once, but concurrently with the FUSE
// workers and the signal/main thread, which the implementation must
// tolerate (e.g. by driving state through a DaemonStateMachine). Methods
// may block (sendfd waits for the supervisor); only requests queued behind
// them wait. They should not throw: an exception is answered 500
// `Internal(..)`. They must never call ApiServer::stop() (it would join the
// calling thread); to shut down, signal the main thread instead.
// The controller must outlive the ApiServer it is registered with.
class DaemonController {
 public:
  virtual ~DaemonController() = default;

  // --- GET /api/v1/daemon, GET /api/v2/daemon (DaemonInfo) ---
  virtual BuildInfo build_info() const = 0;
  virtual std::optional<std::string> id() const = 0;          // --id; null when unset
  virtual std::optional<std::string> supervisor() const = 0;  // --supervisor; null when unset
  virtual DaemonState state() const = 0;
  // v1 `backend_collection`: {"<mountpoint>": {"backend_type":"Rafs",
  // "mountpoint":..., "mounted_time":..., "config":{v2 config, auth and
  // registry_token null}}}, or {} for a fs service without mounts. JSON null
  // (the default) when there is no fs service. v2 always reports null.
  virtual nlohmann::json backend_collection() const { return nullptr; }

  // --- PUT /api/v1/daemon, PUT /api/v2/daemon {"log_level": ...} ---
  // Default: common/log's parse_level + set_level. Unknown level: 500
  // `ResponsePayloadType` (upstream's exact error for it).
  virtual ControlStatus set_log_level(const std::string& level);

  // --- Lifecycle: state-machine events (§1, §5) ---
  // PUT /daemon/start: fire Start (READY → RUNNING, spawning the FUSE
  // workers). Other states: ControlError::from_transition(fire's Status).
  virtual ControlStatus start() = 0;
  // PUT /daemon/exit: trigger_exit() (stop workers, no unmount), then make
  // the process exit as upstream does (kill(getpid(), SIGTERM)) and return.
  // The 204 still reaches the client: ApiServer::stop() drains it.
  virtual ControlStatus exit() = 0;
  // PUT /daemon/fuse/sendfd: push state + a dup of /dev/fuse to the
  // supervisor and return once sent. No FUSE INIT yet: not_ready(). No
  // --supervisor: daemon("...") (upstream panics there).
  virtual ControlStatus send_fuse_fd() { return ControlError::unsupported(); }
  // PUT /daemon/fuse/takeover: fire Takeover (INIT → READY, its restore
  // action pulls state + fd from the supervisor). Other states: 400 via
  // from_transition.
  virtual ControlStatus takeover() { return ControlError::unsupported(); }

  // --- Filesystem service (shared mode) ---
  virtual ControlStatus mount(const MountCommand&) { return ControlError::unsupported(); }
  virtual ControlStatus remount(const MountCommand&) { return ControlError::unsupported(); }
  virtual ControlStatus umount(const std::string& /*mountpoint*/) { return ControlError::unsupported(); }
  // GET /daemon/backend?mountpoint=: RAFS superblock meta as JSON text.
  virtual ControlResult<std::string> backend_info(const std::string& /*mountpoint*/) {
    return ControlError::unsupported();
  }

  // --- Metrics: JSON text (must be valid JSON), keyed by `id` ---
  // Without an id, upstream answers for the only instance if exactly one
  // exists, else no_counter(); an unknown id is no_counter().
  virtual ControlResult<std::string> fs_metrics(const std::optional<std::string>& /*id*/) {
    return ControlError::unsupported();
  }
  virtual ControlResult<std::string> files_metrics(const std::optional<std::string>& /*id*/, bool /*latest*/) {
    return ControlError::unsupported();
  }
  virtual ControlResult<std::string> access_patterns(const std::optional<std::string>& /*id*/) {
    return ControlError::unsupported();
  }
  virtual ControlResult<std::string> backend_metrics(const std::optional<std::string>& /*id*/) {
    return ControlError::unsupported();
  }
  virtual ControlResult<std::string> blobcache_metrics(const std::optional<std::string>& /*id*/) {
    return ControlError::unsupported();
  }
  // GET /metrics/backend/reads (ours, not upstream's): the instance's
  // backend read trace as CSV text (backend/read_trace.h), answered
  // text/csv; only the header line when access_pattern is off, as
  // /metrics/pattern answers an empty list then.
  virtual ControlResult<std::string> backend_reads(const std::optional<std::string>& /*id*/) {
    return ControlError::unsupported();
  }
  // std::nullopt when no request is in flight (answered 204).
  virtual ControlResult<std::optional<std::string>> inflight_metrics() { return ControlError::unsupported(); }

  // --- GET/PUT /api/v1/config?id= (registry_auth, proxy_url,
  // dragonfly_scheduler_endpoint; an unknown key is 500) ---
  virtual ControlResult<std::map<std::string, std::string>> get_config(const std::optional<std::string>& /*id*/) {
    return ControlError::unsupported();
  }
  virtual ControlStatus update_config(const std::optional<std::string>& /*id*/,
                                      const std::map<std::string, std::string>& /*values*/) {
    return ControlError::unsupported();
  }
};

// The error-event ring buffer of GET /api/v1/daemon/events (upstream
// ErrorHolder, utils/src/logger.rs): entries "<IMF-fixdate> - <error>",
// oldest evicted first so that at most max_errors entries of at most
// max_size bytes in total are kept. Thread-safe.
class ErrorEvents {
 public:
  static constexpr size_t kMaxErrors = 500;
  static constexpr size_t kMaxSize = 51200;

  explicit ErrorEvents(size_t max_errors = kMaxErrors, size_t max_size = kMaxSize)
      : max_errors_(max_errors), max_size_(max_size) {}

  // Records one error. False (nothing changed) when the entry alone is
  // larger than max_size; upstream empties the buffer first in that case.
  bool push(std::string_view error);
  // {"max_errors":500,"total_errors":N,"max_size":51200,"total_size":N,"errors":[...]}
  std::string to_json() const;

 private:
  const size_t max_errors_;
  const size_t max_size_;
  mutable std::mutex mu_;
  std::deque<std::string> errors_;  // GUARDED_BY(mu_)
  size_t total_size_ = 0;           // GUARDED_BY(mu_): sum of errors_ sizes
};

// The process-wide buffer (upstream's ERROR_HOLDER). Upstream feeds it from
// backend read failures; we intend every ERROR log line to reach it once
// common/log has a hook for that (not there yet).
ErrorEvents& global_error_events();

// Registers every v1/v2 route on `server` (before server.start()). The
// controller and the events buffer must outlive the server.
Status register_api_v1(ApiServer& server, DaemonController& controller,
                       ErrorEvents& events = global_error_events());

}  // namespace nydus::daemon
