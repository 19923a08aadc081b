#include "backend/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace nydus::backend {
namespace {

// curl_global_init is not thread-safe and must run once per process before
// any other curl call; a function-local static gives exactly that.
void global_init_once() {
  static const bool done = [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return true;
  }();
  (void)done;
}

// Idle handles kept for reuse. A handle carries its own live connections
// too, so keeping a few avoids reconnecting even when the share's cache is
// busy; more than this many idle handles only cost memory.
constexpr size_t kMaxIdleHandles = 64;

using Clock = std::chrono::steady_clock;

struct Transfer {
  const HttpRequest* request;
  HttpResponse* response;
  CURL* handle;
  uint64_t to_skip = 0;
  bool status_known = false;
  bool headers_done = false;       // the blank line after the headers arrived
  bool consumer_refused = false;   // on_data returned false
  Clock::time_point last_progress{};  // last header or body byte
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  std::string line(data, n);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
  t->last_progress = Clock::now();
  if (line.empty()) {
    t->headers_done = true;
    return n;
  }
  if (line.rfind("HTTP/", 0) == 0) {
    // A new response (after a 100 Continue or through a proxy's CONNECT):
    // headers of the earlier one do not apply.
    t->response->headers.clear();
    return n;
  }
  const size_t colon = line.find(':');
  if (colon == std::string::npos) return n;
  std::string value = line.substr(colon + 1);
  const size_t first = value.find_first_not_of(" \t");
  value = first == std::string::npos ? "" : value.substr(first);
  t->response->headers[lower(line.substr(0, colon))] = value;
  return n;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  HttpResponse& r = *t->response;
  if (!t->status_known) {
    curl_easy_getinfo(t->handle, CURLINFO_RESPONSE_CODE, &r.status);
    t->status_known = true;
    if (r.status == 200 && !t->request->sink.empty()) t->to_skip = t->request->skip_on_200;
  }
  t->last_progress = Clock::now();
  if (t->request->on_data && r.status >= 200 && r.status < 300) {
    r.sink_bytes += n;
    if (!t->request->on_data(r.status, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), n))) {
      t->consumer_refused = true;
      return 0;  // aborts the transfer
    }
    return n;
  }
  const bool to_sink = !t->request->sink.empty() && r.status >= 200 && r.status < 300;
  const char* p = data;
  size_t left = n;
  if (to_sink) {
    const size_t skip = static_cast<size_t>(std::min<uint64_t>(t->to_skip, left));
    t->to_skip -= skip;
    p += skip;
    left -= skip;
    const std::span<uint8_t> sink = t->request->sink;
    const size_t room = sink.size() - r.sink_bytes;
    const size_t take = std::min(room, left);
    std::memcpy(sink.data() + r.sink_bytes, p, take);
    r.sink_bytes += take;
    if (take < left) {
      r.body_overflow = true;
      // The requested range is complete; the rest (a server ignoring
      // Range and sending the whole blob) is not needed. Returning a short
      // count aborts the transfer, which perform() treats as success.
      return r.sink_bytes == sink.size() ? 0 : n;
    }
    return n;
  }
  const size_t room = t->request->max_body_bytes - std::min(t->request->max_body_bytes, r.body.size());
  const size_t take = std::min(room, left);
  r.body.append(p, take);
  if (take < left) r.body_overflow = true;
  return n;
}

}  // namespace

// Appends the file's bytes to *out; false when it cannot be read.
static bool append_file(const std::string& path, std::string* out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char buf[8192];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
  std::fclose(f);
  out->push_back('\n');
  return true;
}

struct HttpClient::Shared {
  TlsOptions tls;
  // libcurl takes one CA source per handle; with extra CA files we pass
  // them together with the system bundle as one in-memory PEM, read once.
  std::string ca_blob;
  std::string ca_error;  // set when a ca_cert_files entry cannot be read
  CURLSH* share = nullptr;
  // One mutex per curl_lock_data kind, as curl's docs recommend.
  std::mutex locks[CURL_LOCK_DATA_LAST];
  std::mutex pool_mu;
  std::vector<CURL*> idle;

  static void lock(CURL*, curl_lock_data data, curl_lock_access, void* user) {
    static_cast<Shared*>(user)->locks[data].lock();
  }
  static void unlock(CURL*, curl_lock_data data, void* user) {
    static_cast<Shared*>(user)->locks[data].unlock();
  }

