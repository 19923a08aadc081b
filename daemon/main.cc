// nydusd: mounts a RAFS (nydus) image over FUSE. Drop-in for upstream's
// command line (daemon/cli.h) and config file (daemon/config.h).
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/log.h"
#include "daemon/api_server.h"
#include "daemon/api_v1.h"
#include "daemon/cli.h"
#include "daemon/p2p_runtime.h"
#include "daemon/config.h"
#include "daemon/daemon_service.h"
#include "daemon/daemon_state.h"
#include "daemon/fuse_server.h"
#include "daemon/rafs_instance.h"
#include "daemon/saved_state.h"
#include "daemon/supervisor.h"
#include "fs/vfs.h"

namespace nydus::daemon {
namespace {

std::string log_file_path(const std::string& given) {
  // Upstream adds ".log" to a name without an extension.
  std::string base = given.substr(given.rfind('/') == std::string::npos ? 0 : given.rfind('/') + 1);
  return base.find('.') == std::string::npos ? given + ".log" : given;
}

Status setup_logging(const CommandLine& cl) {
  log::Level level;
  log::parse_level(cl.log_level, &level);  // validated by the CLI parser
  log::set_level(level);
  if (!cl.log_file.empty()) {
    std::string path = log_file_path(cl.log_file);
    if (!log::log_to_file(path, cl.log_rotation_size_mib << 20))
      return Status::io("cannot open log file " + path + ": " + std::strerror(errno));
  }
  return Status::Ok();
}

void raise_nofile(uint64_t wanted) {
  if (wanted == 0) return;
  uint64_t file_max = 0;
  if (std::ifstream in("/proc/sys/fs/file-max"); in) in >> file_max;
  if (file_max > 16384) wanted = std::min<uint64_t>(wanted, file_max - 16384);
  wanted = std::min<uint64_t>(wanted, 1000000);
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur >= wanted) return;
  rlimit raised{wanted, std::max<rlim_t>(rl.rlim_max, wanted)};
  if (setrlimit(RLIMIT_NOFILE, &raised) != 0) {
    raised.rlim_max = rl.rlim_max;
    raised.rlim_cur = std::min<rlim_t>(wanted, rl.rlim_max);
    setrlimit(RLIMIT_NOFILE, &raised);
  }
}

// Flags upstream has that this build accepts but does not act on yet. Each
// is logged, so nothing is silently ignored.
void warn_unsupported(const CommandLine& cl) {
  if (!cl.dedup_db.empty()) LOG_WARN("--dedup-db is not supported; ignored");
  if (!cl.backend_source.empty()) LOG_INFO("--backend-source %s ignored (not an upstream flag)", cl.backend_source.c_str());
}

Result<std::vector<std::string>> read_prefetch_files(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::io("cannot read --prefetch-files " + path);
  std::vector<std::string> files;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    if (line[0] != '/') return Status::invalid("--prefetch-files " + path + ": not an absolute path: " + line);
    files.push_back(line);
  }
  return files;
}

