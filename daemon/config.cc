#include "daemon/config.h"

#include <fstream>
#include <sstream>

#include <toml++/toml.h>

#include "daemon/p2p_config.h"

namespace nydus::daemon {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxBatchSize = 0x10000000;

// Typed, optional field readers: absent or null keeps the default; a value
// of the wrong type is an error naming the key path.
Status read_bool(const json& obj, const char* key, const std::string& path, bool* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Status::Ok();
  if (!it->is_boolean()) return Status::invalid("config: " + path + key + " must be true or false");
  *out = it->get<bool>();
  return Status::Ok();
}

Status read_uint(const json& obj, const char* key, const std::string& path, uint64_t max, uint64_t* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Status::Ok();
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0))
    return Status::invalid("config: " + path + key + " must be a non-negative integer");
  uint64_t v = it->get<uint64_t>();
  if (v > max)
    return Status::invalid("config: " + path + key + " = " + std::to_string(v) + " exceeds " + std::to_string(max));
  *out = v;
  return Status::Ok();
}

Status read_string(const json& obj, const char* key, const std::string& path, std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Status::Ok();
  if (!it->is_string()) return Status::invalid("config: " + path + key + " must be a string");
  *out = it->get<std::string>();
  return Status::Ok();
}

Status read_object(const json& obj, const char* key, const std::string& path, const json** out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    *out = nullptr;
    return Status::Ok();
  }
  if (!it->is_object()) return Status::invalid("config: " + path + key + " must be an object");
  *out = &*it;
  return Status::Ok();
}

Status read_string_list(const json& obj, const char* key, const std::string& path,
                        std::vector<std::string>* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Status::Ok();
  if (!it->is_array()) return Status::invalid("config: " + path + key + " must be an array of strings");
  for (const auto& v : *it) {
    if (!v.is_string()) return Status::invalid("config: " + path + key + " must be an array of strings");
    out->push_back(v.get<std::string>());
  }
  return Status::Ok();
}

template <typename T>
Status read_uint_as(const json& obj, const char* key, const std::string& path, uint64_t max, T* out) {
  uint64_t v = *out;
  NYDUS_TRY(read_uint(obj, key, path, max, &v));
  *out = static_cast<T>(v);
  return Status::Ok();
}

// `device.backend.config` of a registry backend (nydusd-contract.md §2.3-2.5).
// host and repo may be missing here: the snapshotter fills them in, and the
// backend refuses to start without them.
Status parse_registry_settings(const json& s, const std::string& path, backend::RegistryConfig* r) {
  NYDUS_TRY(read_string(s, "scheme", path, &r->scheme));
  NYDUS_TRY(read_string(s, "host", path, &r->host));
  NYDUS_TRY(read_string(s, "repo", path, &r->repo));
  NYDUS_TRY(read_string(s, "auth", path, &r->auth));
  NYDUS_TRY(read_string(s, "registry_token", path, &r->registry_token));
  NYDUS_TRY(read_bool(s, "skip_verify", path, &r->skip_verify));
  NYDUS_TRY(read_string_list(s, "ca_cert_files", path, &r->ca_cert_files));
  NYDUS_TRY(read_uint_as(s, "timeout", path, UINT32_MAX, &r->timeout_secs));
  NYDUS_TRY(read_uint_as(s, "connect_timeout", path, UINT32_MAX, &r->connect_timeout_secs));
  NYDUS_TRY(read_uint_as(s, "retry_limit", path, 255, &r->retry_limit));
  NYDUS_TRY(read_string(s, "blob_url_scheme", path, &r->blob_url_scheme));
  NYDUS_TRY(read_string(s, "blob_redirected_host", path, &r->blob_redirected_host));
  const json* proxy = nullptr;
  NYDUS_TRY(read_object(s, "proxy", path, &proxy));
  if (proxy) {
    const std::string p = path + "proxy.";
    NYDUS_TRY(read_string(*proxy, "url", p, &r->proxy.url));
    NYDUS_TRY(read_string(*proxy, "ping_url", p, &r->proxy.ping_url));
    NYDUS_TRY(read_bool(*proxy, "fallback", p, &r->proxy.fallback));
    NYDUS_TRY(read_uint(*proxy, "check_interval", p, UINT32_MAX, &r->proxy.check_interval_secs));
    NYDUS_TRY(read_bool(*proxy, "use_http", p, &r->proxy.use_http));
  }
  if (auto it = s.find("mirrors"); it != s.end() && !it->is_null()) {
    if (!it->is_array()) return Status::invalid("config: " + path + "mirrors must be an array");
    for (size_t i = 0; i < it->size(); ++i) {
      const json& m = (*it)[i];
      const std::string p = path + "mirrors[" + std::to_string(i) + "].";
      if (!m.is_object()) return Status::invalid("config: " + p.substr(0, p.size() - 1) + " must be an object");
      backend::MirrorConfig mirror;
      NYDUS_TRY(read_string(m, "host", p, &mirror.host));
      if (mirror.host.empty()) return Status::invalid("config: " + p + "host is required");
      NYDUS_TRY(read_bool(m, "auth_through", p, &mirror.auth_through));
      NYDUS_TRY(read_string(m, "ping_url", p, &mirror.ping_url));
      NYDUS_TRY(read_uint(m, "health_check_interval", p, UINT32_MAX, &mirror.health_check_interval_secs));
      NYDUS_TRY(read_uint_as(m, "failure_limit", p, 255, &mirror.failure_limit));
      const json* headers = nullptr;
      NYDUS_TRY(read_object(m, "headers", p, &headers));
      if (headers) {
        for (const auto& [name, value] : headers->items()) {
          if (!value.is_string()) return Status::invalid("config: " + p + "headers." + name + " must be a string");
          mirror.headers[name] = value.get<std::string>();
        }
      }
      r->mirrors.push_back(std::move(mirror));
    }
  }
  return Status::Ok();
}

