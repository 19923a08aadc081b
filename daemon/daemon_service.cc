#include "daemon/daemon_service.h"

#include "daemon/p2p_runtime.h"

#include <signal.h>
#include <unistd.h>

#include <ctime>

#include "common/log.h"
#include "daemon/metrics_json.h"

namespace nydus::daemon {
namespace {

// "2026-08-01 10:00:00.123456789 +00:00:00", as upstream prints mounted_time.
std::string format_mounted_time(std::chrono::system_clock::time_point t) {
  const auto since_epoch = t.time_since_epoch();
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  const long nanos = static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs).count());
  const std::time_t tt = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof out, "%s.%09ld +00:00:00", date, nanos);
  return out;
}

// An instance from a mount command's parts (API mount, failover restore):
// the config text is parsed here.
Result<std::shared_ptr<RafsInstance>> build_instance(const std::string& mountpoint, const std::string& source,
                                                     const std::string& config_text,
                                                     std::vector<std::string> prefetch_files,
                                                     std::optional<std::string> auth_override) {
  NYDUS_ASSIGN(RafsConfig config, parse_config(config_text));
  return RafsInstance::create(RafsMountSpec{mountpoint, source, config_text, std::move(config),
                                            std::move(prefetch_files), std::move(auth_override)});
}

}  // namespace

DaemonService::DaemonService(BuildInfo build, std::optional<std::string> id, std::optional<std::string> supervisor,
                             DaemonStateMachine& state, fs::Vfs& vfs)
    : build_(std::move(build)), id_(std::move(id)), supervisor_(std::move(supervisor)), state_(state), vfs_(vfs) {}

Status DaemonService::attach(std::shared_ptr<RafsInstance> instance, std::optional<fs::MountIndex> index,
                             uint64_t generation) {
  std::lock_guard<std::mutex> lock(mu_);
  auto context = instance->metrics_context();
  Result<fs::MountIndex> attached =
      index ? vfs_.mount_at(instance->mountpoint(), instance->filesystem(), *index, generation, std::move(context))
            : vfs_.mount(instance->mountpoint(), instance->filesystem(), std::move(context));
  if (!attached.ok()) return attached.status();
  LOG_INFO("mounted %s at %s (vfs index %u)", instance->spec().source.c_str(), instance->mountpoint().c_str(),
           static_cast<unsigned>(*attached));
  instances_.push_back(std::move(instance));
  return Status::Ok();
}

std::vector<std::shared_ptr<RafsInstance>> DaemonService::instances() const {
  std::lock_guard<std::mutex> lock(mu_);
  return instances_;
}

std::shared_ptr<RafsInstance> DaemonService::find(const std::optional<std::string>& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!id) return instances_.size() == 1 ? instances_.front() : nullptr;
  for (const auto& i : instances_)
    if (i->mountpoint() == *id) return i;
  return nullptr;
}

DaemonSavedState DaemonService::saved_state() const {
  DaemonSavedState saved;
  std::lock_guard<std::mutex> lock(mu_);
  const fs::VfsState vfs = vfs_.export_state();
  saved.vfs.next_index = vfs.next_index;
  saved.vfs.next_generation = vfs.next_generation;
  saved.vfs.next_pseudo_node = vfs.next_pseudo_node;
  saved.vfs.pseudo_dirs.assign(vfs.pseudo_dirs.begin(), vfs.pseudo_dirs.end());
  for (const auto& instance : instances_) {
    const RafsMountSpec& spec = instance->spec();
    SavedMount m{spec.mountpoint, "rafs", spec.source, spec.config_text, spec.prefetch_files, 0, 0,
                 instance->renewed_registry_auth()};
    if (auto info = vfs_.find(spec.mountpoint)) {
      m.vfs_index = info->index;
      m.generation = info->generation;
    }
    saved.mounts.push_back(std::move(m));
  }
  return saved;
}