  CURL* take() {
    {
      std::lock_guard<std::mutex> g(pool_mu);
      if (!idle.empty()) {
        CURL* h = idle.back();
        idle.pop_back();
        curl_easy_reset(h);  // keeps live connections and caches
        return h;
      }
    }
    return curl_easy_init();
  }

  void give_back(CURL* h) {
    {
      std::lock_guard<std::mutex> g(pool_mu);
      if (idle.size() < kMaxIdleHandles) {
        idle.push_back(h);
        return;
      }
    }
    curl_easy_cleanup(h);
  }
};

HttpClient::HttpClient(TlsOptions tls) : shared_(std::make_unique<Shared>()) {
  global_init_once();
  shared_->tls = std::move(tls);
  for (const std::string& path : shared_->tls.ca_files) {
    if (!append_file(path, &shared_->ca_blob)) {
      shared_->ca_error = "cannot read ca_cert_files entry " + path + ": " + std::strerror(errno);
      break;
    }
  }
  if (!shared_->ca_blob.empty()) append_file("/etc/ssl/certs/ca-certificates.crt", &shared_->ca_blob);
  shared_->share = curl_share_init();
  curl_share_setopt(shared_->share, CURLSHOPT_LOCKFUNC, &Shared::lock);
  curl_share_setopt(shared_->share, CURLSHOPT_UNLOCKFUNC, &Shared::unlock);
  curl_share_setopt(shared_->share, CURLSHOPT_USERDATA, shared_.get());
  curl_share_setopt(shared_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(shared_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_share_setopt(shared_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
}

HttpClient::~HttpClient() {
  for (CURL* h : shared_->idle) curl_easy_cleanup(h);
  curl_share_cleanup(shared_->share);
}

namespace {

// Our own code for "a first-byte or stall deadline passed" (outside curl's
// range of codes).
constexpr CURLcode kDeadlineMissed = static_cast<CURLcode>(10000);

// curl_easy_perform's loop, run by hand on a private multi handle so that
// the header and stall deadlines are checked every few milliseconds (curl's
// progress callback may be called only once a second while idle). The
// handle keeps using the client's share, so connections are still reused.
CURLcode perform_with_deadlines(CURL* h, Transfer& t) {
  constexpr int kPollMs = 5;
  CURLM* multi = curl_multi_init();
  if (!multi) return CURLE_OUT_OF_MEMORY;
  curl_multi_add_handle(multi, h);
  const Clock::time_point start = Clock::now();
  t.last_progress = start;
  CURLcode result = CURLE_OK;
  for (;;) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(multi, &running);
    if (mc != CURLM_OK) {
      result = CURLE_RECV_ERROR;
      break;
    }
    if (running == 0) {
      int left = 0;
      result = CURLE_RECV_ERROR;
      while (CURLMsg* msg = curl_multi_info_read(multi, &left))
        if (msg->msg == CURLMSG_DONE) result = msg->data.result;
      break;
    }
    const Clock::time_point now = Clock::now();
    if (!t.headers_done && t.request->first_byte_timeout.count() > 0 &&
        now - start > t.request->first_byte_timeout) {
      result = kDeadlineMissed;
      break;
    }
    if (t.headers_done && t.request->stall_timeout.count() > 0 && now - t.last_progress > t.request->stall_timeout) {
      result = kDeadlineMissed;
      break;
    }
    curl_multi_poll(multi, nullptr, 0, kPollMs, nullptr);
  }
  curl_multi_remove_handle(multi, h);
  curl_multi_cleanup(multi);
  return result;
}

}  // namespace

Result<HttpResponse> HttpClient::perform(const HttpRequest& request) {
  constexpr auto kPause = std::chrono::milliseconds(10);
  const auto give_up = std::chrono::steady_clock::now() + request.refused_retry;
  for (;;) {
    bool refused = false;
    auto result = perform_once(request, &refused);
    if (result.ok() || !refused || std::chrono::steady_clock::now() + kPause > give_up) return result;
    std::this_thread::sleep_for(kPause);
  }
}

Result<HttpResponse> HttpClient::perform_once(const HttpRequest& request, bool* refused) {
  CURL* h = shared_->take();
  if (!h) return Status::io("cannot create a curl handle for " + request.url);
  HttpResponse response;
  Transfer transfer{&request, &response, h};
  char error[CURL_ERROR_SIZE] = {0};

  curl_easy_setopt(h, CURLOPT_SHARE, shared_->share);
  curl_easy_setopt(h, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);  // threads: no SIGALRM for DNS timeouts
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(h, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
  curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "nydusd (nydus-p2p)");
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  // Identity encoding only: byte ranges of compressed blobs must arrive as
  // stored.
  curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, nullptr);
  if (request.timeout.count() > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(request.timeout.count()));
  if (request.connect_timeout.count() > 0)
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(request.connect_timeout.count()));
  // An explicit empty proxy also stops curl from picking one up from the
  // environment (http_proxy): the config alone decides the route.
  curl_easy_setopt(h, CURLOPT_PROXY, request.proxy.c_str());
  if (shared_->tls.skip_verify) {
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (!shared_->tls.private_ca.empty()) {
    curl_easy_setopt(h, CURLOPT_CAINFO, shared_->tls.private_ca.c_str());
    curl_easy_setopt(h, CURLOPT_CAPATH, nullptr);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
#if LIBCURL_VERSION_NUM >= 0x075700  // 7.87: the CA store is cached for a day unless told not to
    curl_easy_setopt(h, CURLOPT_CA_CACHE_TIMEOUT, 0L);
#endif
  }
  if (!shared_->tls.client_cert.empty()) {
    curl_easy_setopt(h, CURLOPT_SSLCERT, shared_->tls.client_cert.c_str());
    curl_easy_setopt(h, CURLOPT_SSLKEY, shared_->tls.client_key.c_str());
  }
  if (!shared_->ca_error.empty()) {
    shared_->give_back(h);
    return Status::io(shared_->ca_error);
  }
  if (!shared_->ca_blob.empty()) {
    curl_blob blob{shared_->ca_blob.data(), shared_->ca_blob.size(), CURL_BLOB_NOCOPY};
    curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &blob);
  }

  if (request.method == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (request.method == "POST") {
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, request.body.data());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
  } else if (request.method != "GET") {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  curl_slist* headers = nullptr;
  for (const std::string& header : request.headers) headers = curl_slist_append(headers, header.c_str());
  // curl adds "Expect: 100-continue" to large POSTs; token servers do not
  // need the extra round trip.
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);

  const bool deadlines = request.first_byte_timeout.count() > 0 || request.stall_timeout.count() > 0;
  CURLcode rc = deadlines ? perform_with_deadlines(h, transfer) : curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &response.status);
  curl_slist_free_all(headers);
  // Aborted by on_body after the sink filled: the range is complete.
  if (rc == CURLE_WRITE_ERROR && response.body_overflow && response.sink_bytes == request.sink.size())
    rc = CURLE_OK;
  // Keep the handle only after a clean transfer; a failed one may hold a
  // connection in an unknown state.
  if (rc == CURLE_OK) shared_->give_back(h);
  else curl_easy_cleanup(h);
  if (transfer.consumer_refused) return Status::io(request.method + " " + request.url + ": body refused by its consumer");
  if (rc != CURLE_OK) {
    *refused = rc == CURLE_COULDNT_CONNECT;
    std::string reason = error[0] ? error : curl_easy_strerror(rc);
    if (rc == kDeadlineMissed) {
      return Status::timeout(request.method + " " + request.url + ": " +
                             (transfer.headers_done ? "body stalled for more than " +
                                                          std::to_string(request.stall_timeout.count()) + " ms"
                                                    : "no response within " +
                                                          std::to_string(request.first_byte_timeout.count()) + " ms"));
    }
    std::string msg = request.method + " " + request.url + ": " + reason;
    if (rc == CURLE_OPERATION_TIMEDOUT) return Status::timeout(msg);
    if (rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION ||
        rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_SSL_CERTPROBLEM)
      return Status::io("TLS: " + msg);
    return Status::io(msg);
  }
  return response;
}

std::string url_encode(const std::string& value) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : value) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string base64_encode(const std::string& bytes) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == bytes.size()) {
    const uint32_t v = uint8_t(bytes[i]) << 16;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

}  // namespace nydus::backend
