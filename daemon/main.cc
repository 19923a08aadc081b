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

#include "backend/chunk_reader.h"
#include "backend/localfs_backend.h"
#include "backend/prefetcher.h"
#include "backend/registry_backend.h"
#include "bootstrap/image.h"
#include "common/log.h"
#include "daemon/api_server.h"
#include "daemon/api_v1.h"
#include "daemon/cli.h"
#include "daemon/config.h"
#include "daemon/daemon_service.h"
#include "daemon/daemon_state.h"
#include "daemon/fuse_server.h"
#include "daemon/saved_state.h"
#include "daemon/supervisor.h"
#include "fs/filesystem.h"
#include "fs/prefetch_plan.h"

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
  if (cl.virtual_mountpoint != "/")
    LOG_WARN("--virtual-mountpoint %s: only \"/\" is served (no shared mode yet)", cl.virtual_mountpoint.c_str());
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

Result<std::unique_ptr<backend::BlobBackend>> make_backend(const BackendConfig& config,
                                                           backend::BackendMetrics* metrics) {
  if (config.type == "localfs") {
    return backend::make_localfs_backend({config.dir, config.blob_file, config.alt_dirs, metrics});
  }
  if (config.type == "registry") {
    backend::RegistryConfig registry = config.registry;
    // nydusd-contract.md §1: IMAGE_PULL_AUTH replaces the config's auth.
    if (const char* env = std::getenv("IMAGE_PULL_AUTH"); env && *env) registry.auth = env;
    return backend::make_registry_backend(std::move(registry), metrics);
  }
  return Status::unsupported("backend type '" + config.type +
                             "' is not supported yet (supported: localfs, registry)");
}

// --prefetch-files, else the bootstrap's prefetch table, else (with
// prefetch_all) the whole image (nydusd-contract.md §2.6).
Result<std::vector<bootstrap::ChunkRef>> make_prefetch_plan(const bootstrap::Image& image,
                                                            const std::vector<std::string>& files,
                                                            bool prefetch_all) {
  if (!files.empty()) {
    std::vector<std::string> missing;
    auto plan = fs::prefetch_plan_for_paths(image, files, &missing);
    for (const std::string& path : missing) LOG_WARN("prefetch: %s is not in the image; skipped", path.c_str());
    return plan;
  }
  if (!image.prefetch_table().empty()) return fs::prefetch_plan_for_inodes(image, image.prefetch_table());
  if (prefetch_all) return fs::prefetch_plan_all(image);
  return std::vector<bootstrap::ChunkRef>{};
}