int run(const CommandLine& cl) {
  log::set_error_sink([](std::string_view message) { global_error_events().push(message); });
  if (cl.subcommand == "singleton") {
    LOG_ERROR("the singleton (fscache) service is not supported yet");
    return 1;
  }
  if (!cl.shared_dir.empty()) {
    LOG_ERROR("--shared-dir (passthrough fs) is not supported");
    return 1;
  }
  if (cl.writable) {
    LOG_ERROR("--writable is not supported: RAFS images are read-only");
    return 1;
  }
  // Dedicated mode serves the --bootstrap image; shared mode (no
  // --bootstrap) starts empty and mounts images through the admin API.
  const bool dedicated = !cl.bootstrap.empty();
  if (!dedicated) {
    if (cl.apisock.empty()) {
      LOG_ERROR("neither --bootstrap nor --apisock: nothing to serve (shared mode mounts images through the API)");
      return 1;
    }
    if (!cl.prefetch_files.empty()) {
      LOG_ERROR("--prefetch-files needs --bootstrap");
      return 1;
    }
    if (!cl.config.empty()) LOG_INFO("--config without --bootstrap is not used (shared mode takes configs per mount)");
  }
  warn_unsupported(cl);
  raise_nofile(cl.rlimit_nofile);

  // P2P settings of the whole daemon (instances' own `p2p` objects win).
  {
    auto p2p = load_daemon_p2p_config(cl.p2p_config);
    if (!p2p.ok()) {
      LOG_ERROR("%s", p2p.status().message().c_str());
      return 1;
    }
    P2pRuntime::set_daemon_config(std::move(p2p).value());
    if (!dedicated) {
      if (Status s = P2pRuntime::start_from_daemon_config(); !s.ok()) {
        LOG_ERROR("%s", s.message().c_str());
        return 1;
      }
    }
  }

  // nydusd-contract.md §1: take over instead of mounting with --upgrade, or
  // when a previous daemon crashed (its mount is still there, its API socket
  // answers no more). Checked before anything touches the mountpoint: a
  // stat of a FUSE mount nobody serves would hang.
  const bool take_over = cl.upgrade || (!cl.apisock.empty() && previous_daemon_crashed(cl.mountpoint, cl.apisock));
  std::string mountpoint = cl.mountpoint;
  if (take_over) {
    LOG_INFO("%s: waiting in INIT for PUT /api/v1/daemon/fuse/takeover", cl.upgrade ? "--upgrade" :
             "the previous daemon crashed (mount present, API socket dead)");
    if (cl.apisock.empty() || cl.supervisor.empty()) {
      LOG_ERROR("taking over needs --apisock and --supervisor");
      return 1;
    }
  } else {
    char resolved[PATH_MAX];
    if (!realpath(cl.mountpoint.c_str(), resolved)) {
      LOG_ERROR("mountpoint %s: %s", cl.mountpoint.c_str(), std::strerror(errno));
      return 1;
    }
    struct stat st {};
    if (stat(resolved, &st) != 0 || !S_ISDIR(st.st_mode)) {
      LOG_ERROR("mountpoint %s is not a directory", resolved);
      return 1;
    }
    mountpoint = resolved;
  }

  // The tree the FUSE session serves. Declared before the session and the
  // service, which use it, so that it goes last.
  fs::Vfs vfs;
  std::shared_ptr<RafsInstance> dedicated_instance;
  if (dedicated) {
    RafsMountSpec spec;
    spec.mountpoint = cl.virtual_mountpoint;
    spec.source = cl.bootstrap;
    Result<RafsConfig> config = Status::invalid("config: need --config or --localfs-dir");
    if (!cl.config.empty()) {
      std::ifstream in(cl.config);
      if (!in) {
        LOG_ERROR("cannot read config file %s: %s", cl.config.c_str(), std::strerror(errno));
        return 1;
      }
      spec.config_text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      config = load_config_file(cl.config);
    } else if (!cl.localfs_dir.empty()) {
      config = localfs_dir_config(cl.localfs_dir);
    }
    if (!config.ok()) {
      LOG_ERROR("%s", config.status().message().c_str());
      return 1;
    }
    spec.config = std::move(config).value();
    if (!cl.prefetch_files.empty()) {
      auto files = read_prefetch_files(cl.prefetch_files);
      if (!files.ok()) {
        LOG_ERROR("%s", files.status().message().c_str());
        return 1;
      }
      spec.prefetch_files = std::move(files).value();
    }
    // nydusd-contract.md §1: IMAGE_PULL_AUTH replaces the config's auth.
    if (const char* env = std::getenv("IMAGE_PULL_AUTH"); env && *env) spec.auth_override = env;
    auto instance = RafsInstance::create(std::move(spec));
    if (!instance.ok()) {
      LOG_ERROR("%s", instance.status().message().c_str());
      return 1;
    }
    dedicated_instance = std::move(instance).value();
  }

  FuseServerOptions server_options;
  server_options.mountpoint = mountpoint;
  server_options.max_threads = cl.threads;
  // Every worker reads the shared session fd, never a cloned one: a
  // supervisor may take the connection over after a crash, which cloned fds
  // would defeat (fuse_server.h), and our own loop knows each request's
  // unique id for /metrics/inflight. Measured against libfuse's clone-fd
  // loop on the 100,000-file image (fio randread 4 KiB): 4 jobs/4 threads
  // 95.1-96.2k vs 94.2-98.0k IOPS, 16/16 84.4-85.6k vs 86.3-88.0k.
  server_options.clone_fd = false;
  auto policy = parse_failover_policy(cl.failover_policy);
  if (!policy.ok()) {
    LOG_ERROR("%s", policy.status().message().c_str());
    return 1;
  }

  // The FUSE session and the state machine that drives it (§1, §5). The
  // session is created by the mount below or by the Takeover action.
  std::mutex session_mu;
  std::unique_ptr<FuseSession> session;
  auto with_session = [&](auto fn) -> Status {
    std::lock_guard<std::mutex> lock(session_mu);
    if (!session) return Status::io("no FUSE session");
    return fn(*session);
  };
  DaemonStateMachine::Actions actions;
  // RUNNING is what the health port's /ready reports (P2pRuntime).
  actions.start_service = [&] {
    Status s = with_session([](FuseSession& fuse) { return fuse.start(); });
    if (s.ok()) P2pRuntime::set_daemon_serving(true);
    return s;
  };
  actions.terminate_service = [&] {
    P2pRuntime::set_daemon_serving(false);
    return with_session([](FuseSession& s) {
      s.stop();
      return Status::Ok();
    });
  };
  actions.umount = [&] { return with_session([](FuseSession& s) { return s.unmount(); }); };
  // Set below: the service exists only once the state machine does.
  DaemonService* service_ptr = nullptr;
  actions.restore = [&]() -> Status {
    // The supervisor supplies the connection, how the kernel initialized
    // it, and the mounts. Dedicated mode has attached its own instance from
    // its argv already (the snapshotter restarts it with the same argv);
    // every other saved mount is rebuilt at its old Vfs index.
    NYDUS_ASSIGN(auto received, receive_state(cl.supervisor, std::chrono::steady_clock::now() +
                                                                 std::chrono::seconds(10)));
    NYDUS_ASSIGN(const DaemonSavedState saved, decode_saved_state(received.data));
    if (dedicated && (saved.mounts.size() != 1 || saved.mounts[0].source != cl.bootstrap))
      LOG_WARN("takeover: the saved state describes %zu mount(s), not this daemon's bootstrap %s; serving %s",
               saved.mounts.size(), cl.bootstrap.c_str(), cl.bootstrap.c_str());
    if (!dedicated) NYDUS_TRY(service_ptr->restore(saved));
    NYDUS_ASSIGN(auto adopted, FuseSession::take_over(vfs, server_options, std::move(received.fd),
                                                      TakeoverParams{saved.fuse_conn_id, saved.fuse_init, *policy}));
    std::lock_guard<std::mutex> lock(session_mu);
    session = std::move(adopted);
    LOG_INFO("took over FUSE connection %llu at %s with %zu mount(s)",
             static_cast<unsigned long long>(saved.fuse_conn_id), mountpoint.c_str(), saved.mounts.size());
    return Status::Ok();
  };
  DaemonStateMachine state(actions);

  std::optional<std::string> daemon_id, supervisor;
  if (!cl.id.empty()) daemon_id = cl.id;
  if (!cl.supervisor.empty()) supervisor = cl.supervisor;
  DaemonService service(BuildInfo{package_version(), git_commit(), build_time(), build_profile(), compiler_version()},
                        daemon_id, supervisor, state, vfs);
  service_ptr = &service;
  if (dedicated_instance) {
    if (Status s = service.attach(dedicated_instance); !s.ok()) {
      LOG_ERROR("--virtual-mountpoint %s: %s", cl.virtual_mountpoint.c_str(), s.message().c_str());
      return 1;
    }
  }
  // Shared mode: the kernel must forget what it cached of a path that an
  // API mount or umount changed (runs on the API thread).
  vfs.set_on_mount([&](const fs::VfsChange& change) {
    std::lock_guard<std::mutex> lock(session_mu);
    if (session) session->invalidate(change, false);
  });
  vfs.set_on_umount([&](const fs::VfsChange& change) {
    std::lock_guard<std::mutex> lock(session_mu);
    if (session) session->invalidate(change, true);
  });
  service.set_inflight([&]() -> std::vector<InflightOp> {
    std::lock_guard<std::mutex> lock(session_mu);
    return session ? session->inflight() : std::vector<InflightOp>{};
  });
  service.set_send_state([&]() -> ControlStatus {
    if (cl.supervisor.empty()) return ControlError::daemon("no --supervisor given");
    DaemonSavedState saved = service.saved_state();  // before session_mu: lock order service, session
    std::lock_guard<std::mutex> lock(session_mu);
    if (!session || !session->initialized() || !session->init_params()) return ControlError::not_ready();
    saved.fuse_conn_id = session->conn_id();
    saved.fuse_init = *session->init_params();
    const std::vector<uint8_t> bytes = encode_saved_state(saved);
    Status s = send_state(cl.supervisor, bytes, session->fd());
    if (!s.ok()) return ControlError::daemon(s.message());
    return {};
  });

  if (!take_over) {
    auto mounted = FuseSession::mount(vfs, server_options);
    if (!mounted.ok()) {
      LOG_ERROR("%s", mounted.status().message().c_str());
      return 1;
    }
    {
      std::lock_guard<std::mutex> lock(session_mu);
      session = std::move(mounted).value();
    }
    Status s = state.fire(DaemonEvent::kMount);
    if (s.ok()) s = state.fire(DaemonEvent::kStart);
    if (!s.ok()) {
      LOG_ERROR("cannot start serving %s: %s", mountpoint.c_str(), s.message().c_str());
      (void)state.trigger_stop();
      return 1;
    }
  }

  // The health port serves the daemon's metrics while `service` lives; the
  // P2P node outlives run(), so the source is cleared on every way out.
  P2pRuntime::set_prometheus_source([&service] { return service.prometheus(); });
  struct ClearPrometheusSource {
    ~ClearPrometheusSource() { P2pRuntime::set_prometheus_source(nullptr); }
  } clear_prometheus_source;

  // The admin API (§1): the socket appears once the daemon is RUNNING, or
  // in INIT when it waits for a takeover.
  std::unique_ptr<ApiServer> api;
  if (!cl.apisock.empty()) {
    ApiServerOptions api_options;
    api_options.socket_path = cl.apisock;
    // The snapshotter's polls (readiness, metrics, hung-IO) must not queue
    // behind FUSE workers that keep the CPUs busy (examples/bench-api.sh).
    api_options.nice_adjustment = -5;
    api = std::make_unique<ApiServer>(api_options);
    Status s = register_api_v1(*api, service);
    if (s.ok())
      s = api->add_route("GET", "/api/v1/metrics/prometheus", BodyRule::kNone,
                         [&service](const ApiRequest&) { return ApiResponse::prometheus(service.prometheus()); });
    // Ours, not upstream's: a Kubernetes preStop hook drains the P2P node
    // (it leaves rendezvous) before the pod's cache goes away.
    if (s.ok())
      s = api->add_route("PUT", "/api/v1/p2p/drain", BodyRule::kNone, [](const ApiRequest&) {
        P2pRuntime::drain();
        return ApiResponse::no_content();
      });
    if (s.ok()) s = api->start();
    if (!s.ok()) {
      LOG_ERROR("admin API on %s not available: %s", cl.apisock.c_str(), s.message().c_str());
      api.reset();
      // Waiting for a takeover without an API would wait forever.
      if (take_over) return 1;
    } else {
      LOG_INFO("admin API listening on %s", cl.apisock.c_str());
    }
  }

  // Until SIGTERM/SIGINT, or until the connection ends (an external
  // umount). PUT /daemon/exit has moved to STOPPED without unmounting by
  // then, so trigger_stop() does nothing more.
  const ShutdownCause cause = wait_for_shutdown([&] {
    std::lock_guard<std::mutex> lock(session_mu);
    return session && session->connection_lost();
  });
  if (cause == ShutdownCause::kConnectionLost) LOG_INFO("the FUSE connection ended (unmounted); exiting");
  // Peers first: askers move on to the next owners while this mount still
  // serves, then the uploads in flight finish (p2p.drain_timeout_ms).
  P2pRuntime::set_daemon_serving(false);
  P2pRuntime::drain();
  if (Status s = state.trigger_stop(); !s.ok()) LOG_WARN("stopping: %s", s.message().c_str());
  if (api) api->stop();
  {
    std::lock_guard<std::mutex> lock(session_mu);
    session.reset();  // never unmounts by itself
  }
  for (const auto& instance : service.instances()) instance->log_summary();
  P2pRuntime::log_summary();
  return 0;
}

}  // namespace
}  // namespace nydus::daemon

int main(int argc, char** argv) {
  using namespace nydus::daemon;
  block_shutdown_signals();
  CommandLine cl;
  if (auto rc = parse_command_line(argc, argv, &cl)) return *rc;
  if (auto s = setup_logging(cl); !s.ok()) {
    std::fprintf(stderr, "nydusd: %s\n", s.message().c_str());
    return 1;
  }
  const int rc = run(cl);
  // Every instance is gone by now; the P2P node goes last.
  P2pRuntime::shutdown();
  return rc;
}