Status parse_backend_settings(BackendConfig* backend, const std::string& path) {
  const json& s = backend->settings;
  if (backend->type == "localfs") {
    NYDUS_TRY(read_string(s, "dir", path, &backend->dir));
    NYDUS_TRY(read_string(s, "blob_file", path, &backend->blob_file));
    if (auto it = s.find("alt_dirs"); it != s.end() && !it->is_null()) {
      if (!it->is_array()) return Status::invalid("config: " + path + "alt_dirs must be an array of strings");
      for (const auto& d : *it) {
        if (!d.is_string()) return Status::invalid("config: " + path + "alt_dirs must be an array of strings");
        backend->alt_dirs.push_back(d.get<std::string>());
      }
    }
    if (backend->dir.empty() && backend->blob_file.empty())
      return Status::invalid("config: localfs backend needs " + path + "dir or " + path + "blob_file");
    return Status::Ok();
  }
  if (backend->type == "registry") return parse_registry_settings(s, path, &backend->registry);
  static const char* kKnown[] = {"oss", "s3", "localdisk", "http-proxy"};
  for (const char* t : kKnown)
    if (backend->type == t) return Status::Ok();  // validated by the backend factory
  return Status::invalid("config: unknown backend type '" + backend->type + "'");
}

Status check_mode(const std::string& mode) {
  if (mode != "direct" && mode != "cached")
    return Status::invalid("config: mode must be \"direct\" or \"cached\", got \"" + mode + "\"");
  return Status::Ok();
}

Status check_prefetch(const PrefetchConfig& p, const std::string& path) {
  if (p.enable && (p.threads < 1 || p.threads > 1024))
    return Status::invalid("config: " + path + " threads must be 1..1024");
  return Status::Ok();
}