// One line of counters at exit: where the bytes came from.
void log_metrics(const backend::BackendMetrics& backend, const backend::CacheMetrics& cache,
                 backend::ChunkReader& reader, uint64_t fuse_bytes_read) {
  const double mib = 1 << 20;
  LOG_INFO("metrics: %llu bytes read through FUSE", static_cast<unsigned long long>(fuse_bytes_read));
  LOG_INFO("metrics: %llu chunk reads, %llu cache hits (%.1f MiB), %llu backend requests for %llu chunks "
           "(%.1f MiB raw), %llu single-flight waits, %llu corrupt fetches, prefetch %llu/%llu chunks",
           static_cast<unsigned long long>(cache.chunk_reads.load()),
           static_cast<unsigned long long>(cache.cache_hits.load()), cache.cache_hit_bytes.load() / mib,
           static_cast<unsigned long long>(cache.backend_fetches.load()),
           static_cast<unsigned long long>(cache.backend_chunks.load()), cache.backend_bytes.load() / mib,
           static_cast<unsigned long long>(cache.singleflight_waits.load()),
           static_cast<unsigned long long>(cache.corrupt_fetches.load()),
           static_cast<unsigned long long>(cache.prefetch_done_chunks.load()),
           static_cast<unsigned long long>(cache.prefetch_planned_chunks.load()));
  backend.for_each_source([&](const backend::SourceCounters& s) {
    LOG_INFO("metrics: source %s: %llu requests, %llu errors, %.1f MiB", s.name.c_str(),
             static_cast<unsigned long long>(s.requests.load()), static_cast<unsigned long long>(s.errors.load()),
             s.bytes.load() / mib);
  });
  if (reader.cache_enabled()) {
    for (const auto& blob : reader.cache_state())
      if (blob.cached)
        LOG_INFO("metrics: blob %s: %u of %u chunks cached%s", blob.blob_id.c_str(), blob.ready_chunks,
                 blob.chunk_count, blob.fully_cached ? " (fully cached)" : "");
  }
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
  if (cl.bootstrap.empty()) {
    LOG_ERROR("no --bootstrap: shared mode (mounts through the admin API) is not supported yet");
    return 1;
  }
  warn_unsupported(cl);
  raise_nofile(cl.rlimit_nofile);

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

  Result<RafsConfig> config = Status::invalid("config: need --config or --localfs-dir");
  if (!cl.config.empty()) config = load_config_file(cl.config);
  else if (!cl.localfs_dir.empty()) config = localfs_dir_config(cl.localfs_dir);
  if (!config.ok()) {
    LOG_ERROR("%s", config.status().message().c_str());
    return 1;
  }
  std::vector<std::string> prefetch_files;
  if (!cl.prefetch_files.empty()) {
    auto files = read_prefetch_files(cl.prefetch_files);
    if (!files.ok()) {
      LOG_ERROR("%s", files.status().message().c_str());
      return 1;
    }
    prefetch_files = std::move(files).value();
  }
  if (config->cache.type == "fscache") {
    LOG_ERROR("cache type 'fscache' needs the singleton service, which is not supported");
    return 1;
  }
  if (config->cache.compressed)
    LOG_WARN("device.cache.compressed: the raw (.blob.raw) cache is not supported; caching uncompressed data");

  auto image = bootstrap::Image::open(cl.bootstrap);
  if (!image.ok()) {
    LOG_ERROR("%s", image.status().message().c_str());
    return 1;
  }
  // gzip chunks (eStargz, zran) need a decoder we do not have yet: refuse
  // the mount rather than fail every read later.
  for (const auto& blob : (*image)->blobs()) {
    if (blob.compressor == bootstrap::Compressor::kGzip) {
      LOG_ERROR("bootstrap %s: blob %s uses gzip chunks (eStargz/zran), which are not supported yet",
                cl.bootstrap.c_str(), blob.id.c_str());
      return 1;
    }
  }
  backend::BackendMetrics backend_metrics;
  auto backend = make_backend(config->backend, &backend_metrics);
  if (!backend.ok()) {
    LOG_ERROR("%s", backend.status().message().c_str());
    return 1;
  }
  LOG_INFO("bootstrap %s: RAFS v%u, %zu blob(s), %llu inodes, chunk size %u, %s/%s", cl.bootstrap.c_str(),
           (*image)->super().version, (*image)->blobs().size(),
           static_cast<unsigned long long>((*image)->super().inodes_count), (*image)->super().chunk_size,
           bootstrap::compressor_name((*image)->super().compressor),
           bootstrap::digester_name((*image)->super().digester));

  backend::CacheMetrics cache_metrics;
  backend::ChunkReaderOptions reader_options;
  reader_options.validate_digest = config->digest_validate;
  reader_options.work_dir = config->cache.work_dir;
  reader_options.cache = config->cache.type == "blobcache" || config->cache.type == "filecache";
  reader_options.cache_validate = config->cache.validate;
  // Bytes from the network are always checked before they are cached or
  // returned; a local directory is trusted unless digest_validate is on.
  reader_options.verify_fetched = config->backend.type != "localfs";
  reader_options.merge_bytes = config->amplify_io;
  reader_options.fetch_attempts = 1 + (config->backend.type == "registry" ? config->backend.registry.retry_limit : 0);
  reader_options.metrics = &cache_metrics;
  auto reader = std::make_unique<backend::ChunkReader>((*image)->blobs(), std::move(backend).value(),
                                                       reader_options);
  fs::FsOptions fs_options;
  fs_options.enable_xattr = config->enable_xattr;
  fs_options.default_uid = getuid();
  fs_options.default_gid = getgid();
  fs_options.amplify_bytes = reader_options.cache ? config->amplify_io : 0;
  fs::FsMetrics fs_metrics(cl.virtual_mountpoint,
                           fs::FsMetricsOptions{config->iostats_files, config->access_pattern,
                                                config->latest_read_files, true});
  backend::ChunkReader& chunk_reader = *reader;
  const bootstrap::Image& image_ref = **image;
  fs::Filesystem filesystem(std::move(image).value(), std::move(reader), fs_options);

  // Declared after the filesystem so that it stops (joins) first.
  std::unique_ptr<backend::Prefetcher> prefetcher;
  if (config->prefetch.enable) {
    if (!reader_options.cache) {
      LOG_WARN("fs_prefetch.enable: prefetch needs a blob cache (cache.type blobcache); not prefetching");
    } else {
      auto plan = make_prefetch_plan(image_ref, prefetch_files, config->prefetch.prefetch_all);
      if (!plan.ok()) {
        LOG_WARN("prefetch: %s; not prefetching", plan.status().message().c_str());
      } else if (!plan->empty()) {
        prefetcher = std::make_unique<backend::Prefetcher>(
            chunk_reader,
            backend::PrefetchOptions{config->prefetch.threads, config->prefetch.merging_size,
                                     config->prefetch.bandwidth_rate},
            &cache_metrics);
        prefetcher->start(std::move(plan).value());
      }
    }
  } else if (!prefetch_files.empty()) {
    LOG_INFO("--prefetch-files given but fs_prefetch.enable is false: not prefetching");
  }

  FuseServerOptions server_options;
  server_options.mountpoint = mountpoint;
  server_options.max_threads = cl.threads;
  server_options.metrics = &fs_metrics;
  // A supervisor may take the connection over after a crash: every worker
  // must then read the shared session fd (fuse_server.h).
  server_options.clone_fd = cl.supervisor.empty();
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
  actions.start_service = [&] { return with_session([](FuseSession& s) { return s.start(); }); };
  actions.terminate_service = [&] {
    return with_session([](FuseSession& s) {
      s.stop();
      return Status::Ok();
    });
  };
  actions.umount = [&] { return with_session([](FuseSession& s) { return s.unmount(); }); };
  actions.restore = [&]() -> Status {
    // Dedicated mode rebuilds its one instance from its own argv (the
    // snapshotter restarts it with the same argv); the supervisor supplies
    // the connection and how the kernel initialized it.
    NYDUS_ASSIGN(auto received, receive_state(cl.supervisor, std::chrono::steady_clock::now() +
                                                                 std::chrono::seconds(10)));
    NYDUS_ASSIGN(const DaemonSavedState saved, decode_saved_state(received.data));
    if (saved.mounts.size() != 1 || saved.mounts[0].source != cl.bootstrap)
      LOG_WARN("takeover: the saved state describes %zu mount(s), not this daemon's bootstrap %s; serving %s",
               saved.mounts.size(), cl.bootstrap.c_str(), cl.bootstrap.c_str());
    NYDUS_ASSIGN(auto adopted, FuseSession::take_over(filesystem, server_options, std::move(received.fd),
                                                      TakeoverParams{saved.fuse_conn_id, saved.fuse_init, *policy}));
    std::lock_guard<std::mutex> lock(session_mu);
    session = std::move(adopted);
    LOG_INFO("took over FUSE connection %llu at %s", static_cast<unsigned long long>(saved.fuse_conn_id),
             mountpoint.c_str());
    return Status::Ok();
  };
  DaemonStateMachine state(actions);

  std::optional<std::string> daemon_id, supervisor;
  if (!cl.id.empty()) daemon_id = cl.id;
  if (!cl.supervisor.empty()) supervisor = cl.supervisor;
  DaemonService service(BuildInfo{package_version(), git_commit(), build_time(), build_profile(), compiler_version()},
                        daemon_id, supervisor, state);
  service.add_instance(RafsInstance{cl.virtual_mountpoint, cl.bootstrap, *config, std::chrono::system_clock::now(),
                                    &filesystem, &chunk_reader, &backend_metrics, &cache_metrics, &fs_metrics});
  std::string config_text;
  if (!cl.config.empty()) {
    std::ifstream in(cl.config);
    config_text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  service.set_send_state([&]() -> ControlStatus {
    if (cl.supervisor.empty()) return ControlError::daemon("no --supervisor given");
    std::lock_guard<std::mutex> lock(session_mu);
    if (!session || !session->initialized() || !session->init_params()) return ControlError::not_ready();
    DaemonSavedState saved;
    saved.fuse_conn_id = session->conn_id();
    saved.fuse_init = *session->init_params();
    saved.mounts.push_back(SavedMount{cl.virtual_mountpoint, "rafs", cl.bootstrap, config_text, prefetch_files, 0, 0});
    const std::vector<uint8_t> bytes = encode_saved_state(saved);
    Status s = send_state(cl.supervisor, bytes, session->fd());
    if (!s.ok()) return ControlError::daemon(s.message());
    return {};
  });

  if (!take_over) {
    auto mounted = FuseSession::mount(filesystem, server_options);
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

  // The admin API (§1): the socket appears once the daemon is RUNNING, or
  // in INIT when it waits for a takeover.
  std::unique_ptr<ApiServer> api;
  if (!cl.apisock.empty()) {
    ApiServerOptions api_options;
    api_options.socket_path = cl.apisock;
    api = std::make_unique<ApiServer>(api_options);
    Status s = register_api_v1(*api, service);
    if (s.ok())
      s = api->add_route("GET", "/api/v1/metrics/prometheus", BodyRule::kNone,
                         [&service](const ApiRequest&) { return ApiResponse::prometheus(service.prometheus()); });
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
  if (Status s = state.trigger_stop(); !s.ok()) LOG_WARN("stopping: %s", s.message().c_str());
  if (api) api->stop();
  if (prefetcher) prefetcher->stop();
  {
    std::lock_guard<std::mutex> lock(session_mu);
    session.reset();  // never unmounts by itself
  }
  const int rc = 0;
  log_metrics(backend_metrics, cache_metrics, chunk_reader, filesystem.bytes_read());
  return rc;
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
  return run(cl);
}