Status DaemonService::restore(const DaemonSavedState& saved) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (instances_.empty()) {
      fs::VfsState vfs;
      vfs.next_index = saved.vfs.next_index;
      vfs.next_generation = saved.vfs.next_generation;
      vfs.next_pseudo_node = saved.vfs.next_pseudo_node;
      vfs.pseudo_dirs.assign(saved.vfs.pseudo_dirs.begin(), saved.vfs.pseudo_dirs.end());
      NYDUS_TRY(vfs_.import_state(vfs));
    }
  }
  for (const SavedMount& m : saved.mounts) {
    if (vfs_.find(m.mountpoint)) continue;
    if (m.fs_type != "rafs")
      return Status::unsupported("restore " + m.mountpoint + ": fs_type " + m.fs_type + " is not supported");
    auto instance = build_instance(m.mountpoint, m.source, m.config, m.prefetch_files, m.registry_auth);
    if (!instance.ok()) return Status(instance.status().code(), "restore " + m.mountpoint + ": " + instance.status().message());
    NYDUS_TRY(attach(std::move(instance).value(), m.vfs_index == 0 ? std::nullopt : std::optional(m.vfs_index),
                     m.generation));
  }
  return Status::Ok();
}

nlohmann::json DaemonService::backend_collection() const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& i : instances()) {
    out[i->mountpoint()] = {{"backend_type", "Rafs"},
                            {"mountpoint", i->mountpoint()},
                            {"mounted_time", format_mounted_time(i->mounted_at())},
                            {"config", to_v2_json(i->spec().config)}};
  }
  return out;
}

ControlStatus DaemonService::start() {
  // In dedicated mode the workers run from the start (RUNNING); Start is
  // only valid after a takeover left the daemon READY.
  Status s = state_.fire(DaemonEvent::kStart);
  if (!s.ok()) return ControlError::from_transition(s);
  return {};
}

ControlStatus DaemonService::exit() {
  Status s = state_.trigger_exit();
  if (!s.ok()) return ControlError::from_transition(s);
  // As upstream: the main thread's signal handling does the rest.
  ::kill(::getpid(), SIGTERM);
  return {};
}

ControlStatus DaemonService::send_fuse_fd() {
  if (!send_state_) return ControlError::unsupported();
  return send_state_();
}

ControlStatus DaemonService::takeover() {
  Status s = state_.fire(DaemonEvent::kTakeover);
  if (!s.ok()) return ControlError::from_transition(s);
  return {};
}

Result<std::shared_ptr<RafsInstance>> DaemonService::build(const MountCommand& command) const {
  if (command.fs_type != FsType::kRafs)
    return Status::unsupported("fs_type passthrough_fs is not supported by this build");
  return build_instance(command.mountpoint, command.source, command.config,
                        command.prefetch_files.value_or(std::vector<std::string>{}), std::nullopt);
}

ControlStatus DaemonService::mount(const MountCommand& command) {
  // Refuse a duplicate before opening anything: the snapshotter re-POSTs
  // every mount after a hot upgrade and expects exactly this answer.
  if (vfs_.find(command.mountpoint)) return ControlError::mount("object or filesystem already exists");
  auto instance = build(command);
  if (!instance.ok()) {
    LOG_ERROR("mount %s: %s", command.mountpoint.c_str(), instance.status().message().c_str());
    return ControlError::mount(instance.status().message());
  }
  if (Status s = attach(std::move(instance).value()); !s.ok()) return ControlError::mount(s.message());
  return {};
}

ControlStatus DaemonService::remount(const MountCommand& command) {
  auto old = vfs_.find(command.mountpoint);
  if (!old) return ControlError::mount("object or filesystem doesn't exist");
  auto instance = build(command);
  if (!instance.ok()) {
    LOG_ERROR("remount %s: %s", command.mountpoint.c_str(), instance.status().message().c_str());
    return ControlError::mount(instance.status().message());
  }
  // Same index, new generation: node ids the kernel holds of the old image
  // stop matching (the kernel drops those inodes) while the mountpoint stays.
  if (ControlStatus detached = umount(command.mountpoint); !detached.ok()) return detached;
  if (Status s = attach(std::move(instance).value(), old->index, 0); !s.ok()) return ControlError::mount(s.message());
  return {};
}

