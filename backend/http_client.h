// HttpClient: one HTTP request at a time per call, over libcurl, with
// connections, DNS answers and TLS sessions shared between calls.
//
// The registry backend builds its auth, mirror, proxy and redirect logic on
// perform(); this layer knows nothing of registries. Redirects are never
// followed here (the registry backend follows them by hand so that it can
// cache them per blob and drop the Authorization header on the way).
//
// Connection reuse: finished easy handles go back to a pool (curl keeps a
// handle's live connections across curl_easy_reset), and all handles share
// one connection cache, DNS cache and TLS session cache through a CURLSH.
// HTTP/2 is negotiated over TLS where the server offers it; plain HTTP
// stays HTTP/1.1 with keep-alive.
//
// Thread-safety: perform() may be called from any number of threads at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace nydus::backend {

struct TlsOptions {
  bool skip_verify = false;             // no certificate or host name checks
  std::vector<std::string> ca_files;    // extra CA bundles (PEM), added to the system's
  // A private PKI (the P2P peer port's mutual TLS): servers are checked
  // against this CA bundle only, not the system's, and not by host name
  // (peers are addressed by IP); `client_cert`/`client_key` (PEM) are
  // presented. All three files are read again for each new connection, so
  // rotated files take effect without a restart.
  std::string private_ca;
  std::string client_cert;
  std::string client_key;
};

struct HttpRequest {
  std::string method = "GET";           // GET, HEAD or POST
  std::string url;
  std::vector<std::string> headers;     // "Name: value"
  std::string body;                     // POST body (sent as is)
  std::string proxy;                    // forward-proxy URL, "" = direct
  std::chrono::milliseconds timeout{0};          // whole request; 0 = none
  std::chrono::milliseconds connect_timeout{0};  // 0 = curl's default
  // Where a 2xx body goes. Empty: into HttpResponse::body, at most
  // max_body_bytes. Set: bytes are written into it in order; a 200 answer to
  // a ranged request (a server that ignores Range) first has `skip_on_200`
  // bytes discarded, so the sink still receives the requested range.
  std::span<uint8_t> sink;
  uint64_t skip_on_200 = 0;
  size_t max_body_bytes = 1 << 20;
  // Streaming alternative to `sink`: every piece of a 2xx body is handed to
  // it as it arrives, with the response status (nothing is skipped on a
  // 200); returning false aborts the transfer with kIo. Takes precedence
  // over `sink`.
  std::function<bool(long status, std::span<const uint8_t>)> on_data;
  // Deadlines checked every few milliseconds while waiting (0 = none): the
  // response's status line and headers must have arrived within
  // `first_byte_timeout` of the start, and the body may not pause for longer
  // than `stall_timeout`. Either one passing is kTimeout. These let a caller
  // give up on a stalled server quickly without bounding a transfer that is
  // making progress.
  std::chrono::milliseconds first_byte_timeout{0};
  std::chrono::milliseconds stall_timeout{0};
  // A refused connection (nothing listens on the port yet: a peer daemon
  // still starting) is tried again every 10 ms until this long after the
  // first attempt; 0 = fail at once.
  std::chrono::milliseconds refused_retry{0};
};

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // lower-case names; last value wins
  std::string body;                            // non-2xx bodies, or 2xx without a sink
  size_t sink_bytes = 0;                       // bytes written into the request's sink
  bool body_overflow = false;                  // more body than sink/max_body_bytes held

  const std::string* header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? nullptr : &it->second;
  }
};

class HttpClient {
 public:
  explicit HttpClient(TlsOptions tls);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends the request and waits for the whole answer. Any HTTP status is a
  // successful Result; transport failures are errors: kTimeout when a
  // timeout passed, kIo otherwise, the message naming the URL and curl's
  // reason. A TLS handshake failure carries "TLS:" in its message.
  Result<HttpResponse> perform(const HttpRequest& request);

 private:
  // One attempt; *refused says the connection was refused (curl's
  // COULDNT_CONNECT), so nothing was sent.
  Result<HttpResponse> perform_once(const HttpRequest& request, bool* refused);

  struct Shared;
  std::unique_ptr<Shared> shared_;
};

// "a%2Fb" style escaping of one form value or query parameter.
std::string url_encode(const std::string& value);

// Base64 of `bytes` (standard alphabet, padded).
std::string base64_encode(const std::string& bytes);

}  // namespace nydus::backend
