#include "daemon/p2p_runtime.h"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "common/log.h"
#include "p2p/p2p_node.h"
#include "p2p/peer_backend.h"

namespace nydus::daemon {
namespace {

constexpr const char* kDefaultStoreDir = "/var/lib/nydus/p2p";

std::atomic<bool> g_daemon_serving{false};
std::mutex g_prometheus_mu;
std::function<std::string()> g_prometheus;  // guarded by g_prometheus_mu

struct Runtime {
  std::mutex mu;
  std::optional<p2p::P2pConfig> daemon_config;
  std::unique_ptr<p2p::P2pNode> node;
  bool warned_other_config = false;
};

Runtime& runtime() {
  static Runtime* r = new Runtime();  // never destroyed: shutdown() stops the node explicitly
  return *r;
}

bool same_settings(const p2p::P2pConfig& a, const p2p::P2pConfig& b) {
  return a.listen == b.listen && a.advertise == b.advertise && a.peers == b.peers && a.peers_dns == b.peers_dns &&
         a.store_dir == b.store_dir && a.unit_size == b.unit_size;
}

Status start_locked(Runtime& r, p2p::P2pConfig config, const std::string& work_dir) {
  if (config.store_dir.empty()) config.store_dir = work_dir.empty() ? kDefaultStoreDir : work_dir + "/p2p";
  p2p::P2pNode::DaemonHooks hooks;
  hooks.not_ready = []() -> std::string {
    return g_daemon_serving.load(std::memory_order_acquire) ? "" : "the daemon is not RUNNING";
  };
  hooks.prometheus = []() -> std::string {
    std::lock_guard<std::mutex> g(g_prometheus_mu);
    return g_prometheus ? g_prometheus() : P2pRuntime::prometheus_text();
  };
  NYDUS_ASSIGN(r.node, p2p::P2pNode::start(config, std::move(hooks)));
  LOG_INFO("p2p: node %s started (store %s, %llu MiB; unit %llu KiB; %s)", r.node->self().c_str(),
           config.store_dir.c_str(), static_cast<unsigned long long>(config.store_size >> 20),
           static_cast<unsigned long long>(config.unit_size >> 10),
           config.peers_dns.empty() ? "static peers" : ("peers from DNS " + config.peers_dns).c_str());
  return Status::Ok();
}

}  // namespace

void P2pRuntime::set_daemon_config(std::optional<p2p::P2pConfig> config) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> g(r.mu);
  r.daemon_config = std::move(config);
}

Status P2pRuntime::start_from_daemon_config() {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> g(r.mu);
  if (r.node || !r.daemon_config) return Status::Ok();
  return start_locked(r, *r.daemon_config, "");
}

Result<p2p::P2pNode*> P2pRuntime::node_for(const RafsConfig& config) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> g(r.mu);
  const std::optional<p2p::P2pConfig>& wanted = config.p2p ? config.p2p : r.daemon_config;
  if (!wanted) return static_cast<p2p::P2pNode*>(nullptr);
  if (r.node) {
    if (!same_settings(r.node->config(), *wanted) && !r.warned_other_config) {
      r.warned_other_config = true;
      LOG_WARN("p2p: an instance's p2p settings differ from the running node's; the daemon runs one node, "
               "so it uses the running one");
    }
    return r.node.get();
  }
  NYDUS_TRY(start_locked(r, *wanted, config.cache.type.empty() ? "" : config.cache.work_dir));
  return r.node.get();
}

Result<std::unique_ptr<backend::BlobBackend>> P2pRuntime::wrap(const RafsConfig& config,
                                                               std::unique_ptr<backend::BlobBackend> backend,
                                                               backend::BackendMetrics* metrics) {
  if (config.backend.type != "registry") {
    if (config.p2p) LOG_WARN("p2p: backend type %s has no origin to share; P2P is off for it", config.backend.type.c_str());
    return backend;
  }
  NYDUS_ASSIGN(p2p::P2pNode * node, node_for(config));
  if (!node) return backend;
  const backend::RegistryConfig& reg = config.backend.registry;
  p2p::PeerBackendOptions options;
  options.registry_url = std::string(reg.scheme == "http" ? "http" : "https") + "://" + reg.host;
  options.repo = reg.repo;
  return p2p::make_peer_backend(std::move(backend), *node, std::move(options), metrics);
}

p2p::P2pNode* P2pRuntime::node() {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> g(r.mu);
  return r.node.get();
}

