#include "daemon/daemon_service.h"

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

}  // namespace

DaemonService::DaemonService(BuildInfo build, std::optional<std::string> id, std::optional<std::string> supervisor,
                             DaemonStateMachine& state)
    : build_(std::move(build)), id_(std::move(id)), supervisor_(std::move(supervisor)), state_(state) {}

void DaemonService::add_instance(RafsInstance instance) { instances_.push_back(std::move(instance)); }

RafsInstance* DaemonService::find(const std::optional<std::string>& id) {
  if (!id) return instances_.size() == 1 ? &instances_.front() : nullptr;
  for (RafsInstance& i : instances_)
    if (i.mountpoint == *id) return &i;
  return nullptr;
}

nlohmann::json DaemonService::backend_collection() const {
  nlohmann::json out = nlohmann::json::object();
  for (const RafsInstance& i : instances_) {
    out[i.mountpoint] = {{"backend_type", "Rafs"},
                         {"mountpoint", i.mountpoint},
                         {"mounted_time", format_mounted_time(i.mounted_at)},
                         {"config", to_v2_json(i.config)}};
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

ControlResult<std::string> DaemonService::backend_info(const std::string& mountpoint) {
  RafsInstance* instance = find(mountpoint);
  if (!instance) return ControlError::mount("object or filesystem doesn't exist");
  const bootstrap::Image& image = instance->filesystem->image();
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
  RafsInstance* instance = find(id);
  if (!instance || !instance->fs_metrics) return ControlError::no_counter();
  return instance->fs_metrics->fs_metrics_json();
}

ControlResult<std::string> DaemonService::files_metrics(const std::optional<std::string>& id, bool latest) {
  RafsInstance* instance = find(id);
  if (!instance || !instance->fs_metrics) return ControlError::no_counter();
  return instance->fs_metrics->files_metrics_json(latest);
}

ControlResult<std::string> DaemonService::access_patterns(const std::optional<std::string>& id) {
  RafsInstance* instance = find(id);
  if (!instance || !instance->fs_metrics) return ControlError::no_counter();
  return instance->fs_metrics->access_patterns_json();
}

ControlResult<std::string> DaemonService::backend_metrics(const std::optional<std::string>& id) {
  RafsInstance* instance = find(id);
  if (!instance || !instance->backend_metrics) return ControlError::no_counter();
  return backend_metrics_json(*instance->backend_metrics, instance->reader->backend().type());
}

ControlResult<std::string> DaemonService::blobcache_metrics(const std::optional<std::string>& id) {
  // Keyed by device.id (the snapshotter's "/<sid>"), not the mountpoint.
  RafsInstance* instance = nullptr;
  if (!id) {
    if (instances_.size() == 1) instance = &instances_.front();
  } else {
    for (RafsInstance& i : instances_)
      if (i.config.id == *id) instance = &i;
  }
  if (!instance || !instance->cache_metrics) return ControlError::no_counter();
  return blobcache_metrics_json(*instance->cache_metrics, instance->reader->cache_state(),
                                instance->config.cache.work_dir);
}

std::string DaemonService::prometheus() const {
  std::vector<const fs::FsMetrics*> filesystems;
  std::vector<BackendMetricsSource> backends;
  std::vector<BlobcacheMetricsSource> caches;
  for (const RafsInstance& i : instances_) {
    if (i.fs_metrics) filesystems.push_back(i.fs_metrics);
    if (i.backend_metrics) backends.push_back({i.mountpoint, i.reader->backend().type(), i.backend_metrics});
    if (i.cache_metrics)
      caches.push_back({i.config.id.empty() ? i.mountpoint : i.config.id, i.cache_metrics, i.reader->cache_state()});
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
  for (const RafsInstance& i : instances_) {
    if (!i.backend_metrics) continue;
    i.backend_metrics->for_each_source([&](const backend::SourceCounters& c) {
      const std::string labels = "{id=" + nlohmann::json(i.mountpoint).dump() + ",source=" + nlohmann::json(c.name).dump() + "}";
      text += "nydusd_backend_source_requests_total" + labels + " " + std::to_string(c.requests.load()) + "\n";
      errors += "nydusd_backend_source_errors_total" + labels + " " + std::to_string(c.errors.load()) + "\n";
      bytes += "nydusd_backend_source_bytes_total" + labels + " " + std::to_string(c.bytes.load()) + "\n";
    });
  }
  return text + errors + bytes;
}

ControlResult<std::map<std::string, std::string>> DaemonService::get_config(const std::optional<std::string>& id) {
  RafsInstance* instance = find(id);
  if (!instance) return ControlError::no_counter();
  std::map<std::string, std::string> out;
  if (instance->config.backend.type == "registry") {
    out["registry_auth"] = instance->config.backend.registry.auth;
    out["proxy_url"] = instance->config.backend.registry.proxy.url;
  }
  return out;
}

ControlStatus DaemonService::update_config(const std::optional<std::string>& id,
                                           const std::map<std::string, std::string>& values) {
  RafsInstance* instance = find(id);
  if (!instance) return ControlError::daemon("no filesystem instance " + id.value_or("(none)"));
  for (const auto& [key, value] : values) {
    if (key == "registry_auth") {
      Status s = instance->reader->backend().update_auth(value);
      if (!s.ok()) return ControlError::daemon(s.message());
      // Kept for GET /config; the instance table is otherwise read-only.
      instance->config.backend.registry.auth = value;
      LOG_INFO("registry credentials of %s replaced through the API", instance->mountpoint.c_str());
    } else if (key == "proxy_url" || key == "dragonfly_scheduler_endpoint") {
      return ControlError::daemon("updating " + key + " at run time is not supported");
    } else {
      return ControlError::daemon("unknown config key " + key);
    }
  }
  return {};
}

}  // namespace nydus::daemon