Result<RafsConfig> parse_v1(const json& root) {
  RafsConfig cfg;
  cfg.source_version = 1;
  const json* device = nullptr;
  NYDUS_TRY(read_object(root, "device", "", &device));
  if (!device) return Status::invalid("config: missing required object 'device'");
  NYDUS_TRY(read_string(*device, "id", "device.", &cfg.id));
  const json* backend = nullptr;
  NYDUS_TRY(read_object(*device, "backend", "device.", &backend));
  if (!backend) return Status::invalid("config: missing required object 'device.backend'");
  NYDUS_TRY(read_string(*backend, "type", "device.backend.", &cfg.backend.type));
  if (cfg.backend.type.empty()) return Status::invalid("config: missing device.backend.type");
  const json* backend_cfg = nullptr;
  NYDUS_TRY(read_object(*backend, "config", "device.backend.", &backend_cfg));
  if (!backend_cfg) return Status::invalid("config: missing required object 'device.backend.config'");
  cfg.backend.settings = *backend_cfg;
  NYDUS_TRY(parse_backend_settings(&cfg.backend, "device.backend.config."));

  const json* cache = nullptr;
  NYDUS_TRY(read_object(*device, "cache", "device.", &cache));
  if (cache) {
    NYDUS_TRY(read_string(*cache, "type", "device.cache.", &cfg.cache.type));
    NYDUS_TRY(read_bool(*cache, "compressed", "device.cache.", &cfg.cache.compressed));
    NYDUS_TRY(read_bool(*cache, "validate", "device.cache.", &cfg.cache.validate));
    const json* cache_cfg = nullptr;
    NYDUS_TRY(read_object(*cache, "config", "device.cache.", &cache_cfg));
    if (cache_cfg) {
      NYDUS_TRY(read_string(*cache_cfg, "work_dir", "device.cache.config.", &cfg.cache.work_dir));
      NYDUS_TRY(read_bool(*cache_cfg, "disable_indexed_map", "device.cache.config.", &cfg.cache.disable_indexed_map));
    } else if (cfg.cache.type == "blobcache" || cfg.cache.type == "filecache") {
      return Status::invalid("config: device.cache.config is required for cache type " + cfg.cache.type);
    }
  }

  auto mode = root.find("mode");
  if (mode == root.end() || !mode->is_string()) return Status::invalid("config: missing required string 'mode'");
  cfg.mode = mode->get<std::string>();
  NYDUS_TRY(check_mode(cfg.mode));
  NYDUS_TRY(read_bool(root, "digest_validate", "", &cfg.digest_validate));
  NYDUS_TRY(read_bool(root, "iostats_files", "", &cfg.iostats_files));
  NYDUS_TRY(read_bool(root, "enable_xattr", "", &cfg.enable_xattr));
  NYDUS_TRY(read_bool(root, "access_pattern", "", &cfg.access_pattern));
  NYDUS_TRY(read_bool(root, "latest_read_files", "", &cfg.latest_read_files));
  NYDUS_TRY(read_uint(root, "amplify_io", "", kMaxBatchSize, &cfg.amplify_io));

  const json* prefetch = nullptr;
  NYDUS_TRY(read_object(root, "fs_prefetch", "", &prefetch));
  if (prefetch) {
    uint64_t threads = cfg.prefetch.threads;
    NYDUS_TRY(read_bool(*prefetch, "enable", "fs_prefetch.", &cfg.prefetch.enable));
    NYDUS_TRY(read_uint(*prefetch, "threads_count", "fs_prefetch.", 1u << 20, &threads));
    cfg.prefetch.threads = static_cast<uint32_t>(threads);
    NYDUS_TRY(read_uint(*prefetch, "merging_size", "fs_prefetch.", kMaxBatchSize, &cfg.prefetch.merging_size));
    NYDUS_TRY(read_uint(*prefetch, "bandwidth_rate", "fs_prefetch.", UINT32_MAX, &cfg.prefetch.bandwidth_rate));
    NYDUS_TRY(read_bool(*prefetch, "prefetch_all", "fs_prefetch.", &cfg.prefetch.prefetch_all));
    NYDUS_TRY(check_prefetch(cfg.prefetch, "fs_prefetch."));
  }
  return cfg;
}

Status parse_v2_prefetch(const json& obj, const std::string& path, PrefetchConfig* out) {
  uint64_t threads = out->threads;
  NYDUS_TRY(read_bool(obj, "enable", path, &out->enable));
  NYDUS_TRY(read_uint(obj, "threads", path, 1u << 20, &threads));
  NYDUS_TRY(read_uint(obj, "threads_count", path, 1u << 20, &threads));
  out->threads = static_cast<uint32_t>(threads);
  NYDUS_TRY(read_uint(obj, "batch_size", path, kMaxBatchSize, &out->merging_size));
  NYDUS_TRY(read_uint(obj, "bandwidth_limit", path, UINT32_MAX, &out->bandwidth_rate));
  NYDUS_TRY(read_bool(obj, "prefetch_all", path, &out->prefetch_all));
  return check_prefetch(*out, path);
}