void P2pRuntime::set_daemon_serving(bool serving) { g_daemon_serving.store(serving, std::memory_order_release); }

void P2pRuntime::set_prometheus_source(std::function<std::string()> source) {
  std::lock_guard<std::mutex> g(g_prometheus_mu);
  g_prometheus = std::move(source);
}

void P2pRuntime::drain() {
  // Not under the runtime's lock: draining waits for uploads, and nothing
  // else may wait behind it. The node lives until shutdown(), which runs
  // after every caller of drain() (main, the API thread, stopped first).
  p2p::P2pNode* n = node();
  if (n) n->drain();
}

void P2pRuntime::shutdown() {
  std::unique_ptr<p2p::P2pNode> node;
  {
    Runtime& r = runtime();
    std::lock_guard<std::mutex> g(r.mu);
    node = std::move(r.node);
  }
  node.reset();
}

namespace {

// Every P2P counter once: its key in the metrics JSON (the Prometheus name
// is nydusd_p2p_<key>_total), its Prometheus help and where it lives.
struct P2pCounter {
  const char* key;
  const char* help;
  std::atomic<uint64_t> p2p::P2pMetrics::*field;
};
constexpr P2pCounter kP2pCounters[] = {
    {"upload_requests", "Blob range requests the peer server answered with data.", &p2p::P2pMetrics::upload_requests},
    {"upload_bytes", "Body bytes the peer server sent.", &p2p::P2pMetrics::upload_bytes},
    {"upload_errors", "Peer-server requests refused or aborted.", &p2p::P2pMetrics::upload_errors},
    {"owner_hits", "Asked-for ranges already in the piece store.", &p2p::P2pMetrics::owner_hits},
    {"owner_misses", "Asked-for ranges fetched from the origin for the asker.", &p2p::P2pMetrics::owner_misses},
    {"origin_requests", "Origin GETs the peer server made for askers.", &p2p::P2pMetrics::origin_requests},
    {"origin_bytes", "Bytes the peer server fetched from origins.", &p2p::P2pMetrics::origin_bytes},
    {"passthrough_requests", "Non-blob requests passed through to the origin unchanged.",
     &p2p::P2pMetrics::passthrough_requests},
    {"origin_via_peers", "Origin requests sent through a peer because this node could not reach the origin.",
     &p2p::P2pMetrics::origin_via_peers},
    {"peer_requests", "Ranges this node asked peers for.", &p2p::P2pMetrics::peer_requests},
    {"peer_failures", "Peer requests that failed.", &p2p::P2pMetrics::peer_failures},
    {"verify_failures", "Peer or piece-store bytes that failed verification.", &p2p::P2pMetrics::verify_failures},
    {"store_hits", "Ranges read from the local piece store.", &p2p::P2pMetrics::store_hits},
    {"fallbacks_to_origin", "Ranges this node fetched from the origin itself.", &p2p::P2pMetrics::fallbacks_to_origin},
    {"redirects_sent", "Askers of a hot unit sent to a holder.", &p2p::P2pMetrics::redirects_sent},
    {"redirects_followed", "Redirects to a holder this node followed.", &p2p::P2pMetrics::redirects_followed},
    {"waits_sent", "Askers of a hot unit told to come back while no holder existed.", &p2p::P2pMetrics::waits_sent},
    {"waits_followed", "Times this node waited before asking an owner again.", &p2p::P2pMetrics::waits_followed},
    {"refused_unsigned", "Peer-port requests refused: no signature.", &p2p::P2pMetrics::refused_unsigned},
    {"refused_bad_signature", "Peer-port requests refused: malformed or wrong signature.",
     &p2p::P2pMetrics::refused_bad_signature},
    {"refused_stale", "Peer-port requests refused: timestamp outside the window.", &p2p::P2pMetrics::refused_stale},
    {"refused_replayed", "Peer-port requests refused: signature seen before.", &p2p::P2pMetrics::refused_replayed},
    {"refused_no_certificate", "Peer-port requests refused: no TLS client certificate (mutual TLS).",
     &p2p::P2pMetrics::refused_no_certificate},
    {"refused_untrusted_certificate", "Peer-port requests refused: a client certificate not of the cluster CA.",
     &p2p::P2pMetrics::refused_untrusted_certificate},
    {"refused_access", "Mirror requests refused: the origin would not give this client the blob.",
     &p2p::P2pMetrics::refused_access},
    {"refused_busy", "Data requests refused with 503: max_uploads responses in flight.",
     &p2p::P2pMetrics::refused_busy},
    {"refused_draining", "Peer requests refused with 503 while the node drained.",
     &p2p::P2pMetrics::refused_draining},
    {"requests_from_peers", "Requests from other nodes.", &p2p::P2pMetrics::requests_from_peers},
    {"requests_from_nydusd", "Requests from stock nydusd (User-Agent).", &p2p::P2pMetrics::requests_from_nydusd},
    {"requests_from_containerd", "Requests from containerd (User-Agent).",
     &p2p::P2pMetrics::requests_from_containerd},
    {"requests_from_others", "Requests from other clients.", &p2p::P2pMetrics::requests_from_others},
    {"fallback_redirects", "Askers sent to the next owner while this node had just started.",
     &p2p::P2pMetrics::fallback_redirects},
};

}  // namespace

