// Settings of the registry backend: `device.backend.config` of a
// `registry` backend (nydusd-contract.md §2.3–§2.5). Plain values; the
// daemon's config parser fills them in and validates types and ranges.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace nydus::backend {

// One legacy `mirrors[]` entry (§2.4), as the Dragonfly + Nydus guide
// writes it.
struct MirrorConfig {
  std::string host;                            // base URL with scheme: http://127.0.0.1:65001
  std::map<std::string, std::string> headers;  // e.g. X-Dragonfly-Registry
  bool auth_through = false;  // false: unauthenticated requests skip the mirror
  std::string ping_url;       // "" = <host>/v2
  uint64_t health_check_interval_secs = 5;
  uint32_t failure_limit = 5;  // transport errors before the mirror is set aside
};

// The P2P forward proxy (§2.5).
struct ProxyConfig {
  std::string url;       // "" = no proxy
  std::string ping_url;  // "" = never probed, always considered healthy
  bool fallback = true;  // unhealthy or failing proxy: go to the origin
  uint64_t check_interval_secs = 5;
  bool use_http = false;  // send https URLs as http through the proxy
};

struct RegistryConfig {
  std::string scheme = "https";  // only "http" means plain HTTP
  std::string host;              // registry:port
  std::string repo;              // namespace/name
  std::string auth;              // base64(user:pass)
  std::string registry_token;    // a bearer token given up front
  bool skip_verify = false;
  std::vector<std::string> ca_cert_files;
  uint32_t timeout_secs = 5;  // whole request; 0 = none
  uint32_t connect_timeout_secs = 5;
  uint32_t retry_limit = 0;
  std::string blob_url_scheme;       // forced scheme of redirect targets
  std::string blob_redirected_host;  // forced host of redirect targets
  ProxyConfig proxy;
  std::vector<MirrorConfig> mirrors;
};

}  // namespace nydus::backend