ControlStatus DaemonService::umount(const std::string& mountpoint) {
  std::shared_ptr<RafsInstance> detached;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Status s = vfs_.umount(mountpoint);
    if (!s.ok()) return ControlError::mount(s.message());
    for (auto it = instances_.begin(); it != instances_.end(); ++it) {
      if ((*it)->mountpoint() == mountpoint) {
        detached = std::move(*it);
        instances_.erase(it);
        break;
      }
    }
  }
  LOG_INFO("umounted %s", mountpoint.c_str());
  if (detached) detached->log_summary();
  // `detached` goes here, or when the last request that still uses it
  // returns: its prefetch stops and its cache files close.
  return {};
}

ControlResult<std::string> DaemonService::backend_info(const std::string& mountpoint) {
  auto instance = find(mountpoint);
  if (!instance) return ControlError::mount("object or filesystem doesn't exist");
  const bootstrap::Image& image = instance->filesystem()->image();
  const bootstrap::SuperInfo& sb = image.super();
  nlohmann::json meta = {
      {"magic", sb.version == 5 ? 0x5241'4653u : 0xE0F5'E1E2u},
      {"version", sb.version == 5 ? 0x500 : 0x600},
      {"sb_size", sb.version == 5 ? 8192 : 4096},
      {"root_inode", image.root()},
      {"chunk_size", sb.chunk_size},
      {"inodes_count", sb.inodes_count},
      {"flags", sb.flags},
      {"inode_table_entries", 0},
      {"inode_table_offset", 0},
      {"blob_table_size", image.blobs().size()},
      {"blob_table_offset", 0},
      {"extended_blob_table_offset", 0},
      {"extended_blob_table_entries", image.blobs().size()},
      {"prefetch_table_entries", image.prefetch_table().size()},
      {"prefetch_table_offset", 0},
      {"attr_timeout", {{"secs", 86400}, {"nanos", 0}}},
      {"entry_timeout", {{"secs", 86400}, {"nanos", 0}}},
      {"is_chunk_dict", false},
      {"meta_blkaddr", sb.meta_blkaddr},
      {"root_nid", sb.root_nid},
      {"is_tarfs_mode", false},
  };
  return meta.dump();
}

ControlResult<std::string> DaemonService::fs_metrics(const std::optional<std::string>& id) {
  auto instance = find(id);
  if (!instance) return ControlError::no_counter();
  return instance->fs_metrics().fs_metrics_json();
}

ControlResult<std::string> DaemonService::files_metrics(const std::optional<std::string>& id, bool latest) {
  auto instance = find(id);
  if (!instance) return ControlError::no_counter();
  return instance->fs_metrics().files_metrics_json(latest);
}

ControlResult<std::string> DaemonService::access_patterns(const std::optional<std::string>& id) {
  auto instance = find(id);
  if (!instance) return ControlError::no_counter();
  return instance->fs_metrics().access_patterns_json();
}

ControlResult<std::string> DaemonService::backend_metrics(const std::optional<std::string>& id) {
  auto instance = find(id);
  if (!instance) return ControlError::no_counter();
  std::string body = backend_metrics_json(instance->backend_metrics(), instance->reader().backend().type());
  // With P2P on: the node's counters (shared by every instance) and where
  // this instance's bytes came from, after upstream's keys.
  if (nlohmann::json p2p = P2pRuntime::metrics_json(); !p2p.is_null()) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(body);
    nlohmann::ordered_json sources = nlohmann::ordered_json::object();
    instance->backend_metrics().for_each_source([&](const backend::SourceCounters& c) {
      sources[c.name] = {{"requests", c.requests.load()}, {"errors", c.errors.load()}, {"bytes", c.bytes.load()}};
    });
    j["sources"] = std::move(sources);
    j["p2p"] = nlohmann::ordered_json::parse(p2p.dump());
    body = j.dump();
  }
  return body;
}

ControlResult<std::string> DaemonService::backend_reads(const std::optional<std::string>& id) {
  auto instance = find(id);
  if (!instance) return ControlError::no_counter();
  const backend::ReadTrace* trace = instance->read_trace();
  // Without access_pattern nothing is recorded: the header alone, as
  // /metrics/pattern answers [] then.
  if (!trace) return std::string(backend::ReadTrace::kCsvHeader);
  return trace->csv(instance->filesystem()->image().blobs());
}

