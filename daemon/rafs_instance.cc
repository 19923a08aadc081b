#include "daemon/rafs_instance.h"

#include <unistd.h>

#include "backend/localfs_backend.h"
#include "backend/registry_backend.h"
#include "bootstrap/image.h"
#include "common/log.h"
#include "daemon/image_cache.h"
#include "daemon/p2p_runtime.h"
#include "fs/prefetch_plan.h"

namespace nydus::daemon {
namespace {

Result<std::unique_ptr<backend::BlobBackend>> make_backend(const BackendConfig& config,
                                                           const std::optional<std::string>& auth_override,
                                                           backend::BackendMetrics* metrics) {
  if (config.type == "localfs") {
    return backend::make_localfs_backend({config.dir, config.blob_file, config.alt_dirs, metrics});
  }
  if (config.type == "registry") {
    backend::RegistryConfig registry = config.registry;
    if (auth_override) registry.auth = *auth_override;
    return backend::make_registry_backend(std::move(registry), metrics);
  }
  return Status::unsupported("backend type '" + config.type +
                             "' is not supported yet (supported: localfs, registry)");
}

// The given prefetch files, else the bootstrap's prefetch table, else (with
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

}  // namespace

RafsInstance::RafsInstance(RafsMountSpec spec)
    : spec_(std::move(spec)),
      mounted_at_(std::chrono::system_clock::now()),
      backend_metrics_(std::make_unique<backend::BackendMetrics>()),
      cache_metrics_(std::make_unique<backend::CacheMetrics>()) {}

RafsInstance::~RafsInstance() {
  if (prefetcher_) prefetcher_->stop();
}

Result<std::shared_ptr<RafsInstance>> RafsInstance::create(RafsMountSpec spec) {
  for (const std::string& path : spec.prefetch_files)
    if (path.empty() || path[0] != '/') return Status::invalid("invalid prefetch file list: " + path + " is not absolute");
  if (spec.config.cache.type == "fscache")
    return Status::unsupported("cache type 'fscache' needs the singleton service, which is not supported");
  if (spec.config.cache.compressed)
    LOG_WARN("%s: device.cache.compressed: the raw (.blob.raw) cache is not supported; caching uncompressed data",
             spec.mountpoint.c_str());

  std::shared_ptr<RafsInstance> instance(new RafsInstance(std::move(spec)));
  instance->self_ = instance;
  const RafsMountSpec& s = instance->spec_;
  const RafsConfig& config = s.config;

  NYDUS_ASSIGN(auto image, ImageCache::open(s.source));
  // gzip chunks (eStargz, zran) need a decoder we do not have yet: refuse
  // the mount rather than fail every read later.
  for (const auto& blob : image->blobs()) {
    if (blob.compressor == bootstrap::Compressor::kGzip)
      return Status::unsupported("bootstrap " + s.source + ": blob " + blob.id +
                                 " uses gzip chunks (eStargz/zran), which are not supported yet");
  }
  NYDUS_ASSIGN(auto origin_backend, make_backend(config.backend, s.auth_override, instance->backend_metrics_.get()));
  // With P2P on, the registry backend sits behind the peer decorator.
  NYDUS_ASSIGN(auto backend, P2pRuntime::wrap(config, std::move(origin_backend), instance->backend_metrics_.get()));
  const bool p2p_on = config.backend.type == "registry" && P2pRuntime::node() != nullptr;
  if (config.backend.type == "registry") {
    instance->registry_auth_ = s.auth_override.value_or(config.backend.registry.auth);
    // Credentials from elsewhere than the config text (IMAGE_PULL_AUTH, a
    // predecessor's renewal) must reach a successor too.
    instance->auth_renewed_ = s.auth_override.has_value();
  }
  LOG_INFO("%s: bootstrap %s: RAFS v%u, %zu blob(s), %llu inodes, chunk size %u, %s/%s", s.mountpoint.c_str(),
           s.source.c_str(), image->super().version, image->blobs().size(),
           static_cast<unsigned long long>(image->super().inodes_count), image->super().chunk_size,
           bootstrap::compressor_name(image->super().compressor), bootstrap::digester_name(image->super().digester));

  backend::ChunkReaderOptions reader_options;
  reader_options.validate_digest = config.digest_validate;
  reader_options.work_dir = config.cache.work_dir;
  reader_options.cache = config.cache.type == "blobcache" || config.cache.type == "filecache";
  reader_options.cache_validate = config.cache.validate;
  // Bytes from the network are always checked before they are cached or
  // returned; a local directory is trusted unless digest_validate is on.
  reader_options.verify_fetched = config.backend.type != "localfs";
  reader_options.merge_bytes = config.amplify_io;
  reader_options.fetch_attempts = 1 + (config.backend.type == "registry" ? config.backend.registry.retry_limit : 0);
  // A chunk a peer sent wrong is fetched again from another source.
  if (p2p_on) reader_options.fetch_attempts = std::max<uint32_t>(reader_options.fetch_attempts, 3);
  reader_options.metrics = instance->cache_metrics_.get();
  // access_pattern also keeps the backend read trace
  // (/api/v1/metrics/backend/reads).
  if (config.access_pattern) {
    instance->read_trace_ = std::make_unique<backend::ReadTrace>();
    reader_options.trace = instance->read_trace_.get();
  }
  auto reader = std::make_unique<backend::ChunkReader>(image->blobs(), std::move(backend), reader_options);
  instance->reader_ = reader.get();

  fs::FsOptions fs_options;
  fs_options.enable_xattr = config.enable_xattr;
  fs_options.default_uid = getuid();
  fs_options.default_gid = getgid();
  fs_options.amplify_bytes = reader_options.cache ? config.amplify_io : 0;
  instance->fs_metrics_ = std::make_unique<fs::FsMetrics>(
      s.mountpoint,
      fs::FsMetricsOptions{config.iostats_files, config.access_pattern, config.latest_read_files, true});
  instance->filesystem_ = std::make_shared<fs::Filesystem>(std::move(image), std::move(reader), fs_options);

  if (config.prefetch.enable) {
    if (!reader_options.cache) {
      LOG_WARN("%s: fs_prefetch.enable: prefetch needs a blob cache (cache.type blobcache); not prefetching",
               s.mountpoint.c_str());
    } else {
      auto plan = make_prefetch_plan(instance->filesystem_->image(), s.prefetch_files, config.prefetch.prefetch_all);
      if (!plan.ok()) {
        LOG_WARN("%s: prefetch: %s; not prefetching", s.mountpoint.c_str(), plan.status().message().c_str());
      } else if (!plan->empty()) {
        instance->prefetcher_ = std::make_unique<backend::Prefetcher>(
            *instance->reader_,
            backend::PrefetchOptions{config.prefetch.threads, config.prefetch.merging_size,
                                     config.prefetch.bandwidth_rate},
            instance->cache_metrics_.get());
        instance->prefetcher_->start(std::move(plan).value());
      }
    }
  } else if (!s.prefetch_files.empty()) {
    LOG_INFO("%s: prefetch files given but fs_prefetch.enable is false: not prefetching", s.mountpoint.c_str());
  }
  return instance;
}

std::shared_ptr<void> RafsInstance::metrics_context() {
  return std::shared_ptr<void>(self_.lock(), fs_metrics_.get());
}

std::string RafsInstance::registry_auth() const {
  std::lock_guard<std::mutex> lock(auth_mu_);
  return registry_auth_;
}

Status RafsInstance::update_registry_auth(const std::string& auth) {
  NYDUS_TRY(reader_->backend().update_auth(auth));
  std::lock_guard<std::mutex> lock(auth_mu_);
  registry_auth_ = auth;
  auth_renewed_ = true;
  return Status::Ok();
}

std::optional<std::string> RafsInstance::renewed_registry_auth() const {
  std::lock_guard<std::mutex> lock(auth_mu_);
  if (!auth_renewed_) return std::nullopt;
  return registry_auth_;
}

void RafsInstance::log_summary() const {
  const double mib = 1 << 20;
  const backend::CacheMetrics& cache = *cache_metrics_;
  const char* id = spec_.mountpoint.c_str();
  LOG_INFO("metrics %s: %llu bytes read through FUSE", id, static_cast<unsigned long long>(filesystem_->bytes_read()));
  LOG_INFO("metrics %s: %llu chunk reads, %llu cache hits (%.1f MiB), %llu backend requests for %llu chunks "
           "(%.1f MiB raw), %llu single-flight waits, %llu corrupt fetches, prefetch %llu/%llu chunks",
           id, static_cast<unsigned long long>(cache.chunk_reads.load()),
           static_cast<unsigned long long>(cache.cache_hits.load()), cache.cache_hit_bytes.load() / mib,
           static_cast<unsigned long long>(cache.backend_fetches.load()),
           static_cast<unsigned long long>(cache.backend_chunks.load()), cache.backend_bytes.load() / mib,
           static_cast<unsigned long long>(cache.singleflight_waits.load()),
           static_cast<unsigned long long>(cache.corrupt_fetches.load()),
           static_cast<unsigned long long>(cache.prefetch_done_chunks.load()),
           static_cast<unsigned long long>(cache.prefetch_planned_chunks.load()));
  if (read_trace_) {
    const uint64_t dropped = read_trace_->dropped();
    const std::string more = dropped ? ", " + std::to_string(dropped) + " more dropped (trace full)" : "";
    LOG_INFO("metrics %s: backend read trace: %zu requests recorded%s", id, read_trace_->size(), more.c_str());
  }
  backend_metrics_->for_each_source([&](const backend::SourceCounters& s) {
    LOG_INFO("metrics %s: source %s: %llu requests, %llu errors, %.1f MiB", id, s.name.c_str(),
             static_cast<unsigned long long>(s.requests.load()), static_cast<unsigned long long>(s.errors.load()),
             s.bytes.load() / mib);
  });
  if (reader_->cache_enabled()) {
    for (const auto& blob : reader_->cache_state())
      if (blob.cached)
        LOG_INFO("metrics %s: blob %s: %u of %u chunks cached%s", id, blob.blob_id.c_str(), blob.ready_chunks,
                 blob.chunk_count, blob.fully_cached ? " (fully cached)" : "");
  }
}

}  // namespace nydus::daemon