Result<RafsConfig> parse_v2(const json& root) {
  RafsConfig cfg;
  cfg.source_version = 2;
  NYDUS_TRY(read_string(root, "id", "", &cfg.id));
  const json* backend = nullptr;
  NYDUS_TRY(read_object(root, "backend", "", &backend));
  if (!backend) return Status::invalid("config: missing required table 'backend'");
  NYDUS_TRY(read_string(*backend, "type", "backend.", &cfg.backend.type));
  if (cfg.backend.type.empty()) return Status::invalid("config: missing backend.type");
  const json* settings = nullptr;
  NYDUS_TRY(read_object(*backend, cfg.backend.type.c_str(), "backend.", &settings));
  if (!settings) return Status::invalid("config: missing backend." + cfg.backend.type + " settings");
  cfg.backend.settings = *settings;
  NYDUS_TRY(parse_backend_settings(&cfg.backend, "backend." + cfg.backend.type + "."));

  const json* cache = nullptr;
  NYDUS_TRY(read_object(root, "cache", "", &cache));
  if (cache) {
    NYDUS_TRY(read_string(*cache, "type", "cache.", &cfg.cache.type));
    NYDUS_TRY(read_bool(*cache, "compressed", "cache.", &cfg.cache.compressed));
    NYDUS_TRY(read_bool(*cache, "validate", "cache.", &cfg.cache.validate));
    for (const char* kind : {"filecache", "fscache"}) {
      const json* sub = nullptr;
      NYDUS_TRY(read_object(*cache, kind, "cache.", &sub));
      if (sub) NYDUS_TRY(read_string(*sub, "work_dir", std::string("cache.") + kind + ".", &cfg.cache.work_dir));
    }
    const json* prefetch = nullptr;
    NYDUS_TRY(read_object(*cache, "prefetch", "cache.", &prefetch));
    if (prefetch) NYDUS_TRY(parse_v2_prefetch(*prefetch, "cache.prefetch.", &cfg.prefetch));
  }
  const json* rafs = nullptr;
  NYDUS_TRY(read_object(root, "rafs", "", &rafs));
  if (rafs) {
    NYDUS_TRY(read_string(*rafs, "mode", "rafs.", &cfg.mode));
    NYDUS_TRY(check_mode(cfg.mode));
    NYDUS_TRY(read_uint(*rafs, "batch_size", "rafs.", kMaxBatchSize, &cfg.amplify_io));
    NYDUS_TRY(read_bool(*rafs, "validate", "rafs.", &cfg.digest_validate));
    NYDUS_TRY(read_bool(*rafs, "enable_xattr", "rafs.", &cfg.enable_xattr));
    NYDUS_TRY(read_bool(*rafs, "iostats_files", "rafs.", &cfg.iostats_files));
    NYDUS_TRY(read_bool(*rafs, "access_pattern", "rafs.", &cfg.access_pattern));
    NYDUS_TRY(read_bool(*rafs, "latest_read_files", "rafs.", &cfg.latest_read_files));
    const json* prefetch = nullptr;
    NYDUS_TRY(read_object(*rafs, "prefetch", "rafs.", &prefetch));
    if (prefetch) NYDUS_TRY(parse_v2_prefetch(*prefetch, "rafs.prefetch.", &cfg.prefetch));
  }
  return cfg;
}

// toml++ tables to JSON, so one reader serves both v2 shapes.
json toml_to_json(const toml::node& node) {
  if (auto* t = node.as_table()) {
    json obj = json::object();
    for (auto&& [key, value] : *t) obj[std::string(key.str())] = toml_to_json(value);
    return obj;
  }
  if (auto* a = node.as_array()) {
    json arr = json::array();
    for (auto&& value : *a) arr.push_back(toml_to_json(value));
    return arr;
  }
  if (auto* s = node.as_string()) return s->get();
  if (auto* i = node.as_integer()) {
    int64_t v = i->get();
    return v >= 0 ? json(static_cast<uint64_t>(v)) : json(v);
  }
  if (auto* f = node.as_floating_point()) return f->get();
  if (auto* b = node.as_boolean()) return b->get();
  return nullptr;  // dates and times have no meaning in this config
}

