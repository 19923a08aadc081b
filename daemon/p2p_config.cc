#include "daemon/p2p_config.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace nydus::daemon {
namespace {

using json = nlohmann::json;
constexpr const char* kDefaultDaemonFile = "/etc/nydus/p2p.json";

Status bad(const std::string& key, const std::string& what) {
  return Status::invalid("config: p2p." + key + " " + what);
}

Status read_string(const json& o, const char* key, std::string* out) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return Status::Ok();
  if (!it->is_string()) return bad(key, "must be a string");
  *out = it->get<std::string>();
  return Status::Ok();
}

Status read_u32(const json& o, const char* key, uint32_t min, uint32_t max, uint32_t* out) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return Status::Ok();
  if (!it->is_number_integer() || it->get<int64_t>() < 0) return bad(key, "must be a non-negative integer");
  const uint64_t v = it->get<uint64_t>();
  if (v < min || v > max)
    return bad(key, "= " + std::to_string(v) + " is outside " + std::to_string(min) + ".." + std::to_string(max));
  *out = static_cast<uint32_t>(v);
  return Status::Ok();
}

// 123, "123", "10GiB", "4MiB", "512KiB", "1TiB" (also KB/MB/GB as binary, as
// upstream's size strings are used loosely).
Status read_size(const json& o, const char* key, uint64_t* out) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return Status::Ok();
  if (it->is_number_integer() && it->get<int64_t>() >= 0) {
    *out = it->get<uint64_t>();
    return Status::Ok();
  }
  if (!it->is_string()) return bad(key, "must be a byte count or a size string such as \"10GiB\"");
  const std::string s = it->get<std::string>();
  size_t digits = 0;
  while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits]))) ++digits;
  if (digits == 0 || digits > 15) return bad(key, "= \"" + s + "\" is not a size");
  uint64_t v = std::stoull(s.substr(0, digits));
  std::string unit = s.substr(digits);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  uint64_t mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KB" || unit == "KiB") mult = 1ull << 10;
  else if (unit == "M" || unit == "MB" || unit == "MiB") mult = 1ull << 20;
  else if (unit == "G" || unit == "GB" || unit == "GiB") mult = 1ull << 30;
  else if (unit == "T" || unit == "TB" || unit == "TiB") mult = 1ull << 40;
  else return bad(key, "= \"" + s + "\" has an unknown unit (use B, KiB, MiB, GiB, TiB)");
  if (v > UINT64_MAX / mult) return bad(key, "= \"" + s + "\" is too large");
  *out = v * mult;
  return Status::Ok();
}

bool is_power_of_two(uint64_t v) { return v && !(v & (v - 1)); }

// "127.0.0.1:65001", "[::1]:65001", "localhost:65001".
// (The address itself is checked where it is bound; this only decides.)
bool is_loopback_listen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

Status read_bool(const json& o, const char* key, bool* out) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return Status::Ok();
  if (!it->is_boolean()) return bad(key, "must be true or false");
  *out = it->get<bool>();
  return Status::Ok();
}

}  // namespace

