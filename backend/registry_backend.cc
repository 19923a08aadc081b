#include "backend/registry_backend.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/blob_id.h"
#include "backend/http_client.h"
#include "common/log.h"

namespace nydus::backend {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr const char* kClientId = "nydus-registry-client";  // as upstream sends
constexpr uint64_t kDefaultTokenTtlSecs = 600;                // when expires_in is absent
constexpr uint64_t kTokenRefreshMarginSecs = 20;
constexpr size_t kMaxErrorBodyShown = 200;

// "https://host:port/v2/x?q" -> {"https://host:port", "/v2/x?q"}.
std::pair<std::string, std::string> split_origin(const std::string& url) {
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return {"", url};
  const size_t path = url.find('/', scheme_end + 3);
  if (path == std::string::npos) return {url, "/"};
  return {url.substr(0, path), url.substr(path)};
}

std::string without_trailing_slash(std::string s) {
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}

std::string body_excerpt(const std::string& body) {
  std::string out = body.substr(0, kMaxErrorBodyShown);
  for (char& c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

// One mirror's health (§2.4). `healthy` flips to false after
// failure_limit transport errors and back once its ping answers < 500.
struct Mirror {
  MirrorConfig config;
  std::string base;  // host without trailing slash
  std::string ping_url;
  std::atomic<bool> healthy{true};
  std::atomic<uint32_t> failures{0};
  Clock::time_point next_probe{};
  SourceCounters* counters = nullptr;
};

struct ProxyHealth {
  std::atomic<bool> healthy{true};
  Clock::time_point next_probe{};
};

class RegistryState {
 public:
  RegistryState(RegistryConfig config, BackendMetrics* metrics)
      : config_(std::move(config)),
        http_(TlsOptions{config_.skip_verify, config_.ca_cert_files}),
        plain_http_(config_.scheme == "http"),
        metrics_(metrics ? metrics : &own_metrics_) {
    origin_counters_ = &metrics_->source("origin");
    if (!config_.proxy.url.empty()) proxy_counters_ = &metrics_->source("proxy " + config_.proxy.url);
    for (const MirrorConfig& m : config_.mirrors) {
      auto mirror = std::make_unique<Mirror>();
      mirror->config = m;
      mirror->base = without_trailing_slash(m.host);
      mirror->ping_url = m.ping_url.empty() ? mirror->base + "/v2" : m.ping_url;
      mirror->counters = &metrics_->source("mirror " + mirror->base);
      mirrors_.push_back(std::move(mirror));
    }
    auth_ = config_.auth;
    if (!config_.registry_token.empty()) auth_header_ = "Bearer " + config_.registry_token;
    if (!mirrors_.empty() || !config_.proxy.ping_url.empty())
      health_thread_ = std::thread([this] { health_loop(); });
  }

  ~RegistryState() {
    {
      std::lock_guard<std::mutex> g(health_mu_);
      stopping_ = true;
    }
    health_cv_.notify_all();
    if (health_thread_.joinable()) health_thread_.join();
  }

  const RegistryConfig& config() const { return config_; }

  std::string blob_url(const std::string& blob_id) const {
    return std::string(plain_http_ ? "http" : "https") + "://" + config_.host + "/v2/" + config_.repo +
           "/blobs/sha256:" + blob_id;
  }

  // GET (with `range`) or HEAD of a blob, through redirects, auth, proxy
  // and mirrors. The caller reads the status.
  Result<HttpResponse> blob_request(const std::string& method, const std::string& blob_id,
                                    const std::string& range, std::span<uint8_t> sink,
                                    uint64_t offset) {
    HttpRequest req = base_request(method);
    if (!range.empty()) req.headers.push_back("Range: " + range);
    req.sink = sink;
    req.skip_on_200 = offset;

    if (std::string cached = cached_redirect(blob_id); !cached.empty()) {
      HttpRequest redirected = req;
      redirected.url = cached;
      auto res = send_via_proxy_or_direct(redirected, origin_counters_);
      if (!res.ok() || (res->status != 401 && res->status != 403)) return res;
      LOG_INFO("blob %s: the cached redirect answered %ld, asking the registry again", blob_id.c_str(),
               res->status);
      forget_redirect(blob_id);
    }

    req.url = blob_url(blob_id);
    auto res = send_with_auth(req);
    if (!res.ok() && config_.skip_verify && !plain_http_ &&
        res.status().message().find("TLS:") != std::string::npos) {
      LOG_WARN("registry %s: TLS handshake failed with skip_verify set, switching to plain http: %s",
               config_.host.c_str(), res.status().message().c_str());
      plain_http_ = true;
      req.url = blob_url(blob_id);
      res = send_with_auth(req);
    }
    if (!res.ok()) return res;
    if (res->status >= 300 && res->status < 400) {
      const std::string* location = res->header("location");
      if (!location || location->empty())
        return Status::io(method + " " + req.url + ": redirect " + std::to_string(res->status) +
                          " without a Location header");
      const std::string target = apply_redirect_overrides(*location);
      HttpRequest redirected = req;
      redirected.url = target;
      // The registry's credentials are not for the storage behind it
      // (pre-signed URLs reject a second Authorization).
      std::erase_if(redirected.headers, [](const std::string& h) { return h.rfind("Authorization:", 0) == 0; });
      auto followed = send_via_proxy_or_direct(redirected, origin_counters_);
      if (followed.ok() && followed->status < 300) remember_redirect(blob_id, target);
      return followed;
    }
    return res;
  }

  BackendMetrics& metrics() { return *metrics_; }

  // PUT /api/v1/config registry_auth: new credentials for the next
  // challenge. The cached header is dropped so the next request
  // authenticates afresh.
  void set_credentials(const std::string& auth) {
    std::lock_guard<std::mutex> g(auth_mu_);
    auth_ = auth;
    auth_header_.clear();
    bearer_.reset();
  }
  std::string credentials() const {
    std::lock_guard<std::mutex> g(auth_mu_);
    return auth_;
  }
  // The Authorization header value requests carry now (a token refreshed
  // when due); "" before the first challenge.
  std::string authorization() { return current_auth_header(); }

 private:
  HttpRequest base_request(const std::string& method) const {
    HttpRequest req;
    req.method = method;
    req.timeout = seconds(config_.timeout_secs);
    req.connect_timeout = seconds(config_.connect_timeout_secs);
    return req;
  }

  // --- authentication -------------------------------------------------

  std::string current_auth_header() {
    std::string challenge_kind;
    AuthChallenge challenge;
    {
      std::lock_guard<std::mutex> g(auth_mu_);
      if (!bearer_ || Clock::now() < refresh_at_) return auth_header_;
      challenge = *bearer_;
    }
    // Refresh ahead of expiry so requests never carry a stale token. A
    // failed refresh keeps the old header: the 401 path repairs it.
    auto token = fetch_token(challenge);
    std::lock_guard<std::mutex> g(auth_mu_);
    if (token.ok()) auth_header_ = "Bearer " + *token;
    else refresh_at_ = Clock::now() + seconds(5);
    return auth_header_;
  }

  void set_auth_header(const std::string& header) {
    std::lock_guard<std::mutex> g(auth_mu_);
    auth_header_ = header;
  }

  // Token from `challenge.realm` (POST form, then GET); sets refresh_at_.
  Result<std::string> fetch_token(const AuthChallenge& challenge) {
    const std::string params = "service=" + url_encode(challenge.service) +
                               "&scope=" + url_encode(challenge.scope) + "&client_id=" + kClientId;
    HttpRequest req = base_request("POST");
    req.url = challenge.realm;
    req.headers.push_back("Content-Type: application/x-www-form-urlencoded");
    if (const std::string auth = credentials(); !auth.empty()) req.headers.push_back("Authorization: Basic " + auth);
    req.body = params;
    Result<HttpResponse> res = Status::io("not sent");
    if (!token_via_get_.load()) {
      res = http_.perform(req);
      if (res.ok() && res->status != 200) {
        LOG_DEBUG("token POST to %s answered %ld; trying GET", challenge.realm.c_str(), res->status);
      }
    }
    if (!res.ok() || res->status != 200) {
      HttpRequest get = req;
      get.method = "GET";
      get.body.clear();
      get.headers.erase(get.headers.begin());  // no Content-Type on a GET
      get.url = challenge.realm + (challenge.realm.find('?') == std::string::npos ? "?" : "&") + params;
      res = http_.perform(get);
      if (res.ok() && res->status == 200 && !token_via_get_.exchange(true))
        LOG_INFO("token service %s: POST failed, using GET from now on", challenge.realm.c_str());
    }
    if (!res.ok()) return res.status().with_context("token request");
    if (res->status != 200)
      return Status::io("token service " + challenge.realm + " answered " + std::to_string(res->status) +
                        ": " + body_excerpt(res->body));
    nlohmann::json body = nlohmann::json::parse(res->body, nullptr, /*allow_exceptions=*/false);
    if (!body.is_object()) return Status::io("token service " + challenge.realm + ": answer is not JSON");
    std::string token;
    for (const char* key : {"token", "access_token"}) {
      auto it = body.find(key);
      if (it != body.end() && it->is_string() && !it->get<std::string>().empty()) {
        token = it->get<std::string>();
        break;
      }
    }
    if (token.empty()) return Status::io("token service " + challenge.realm + ": answer has no token");
    uint64_t ttl = kDefaultTokenTtlSecs;
    if (auto it = body.find("expires_in"); it != body.end() && it->is_number_unsigned())
      ttl = std::max<uint64_t>(1, it->get<uint64_t>());
    // Refresh a margin before expiry, but never sooner than half the
    // lifetime (short-lived tokens would otherwise be refreshed always).
    const uint64_t margin = std::min(kTokenRefreshMarginSecs, ttl / 2);
    std::lock_guard<std::mutex> g(auth_mu_);
    bearer_ = challenge;
    refresh_at_ = Clock::now() + seconds(ttl - margin);
    return token;
  }

  // Sends `req` with the cached credentials and handles a 401 challenge.
  Result<HttpResponse> send_with_auth(HttpRequest req) {
    const std::string cached = current_auth_header();
    HttpRequest first = req;
    if (!cached.empty()) first.headers.push_back("Authorization: " + cached);
    auto res = send_routed(first, !cached.empty());
    if (!res.ok() || res->status != 401) return res;
    if (!cached.empty()) {
      // An expired token can draw a challenge for the wrong scheme
      // (harbor answers Basic); ask again without it for the real one.
      res = send_routed(req, false);
      if (!res.ok() || res->status != 401) return res;
    }
    const std::string* www = res->header("www-authenticate");
    if (!www) return res;
    auto challenge = parse_www_authenticate(*www);
    if (!challenge.ok()) {
      LOG_WARN("registry %s: %s", config_.host.c_str(), challenge.status().message().c_str());
      return res;
    }
    std::string header;
    if (challenge->scheme == "Basic") {
      const std::string auth = credentials();
      if (auth.empty()) return res;
      header = "Basic " + auth;
    } else {
      NYDUS_ASSIGN(const std::string token, fetch_token(*challenge));
      header = "Bearer " + token;
    }
    HttpRequest again = req;
    again.headers.push_back("Authorization: " + header);
    res = send_routed(again, true);
    if (res.ok() && res->status < 400) set_auth_header(header);
    return res;
  }

  // --- routing: proxy, mirrors, origin -----------------------------------

  static bool final_answer(const Result<HttpResponse>& res) { return res.ok() && res->status < 500; }

  Result<HttpResponse> perform_counted(const HttpRequest& req, SourceCounters* counters) {
    const auto start = Clock::now();
    auto res = http_.perform(req);
    const auto took = Clock::now() - start;
    if (counters) {
      counters->requests.fetch_add(1, std::memory_order_relaxed);
      counters->latency_ms_total.fetch_add(
          static_cast<uint64_t>(std::chrono::duration_cast<milliseconds>(took).count()),
          std::memory_order_relaxed);
      if (!res.ok() || res->status >= 500) counters->errors.fetch_add(1, std::memory_order_relaxed);
      else counters->bytes.fetch_add(res->sink_bytes + res->body.size(), std::memory_order_relaxed);
    }
    return res;
  }

  // Proxy first (when configured), else direct.
  Result<HttpResponse> send_via_proxy_or_direct(const HttpRequest& req, SourceCounters* direct_counters) {
    if (!config_.proxy.url.empty()) {
      if (proxy_health_.healthy.load()) {
        HttpRequest via = req;
        via.proxy = config_.proxy.url;
        if (config_.proxy.use_http && via.url.rfind("https://", 0) == 0) via.url = "http://" + via.url.substr(8);
        auto res = perform_counted(via, proxy_counters_);
        if (final_answer(res) || !config_.proxy.fallback) return res;
        if (!res.ok() && !config_.proxy.ping_url.empty() && proxy_health_.healthy.exchange(false))
          LOG_WARN("proxy %s failed (%s); using the registry until %s answers", config_.proxy.url.c_str(),
                   res.status().message().c_str(), config_.proxy.ping_url.c_str());
      } else if (!config_.proxy.fallback) {
        return Status::io("proxy " + config_.proxy.url + " is unhealthy and proxy.fallback is false");
      }
    }
    return perform_counted(req, direct_counters);
  }

  Result<HttpResponse> send_routed(const HttpRequest& req, bool has_auth) {
    if (!config_.proxy.url.empty()) {
      // The proxy path ends in the origin itself when it falls back.
      return send_via_proxy_or_direct(req, origin_counters_);
    }
    const auto [origin, path] = split_origin(req.url);
    for (const auto& mirror : mirrors_) {
      if (!mirror->healthy.load()) continue;
      if (!has_auth && !mirror->config.auth_through) continue;
      HttpRequest via = req;
      via.url = mirror->base + path;
      for (const auto& [name, value] : mirror->config.headers) via.headers.push_back(name + ": " + value);
      auto res = perform_counted(via, mirror->counters);
      if (final_answer(res)) return res;
      if (!res.ok()) {
        const uint32_t failures = mirror->failures.fetch_add(1) + 1;
        LOG_DEBUG("mirror %s: %s (%u of %u failures)", mirror->base.c_str(), res.status().message().c_str(),
                  failures, mirror->config.failure_limit);
        if (failures >= mirror->config.failure_limit && mirror->healthy.exchange(false)) {
          LOG_WARN("mirror %s disabled after %u failures (last: %s); probing %s every %llu s",
                   mirror->base.c_str(), failures, res.status().message().c_str(), mirror->ping_url.c_str(),
                   static_cast<unsigned long long>(mirror->config.health_check_interval_secs));
          health_cv_.notify_all();
        }
      } else {
        LOG_DEBUG("mirror %s answered %ld; trying the next source", mirror->base.c_str(), res->status);
      }
    }
    return perform_counted(req, origin_counters_);
  }

  // --- redirects ------------------------------------------------------

  std::string apply_redirect_overrides(const std::string& location) const {
    if (config_.blob_url_scheme.empty() && config_.blob_redirected_host.empty()) return location;
    const size_t scheme_end = location.find("://");
    if (scheme_end == std::string::npos) return location;
    std::string scheme = location.substr(0, scheme_end);
    auto [origin, path] = split_origin(location);
    std::string authority = origin.substr(scheme_end + 3);
    if (!config_.blob_url_scheme.empty()) scheme = config_.blob_url_scheme;
    if (!config_.blob_redirected_host.empty()) authority = config_.blob_redirected_host;
    return scheme + "://" + authority + path;
  }

  std::string cached_redirect(const std::string& blob_id) {
    std::lock_guard<std::mutex> g(redirect_mu_);
    auto it = redirects_.find(blob_id);
    return it == redirects_.end() ? std::string() : it->second;
  }
  void remember_redirect(const std::string& blob_id, const std::string& url) {
    std::lock_guard<std::mutex> g(redirect_mu_);
    redirects_[blob_id] = url;
  }
  void forget_redirect(const std::string& blob_id) {
    std::lock_guard<std::mutex> g(redirect_mu_);
    redirects_.erase(blob_id);
  }

  // --- health probes ----------------------------------------------------

  bool probe(const std::string& url, bool need_2xx) {
    HttpRequest req = base_request("GET");
    req.url = url;
    req.timeout = seconds(std::max<uint32_t>(1, std::min<uint32_t>(config_.timeout_secs ? config_.timeout_secs : 5, 5)));
    auto res = http_.perform(req);
    if (!res.ok()) return false;
    return need_2xx ? (res->status >= 200 && res->status < 300) : res->status < 500;
  }

  void health_loop() {
    std::unique_lock<std::mutex> lock(health_mu_);
    while (!stopping_) {
      const auto now = Clock::now();
      for (const auto& mirror : mirrors_) {
        if (mirror->healthy.load() || now < mirror->next_probe) continue;
        mirror->next_probe = now + seconds(std::max<uint64_t>(1, mirror->config.health_check_interval_secs));
        lock.unlock();
        const bool up = probe(mirror->ping_url, false);
        lock.lock();
        if (up) {
          mirror->failures = 0;
          mirror->healthy = true;
          LOG_INFO("mirror %s is healthy again (%s answered)", mirror->base.c_str(), mirror->ping_url.c_str());
        }
      }
      if (!config_.proxy.ping_url.empty() && now >= proxy_health_.next_probe) {
        proxy_health_.next_probe = now + seconds(std::max<uint64_t>(1, config_.proxy.check_interval_secs));
        lock.unlock();
        const bool up = probe(config_.proxy.ping_url, true);
        lock.lock();
        if (up != proxy_health_.healthy.exchange(up))
          LOG_INFO("proxy %s is %s", config_.proxy.url.c_str(), up ? "healthy again" : "unhealthy");
      }
      health_cv_.wait_for(lock, milliseconds(250));
    }
  }

  const RegistryConfig config_;
  HttpClient http_;
  std::atomic<bool> plain_http_;
  BackendMetrics own_metrics_;
  BackendMetrics* const metrics_;
  SourceCounters* origin_counters_ = nullptr;
  SourceCounters* proxy_counters_ = nullptr;

  mutable std::mutex auth_mu_;
  std::string auth_;                        // base64(user:pass), replaceable at run time
  std::string auth_header_;                 // "Bearer …" / "Basic …" / ""
  std::optional<AuthChallenge> bearer_;     // the challenge to refresh the token with
  Clock::time_point refresh_at_{};
  std::atomic<bool> token_via_get_{false};

  std::mutex redirect_mu_;
  std::unordered_map<std::string, std::string> redirects_;

  std::vector<std::unique_ptr<Mirror>> mirrors_;
  ProxyHealth proxy_health_;
  std::mutex health_mu_;
  std::condition_variable health_cv_;
  bool stopping_ = false;
  std::thread health_thread_;
};

// "bytes 10-19/100" -> 10
std::optional<uint64_t> content_range_start(const std::string& value) {
  const size_t space = value.find(' ');
  const size_t dash = value.find('-');
  if (space == std::string::npos || dash == std::string::npos || dash < space) return std::nullopt;
  try {
    return std::stoull(value.substr(space + 1, dash - space - 1));
  } catch (...) {
    return std::nullopt;
  }
}

class RegistryReader final : public BlobReader {
 public:
  RegistryReader(std::shared_ptr<RegistryState> state, std::string blob_id)
      : state_(std::move(state)), blob_id_(std::move(blob_id)) {}

  Result<size_t> try_read(uint64_t offset, std::span<uint8_t> dst) override {
    if (dst.empty()) return size_t{0};
    return with_retries([&]() { return read_once(offset, dst); });
  }

  Result<uint64_t> size() override {
    std::lock_guard<std::mutex> g(size_mu_);
    if (size_) return *size_;
    NYDUS_ASSIGN(const uint64_t n, with_retries([&]() { return head_once(); }));
    size_ = n;
    return n;
  }

  std::string origin_authorization() override { return state_->authorization(); }

 private:
  std::string where() const {
    return "blob " + blob_id_ + " at " + state_->config().host + "/" + state_->config().repo;
  }

  template <typename Fn>
  auto with_retries(Fn attempt) -> decltype(attempt()) {
    const uint32_t limit = state_->config().retry_limit;
    milliseconds backoff(100);
    for (uint32_t i = 0;; ++i) {
      auto res = attempt();
      if (res.ok() || i >= limit) return res;
      const Code code = res.status().code();
      if (code != Code::kIo && code != Code::kTimeout) return res;
      LOG_DEBUG("%s: attempt %u failed, retrying in %lld ms: %s", where().c_str(), i + 1,
                static_cast<long long>(backoff.count()), res.status().message().c_str());
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, milliseconds(2000));
    }
  }

  Result<size_t> read_once(uint64_t offset, std::span<uint8_t> dst) {
    const uint64_t last = offset + dst.size() - 1;
    const std::string range = "bytes=" + std::to_string(offset) + "-" + std::to_string(last);
    const auto start = Clock::now();
    auto res = state_->blob_request("GET", blob_id_, range, dst, offset);
    BackendMetrics& m = state_->metrics();
    if (!res.ok()) {
      m.record_read(0, Clock::now() - start, false);
      return res.status().with_context(where());
    }
    const long status = res->status;
    if (status == 206 || status == 200) {
      if (status == 206) {
        const std::string* cr = res->header("content-range");
        auto first = cr ? content_range_start(*cr) : std::nullopt;
        if (!first || *first != offset) {
          m.record_read(0, Clock::now() - start, false);
          return Status::io(where() + ": asked for " + range + ", got Content-Range " + (cr ? *cr : "(none)"));
        }
      }
      m.record_read(res->sink_bytes, Clock::now() - start, true);
      // Fewer bytes than asked is a short read (end of blob, or a
      // truncated body); the caller's read_exact decides.
      if (res->sink_bytes == 0 && status == 206)
        return Status::io(where() + ": empty body for " + range);
      return res->sink_bytes;
    }
    m.record_read(0, Clock::now() - start, false);
    if (status == 416) return size_t{0};  // the range starts past the end
    if (status == 404) return Status::not_found(where() + ": not found (404)");
    return Status::io(where() + ": GET " + range + " answered " + std::to_string(status) + ": " +
                      body_excerpt(res->body));
  }

  Result<uint64_t> head_once() {
    auto res = state_->blob_request("HEAD", blob_id_, "", {}, 0);
    if (!res.ok()) return res.status().with_context(where());
    if (res->status == 404) return Status::not_found(where() + ": not found (404)");
    if (res->status != 200)
      return Status::io(where() + ": HEAD answered " + std::to_string(res->status));
    const std::string* length = res->header("content-length");
    if (!length) return Status::io(where() + ": HEAD answer has no Content-Length");
    try {
      return static_cast<uint64_t>(std::stoull(*length));
    } catch (...) {
      return Status::io(where() + ": bad Content-Length '" + *length + "'");
    }
  }

  const std::shared_ptr<RegistryState> state_;
  const std::string blob_id_;
  std::mutex size_mu_;
  std::optional<uint64_t> size_;
};

class RegistryBackend final : public BlobBackend {
 public:
  explicit RegistryBackend(std::shared_ptr<RegistryState> state) : state_(std::move(state)) {}

  Result<std::shared_ptr<BlobReader>> reader(const std::string& blob_id) override {
    NYDUS_TRY(check_blob_id(blob_id));
    std::lock_guard<std::mutex> g(mu_);
    auto& slot = readers_[blob_id];
    if (!slot) slot = std::make_shared<RegistryReader>(state_, blob_id);
    return slot;
  }

  std::string type() const override { return "registry"; }

  Status update_auth(const std::string& auth) override {
    state_->set_credentials(auth);
    return Status::Ok();
  }

 private:
  const std::shared_ptr<RegistryState> state_;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<BlobReader>> readers_;
};

bool valid_base_url(const std::string& url) {
  return (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) && url.size() > 8;
}

}  // namespace

Result<AuthChallenge> parse_www_authenticate(const std::string& header) {
  const size_t space = header.find(' ');
  AuthChallenge out;
  out.scheme = header.substr(0, space);
  if (out.scheme != "Basic" && out.scheme != "Bearer")
    return Status::unsupported("unsupported WWW-Authenticate scheme '" + out.scheme + "'");
  // key="value" pairs separated by commas; values may contain commas
  // (scope="repository:a:pull,push"), so parse quotes properly.
  size_t i = space == std::string::npos ? header.size() : space + 1;
  while (i < header.size()) {
    while (i < header.size() && (header[i] == ' ' || header[i] == ',')) ++i;
    const size_t eq = header.find('=', i);
    if (eq == std::string::npos) break;
    std::string key = header.substr(i, eq - i);
    std::string value;
    i = eq + 1;
    if (i < header.size() && header[i] == '"') {
      ++i;
      while (i < header.size() && header[i] != '"') {
        if (header[i] == '\\' && i + 1 < header.size()) ++i;
        value += header[i++];
      }
      ++i;  // closing quote
    } else {
      const size_t end = header.find(',', i);
      value = header.substr(i, end == std::string::npos ? std::string::npos : end - i);
      i = end == std::string::npos ? header.size() : end;
    }
    if (key == "realm") out.realm = value;
    else if (key == "service") out.service = value;
    else if (key == "scope") out.scope = value;
  }
  if (out.scheme == "Bearer" && (out.realm.empty() || out.service.empty()))
    return Status::invalid("Bearer challenge without realm or service: " + header);
  return out;
}

Result<std::unique_ptr<BlobBackend>> make_registry_backend(RegistryConfig config, BackendMetrics* metrics) {
  if (config.host.empty()) return Status::invalid("registry backend: host is required");
  if (config.repo.empty()) return Status::invalid("registry backend: repo is required");
  if (config.host.find('/') != std::string::npos)
    return Status::invalid("registry backend: host '" + config.host + "' must be host[:port] without a scheme");
  for (const auto& m : config.mirrors) {
    if (!valid_base_url(m.host))
      return Status::invalid("registry backend: mirror host '" + m.host + "' must be an http:// or https:// URL");
    if (!m.ping_url.empty() && !valid_base_url(m.ping_url))
      return Status::invalid("registry backend: mirror ping_url '" + m.ping_url + "' is not an http(s) URL");
  }
  if (!config.proxy.url.empty() && !valid_base_url(config.proxy.url))
    return Status::invalid("registry backend: proxy.url '" + config.proxy.url + "' is not an http(s) URL");
  if (!config.proxy.ping_url.empty() && !valid_base_url(config.proxy.ping_url))
    return Status::invalid("registry backend: proxy.ping_url '" + config.proxy.ping_url + "' is not an http(s) URL");
  if (!config.proxy.url.empty() && !config.mirrors.empty())
    LOG_WARN("registry backend: both proxy.url and mirrors are set; the proxy is used and the mirrors are not");
  auto state = std::make_shared<RegistryState>(std::move(config), metrics);
  return std::unique_ptr<BlobBackend>(new RegistryBackend(std::move(state)));
}

}  // namespace nydus::backend