// The top-level `p2p` object, in either shape.
Status parse_p2p(const json& root, RafsConfig* cfg) {
  auto it = root.find("p2p");
  if (it == root.end() || it->is_null()) return Status::Ok();
  NYDUS_ASSIGN(auto p2p, parse_p2p_object(*it));
  cfg->p2p = std::move(p2p);
  return Status::Ok();
}

Result<RafsConfig> with_p2p(Result<RafsConfig> parsed, const json& root) {
  if (!parsed.ok()) return parsed;
  NYDUS_TRY(parse_p2p(root, &*parsed));
  return parsed;
}

}  // namespace

Result<RafsConfig> parse_config(const std::string& text) {
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!root.is_discarded()) {
    if (!root.is_object()) return Status::invalid("config: top level must be a JSON object");
    auto version = root.find("version");
    if (version != root.end() && version->is_number_integer() && version->get<int64_t>() == 2)
      return with_p2p(parse_v2(root), root);
    return with_p2p(parse_v1(root), root);
  }
  // Not JSON: try TOML v2. toml++ reports errors by exception; this runs
  // only at start-up or in the API handler that catches nothing else.
  try {
    toml::table table = toml::parse(text);
    json converted = toml_to_json(table);
    auto version = converted.find("version");
    if (version == converted.end() || !version->is_number_integer() || version->get<int64_t>() != 2)
      return Status::invalid("config: TOML config must set version = 2");
    return with_p2p(parse_v2(converted), converted);
  } catch (const toml::parse_error& e) {
    return Status::invalid(std::string("config: neither valid JSON nor TOML (TOML error at line ") +
                           std::to_string(e.source().begin.line) + ": " + std::string(e.description()) + ")");
  }
}

Result<RafsConfig> load_config_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::io("config: cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().size() > (1u << 20)) return Status::invalid("config: " + path + " is larger than 1 MiB");
  auto cfg = parse_config(text.str());
  if (!cfg.ok()) return cfg.status().with_context(path);
  return cfg;
}

RafsConfig localfs_dir_config(const std::string& dir) {
  RafsConfig cfg;
  cfg.backend.type = "localfs";
  cfg.backend.dir = dir;
  cfg.backend.settings = json{{"dir", dir}};
  cfg.cache.type = "blobcache";
  cfg.cache.work_dir = dir;
  return cfg;
}

json to_v2_json(const RafsConfig& c) {
  json backend = {{"type", c.backend.type}, {c.backend.type, c.backend.settings}};
  // Credentials are never echoed back (upstream nulls them too).
  if (backend[c.backend.type].is_object()) {
    for (const char* secret : {"auth", "registry_token", "access_key_secret"})
      if (backend[c.backend.type].contains(secret)) backend[c.backend.type][secret] = nullptr;
  }
  json prefetch = {{"enable", c.prefetch.enable},
                   {"threads", c.prefetch.threads},
                   {"batch_size", c.prefetch.merging_size},
                   {"bandwidth_limit", c.prefetch.bandwidth_rate},
                   {"prefetch_all", c.prefetch.prefetch_all}};
  return {{"version", 2},
          {"id", c.id},
          {"backend", backend},
          {"cache",
           {{"type", c.cache.type},
            {"compressed", c.cache.compressed},
            {"validate", c.cache.validate},
            {"filecache", {{"work_dir", c.cache.work_dir}}},
            {"prefetch", prefetch}}},
          {"rafs",
           {{"mode", c.mode},
            {"batch_size", c.amplify_io},
            {"validate", c.digest_validate},
            {"enable_xattr", c.enable_xattr},
            {"iostats_files", c.iostats_files},
            {"access_pattern", c.access_pattern},
            {"latest_read_files", c.latest_read_files},
            {"prefetch", prefetch}}}};
}

}  // namespace nydus::daemon