Result<p2p::P2pConfig> parse_p2p_object(const json& o) {
  if (!o.is_object()) return Status::invalid("config: p2p must be an object");
  p2p::P2pConfig c;
  NYDUS_TRY(read_string(o, "listen", &c.listen));
  NYDUS_TRY(read_string(o, "advertise", &c.advertise));
  NYDUS_TRY(read_string(o, "peers_dns", &c.peers_dns));
  NYDUS_TRY(read_string(o, "store_dir", &c.store_dir));
  NYDUS_TRY(read_string(o, "mirror_listen", &c.mirror_listen));
  NYDUS_TRY(read_string(o, "health_listen", &c.health_listen));
  NYDUS_TRY(read_string(o, "secret_file", &c.secret_file));
  NYDUS_TRY(read_string(o, "tls_cert", &c.tls_cert));
  NYDUS_TRY(read_string(o, "tls_key", &c.tls_key));
  NYDUS_TRY(read_string(o, "tls_ca", &c.tls_ca));
  NYDUS_TRY(read_bool(o, "insecure", &c.insecure));
  NYDUS_TRY(read_u32(o, "auth_window_s", 1, 3600, &c.auth_window_s));
  if (auto it = o.find("peers"); it != o.end() && !it->is_null()) {
    if (!it->is_array()) return bad("peers", "must be an array of \"ADDR:PORT\" strings");
    for (const auto& p : *it) {
      if (!p.is_string()) return bad("peers", "must be an array of \"ADDR:PORT\" strings");
      c.peers.push_back(p.get<std::string>());
    }
  }
  NYDUS_TRY(read_size(o, "store_size", &c.store_size));
  NYDUS_TRY(read_size(o, "unit_size", &c.unit_size));
  NYDUS_TRY(read_u32(o, "granule_size", 512, 1u << 20, &c.granule_size));
  NYDUS_TRY(read_u32(o, "dns_refresh_ms", 100, 3600000, &c.dns_refresh_ms));
  NYDUS_TRY(read_u32(o, "peer_timeout_ms", 1, 60000, &c.peer_timeout_ms));
  NYDUS_TRY(read_u32(o, "peer_stall_ms", 1, 600000, &c.peer_stall_ms));
  NYDUS_TRY(read_u32(o, "failure_backoff_ms", 10, 3600000, &c.failure_backoff_ms));
  NYDUS_TRY(read_u32(o, "bad_data_backoff_ms", 10, 86400000, &c.bad_data_backoff_ms));
  NYDUS_TRY(read_u32(o, "max_candidates", 1, 64, &c.max_candidates));
  NYDUS_TRY(read_u32(o, "upload_connections", 1, 65536, &c.upload_connections));
  NYDUS_TRY(read_size(o, "upload_rate", &c.upload_rate));
  NYDUS_TRY(read_size(o, "upload_rate_per_peer", &c.upload_rate_per_peer));
  NYDUS_TRY(read_u32(o, "max_uploads", 0, 65536, &c.max_uploads));
  NYDUS_TRY(read_u32(o, "drain_timeout_ms", 0, 600000, &c.drain_timeout_ms));
  NYDUS_TRY(read_u32(o, "spread_uploads", 0, 65536, &c.spread_uploads));
  if (!is_power_of_two(c.granule_size)) return bad("granule_size", "must be a power of two");
  if (c.unit_size < c.granule_size || c.unit_size % c.granule_size != 0 || c.unit_size > (1ull << 30))
    return bad("unit_size", "must be a multiple of granule_size (" + std::to_string(c.granule_size) + ") up to 1GiB");
  if (c.listen.empty()) return bad("listen", "must not be empty");
  if (c.peers.empty() && c.peers_dns.empty()) return bad("peers", "or p2p.peers_dns is required");
  if (!c.peers.empty() && !c.peers_dns.empty()) return bad("peers", "and p2p.peers_dns cannot both be set");
  // Unsigned peer requests, or a mirror that serves anyone, only on this
  // host unless the operator says otherwise in so many words.
  const int tls_files = !c.tls_cert.empty() + !c.tls_key.empty() + !c.tls_ca.empty();
  if (tls_files != 0 && tls_files != 3)
    return bad(c.tls_cert.empty() ? "tls_cert" : c.tls_key.empty() ? "tls_key" : "tls_ca",
               "is missing: mutual TLS needs tls_cert, tls_key and tls_ca together");
  if (c.secret_file.empty() && tls_files == 0 && !c.insecure && !is_loopback_listen(c.listen))
    return bad("listen", "= \"" + c.listen + "\" is not a loopback address: set p2p.secret_file (a secret shared "
                         "by every node), or p2p.tls_cert, tls_key and tls_ca (mutual TLS), or, to accept "
                         "unauthenticated peer requests, p2p.insecure: true");
  if (!c.mirror_listen.empty() && !c.insecure && !is_loopback_listen(c.mirror_listen))
    return bad("mirror_listen", "= \"" + c.mirror_listen + "\" is not a loopback address: the mirror answers "
                                "anyone; set p2p.insecure: true to allow that");
  return c;
}

Result<std::optional<p2p::P2pConfig>> load_daemon_p2p_config(const std::string& flag_path) {
  std::string path = flag_path;
  std::string origin = "--p2p-config";
  if (path.empty()) {
    if (const char* env = std::getenv("NYDUS_P2P_CONFIG"); env && *env) {
      path = env;
      origin = "NYDUS_P2P_CONFIG";
    }
  }
  if (path.empty()) {
    struct stat st {};
    if (stat(kDefaultDaemonFile, &st) != 0) return std::optional<p2p::P2pConfig>();
    path = kDefaultDaemonFile;
    origin = "default path";
  }
  std::ifstream in(path);
  if (!in) return Status::invalid("p2p config " + path + " (" + origin + "): cannot be read");
  std::stringstream buf;
  buf << in.rdbuf();
  json root = json::parse(buf.str(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object())
    return Status::invalid("p2p config " + path + " (" + origin + "): not a JSON object");
  const json& object = root.contains("p2p") ? root["p2p"] : root;
  auto parsed = parse_p2p_object(object);
  if (!parsed.ok()) return parsed.status().with_context("p2p config " + path);
  return std::optional<p2p::P2pConfig>(std::move(parsed).value());
}

}  // namespace nydus::daemon