nlohmann::json P2pRuntime::metrics_json() {
  p2p::P2pNode* node = P2pRuntime::node();
  if (!node) return nullptr;
  const p2p::P2pMetrics& m = node->metrics();
  auto load = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  nlohmann::ordered_json j;
  j["self"] = node->self();
  j["members"] = *node->membership().members();
  for (const P2pCounter& c : kP2pCounters) j[c.key] = load(m.*c.field);
  j["store_used_bytes"] = node->store().used_bytes();
  j["store_evicted_blobs"] = node->store().evicted_blobs();
  nlohmann::ordered_json uploads = nlohmann::ordered_json::object();
  m.for_each_upload([&](const p2p::PeerUpload& u) {
    uploads[u.peer] = {{"requests", load(u.requests)}, {"bytes", load(u.bytes)}};
  });
  j["uploads_by_peer"] = std::move(uploads);
  return nlohmann::json::parse(j.dump());
}

std::string P2pRuntime::prometheus_text() {
  p2p::P2pNode* node = P2pRuntime::node();
  if (!node) return "";
  const p2p::P2pMetrics& m = node->metrics();
  std::string out;
  for (const P2pCounter& c : kP2pCounters) {
    const std::string name = std::string("nydusd_p2p_") + c.key + "_total";
    out += "# HELP " + name + " " + c.help + "\n# TYPE " + name + " counter\n" + name + " " +
           std::to_string((m.*c.field).load(std::memory_order_relaxed)) + "\n";
  }
  out += "# HELP nydusd_p2p_uploaded_bytes_total Bytes uploaded per asking peer.\n"
         "# TYPE nydusd_p2p_uploaded_bytes_total counter\n";
  m.for_each_upload([&](const p2p::PeerUpload& u) {
    out += "nydusd_p2p_uploaded_bytes_total{peer=" + nlohmann::json(u.peer).dump() + "} " +
           std::to_string(u.bytes.load()) + "\n";
  });
  out += "# HELP nydusd_p2p_store_used_bytes Raw blob bytes held in the piece store.\n"
         "# TYPE nydusd_p2p_store_used_bytes gauge\nnydusd_p2p_store_used_bytes " +
         std::to_string(node->store().used_bytes()) + "\n";
  return out;
}

void P2pRuntime::log_summary() {
  p2p::P2pNode* node = P2pRuntime::node();
  if (!node) return;
  const p2p::P2pMetrics& m = node->metrics();
  const double mib = 1 << 20;
  LOG_INFO("metrics p2p: uploaded %llu requests, %.1f MiB (%llu owner hits, %llu misses, %.1f MiB from origins for peers); "
           "asked peers %llu times (%llu failed), %llu store hits, %llu origin fallbacks, %llu verification failures; "
           "store holds %.1f MiB",
           static_cast<unsigned long long>(m.upload_requests.load()), m.upload_bytes.load() / mib,
           static_cast<unsigned long long>(m.owner_hits.load()), static_cast<unsigned long long>(m.owner_misses.load()),
           m.origin_bytes.load() / mib, static_cast<unsigned long long>(m.peer_requests.load()),
           static_cast<unsigned long long>(m.peer_failures.load()), static_cast<unsigned long long>(m.store_hits.load()),
           static_cast<unsigned long long>(m.fallbacks_to_origin.load()),
           static_cast<unsigned long long>(m.verify_failures.load()), node->store().used_bytes() / mib);
  m.for_each_upload([&](const p2p::PeerUpload& u) {
    LOG_INFO("metrics p2p: uploaded to %s: %llu requests, %.1f MiB", u.peer.c_str(),
             static_cast<unsigned long long>(u.requests.load()), u.bytes.load() / mib);
  });
}

}  // namespace nydus::daemon