ControlResult<std::string> DaemonService::blobcache_metrics(const std::optional<std::string>& id) {
  // Keyed by device.id (the snapshotter's "/<sid>"), not the mountpoint.
  std::shared_ptr<RafsInstance> instance;
  const auto all = instances();
  if (!id) {
    if (all.size() == 1) instance = all.front();
  } else {
    for (const auto& i : all)
      if (i->cache_id() == *id) instance = i;
  }
  if (!instance) return ControlError::no_counter();
  return blobcache_metrics_json(instance->cache_metrics(), instance->reader().cache_state(),
                                instance->spec().config.cache.work_dir);
}

ControlResult<std::optional<std::string>> DaemonService::inflight_metrics() {
  if (!inflight_) return std::optional<std::string>();
  const std::vector<InflightOp> ops = inflight_();
  if (ops.empty()) return std::optional<std::string>();
  return std::optional<std::string>(InflightOps::to_json(ops));
}

std::string DaemonService::prometheus() const {
  const auto all = instances();
  std::vector<const fs::FsMetrics*> filesystems;
  std::vector<BackendMetricsSource> backends;
  std::vector<BlobcacheMetricsSource> caches;
  for (const auto& i : all) {
    filesystems.push_back(&i->fs_metrics());
    backends.push_back({i->mountpoint(), i->reader().backend().type(), &i->backend_metrics()});
    caches.push_back({i->cache_id(), &i->cache_metrics(), i->reader().cache_state()});
  }
  std::string text = prometheus_text(filesystems, backends, caches);
  // Where blob bytes came from, per source (origin, each mirror, proxy):
  // not in upstream's BackendMetrics, so only here and in the exit log.
  text += "# HELP nydusd_backend_source_requests_total Backend requests per source (origin, mirror, proxy).\n"
          "# TYPE nydusd_backend_source_requests_total counter\n";
  std::string errors = "# HELP nydusd_backend_source_errors_total Failed backend requests (transport errors, 5xx) per source.\n"
                       "# TYPE nydusd_backend_source_errors_total counter\n";
  std::string bytes = "# HELP nydusd_backend_source_bytes_total Body bytes received per source.\n"
                      "# TYPE nydusd_backend_source_bytes_total counter\n";
  for (const auto& i : all) {
    i->backend_metrics().for_each_source([&](const backend::SourceCounters& c) {
      const std::string labels = "{id=" + nlohmann::json(i->mountpoint()).dump() + ",source=" + nlohmann::json(c.name).dump() + "}";
      text += "nydusd_backend_source_requests_total" + labels + " " + std::to_string(c.requests.load()) + "\n";
      errors += "nydusd_backend_source_errors_total" + labels + " " + std::to_string(c.errors.load()) + "\n";
      bytes += "nydusd_backend_source_bytes_total" + labels + " " + std::to_string(c.bytes.load()) + "\n";
    });
  }
  return text + errors + bytes + P2pRuntime::prometheus_text();
}

ControlResult<std::map<std::string, std::string>> DaemonService::get_config(const std::optional<std::string>& id) {
  auto instance = find(id);
  if (!instance) return ControlError::no_counter();
  std::map<std::string, std::string> out;
  const RafsConfig& config = instance->spec().config;
  if (config.backend.type == "registry") {
    out["registry_auth"] = instance->registry_auth();
    out["proxy_url"] = config.backend.registry.proxy.url;
  }
  return out;
}

ControlStatus DaemonService::update_config(const std::optional<std::string>& id,
                                           const std::map<std::string, std::string>& values) {
  auto instance = find(id);
  if (!instance) return ControlError::daemon("no filesystem instance " + id.value_or("(none)"));
  for (const auto& [key, value] : values) {
    if (key == "registry_auth") {
      Status s = instance->update_registry_auth(value);
      if (!s.ok()) return ControlError::daemon(s.message());
      LOG_INFO("registry credentials of %s replaced through the API", instance->mountpoint().c_str());
    } else if (key == "proxy_url" || key == "dragonfly_scheduler_endpoint") {
      return ControlError::daemon("updating " + key + " at run time is not supported");
    } else {
      return ControlError::daemon("unknown config key " + key);
    }
  }
  return {};
}

}  // namespace nydus::daemon
