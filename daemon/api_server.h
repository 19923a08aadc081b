// ApiServer: the HTTP transport of the nydusd admin API (nydusd-contract.md
// §3.1) on an AF_UNIX SOCK_STREAM socket, built on libmicrohttpd (MHD).
//
// What a client sees:
// - HTTP/1.0 and 1.1, keep-alive, any number of concurrent connections up
//   to ApiServerOptions::max_connections. Idle connections are NEVER closed
//   by the server (MHD connection timeout 0): the snapshotter's liveness
//   probe connects, sends nothing, and treats a hang-up as daemon death.
// - Routing is on (method, exact path): no trailing-slash tolerance, no
//   decoding of the path. An absolute-form target ("http://unix/api/v1/x")
//   is reduced to its path. Unknown path: 404 `NoRoute`. Known path with a
//   method that has no route: 400 `BadRequest`. A target that is not a path:
//   400 `BadRequest`.
// - The query string is form-url-decoded ('+' is a space, %XX a byte;
//   `mountpoint=%2F42` gives "/42"); with repeated keys the first one wins.
// - A body is "present" only when it has at least one byte: `Content-Length:
//   0` (or an empty chunked body) is no body. Routes declare a BodyRule: a
//   kNone route answers 400 `BadRequest` to a non-empty body, a kRequired
//   route answers 400 `BadRequest` to a missing one (upstream's
//   `(Method::Put, None) => BadRequest`).
// - Body limit (max_body_bytes, 1 MiB by default): a larger Content-Length
//   is answered at once with 400 `SizeLimitExceeded(<limit>, <size>)` without
//   reading the body, and the connection is closed after the reply (MHD
//   cannot resync without reading the body). A chunked body that grows past
//   the limit is read and discarded (never buffered), then answered the same
//   way on the same connection. Upstream's server is dbs-uhttp, a fork of
//   firecracker's micro-http; micro-http answers 400 here too, with a
//   51200-byte limit (MAX_PAYLOAD_SIZE, src/server.rs; dbs-uhttp's own
//   value was not checked). We allow more because a POST /mount carries a
//   whole config and upstream's ConfigV2 accepts 1 MiB.
// - Every response built here has `Content-Type: application/json` and
//   `Server: Nydus API`. Success is whatever the handler returns (200 with a
//   JSON body, 204 without); errors have the body
//   {"code":"UNDEFINED","message":"<message>"}. Requests MHD cannot parse
//   never reach us: for a malformed header line or an unsupported HTTP
//   version (2.0) MHD itself answers 400/505 with an HTML body and closes;
//   for a request line without a version it just closes. Upstream's
//   micro-http likewise answers its parse errors with its own body.
//
// Threads: one MHD polling thread (epoll, else poll) does all socket I/O
// and parsing, and answers transport errors itself. Requests that reach a
// handler are handed, suspended, to `handler_threads` worker threads (1 by
// default, as upstream runs one API worker); the polling thread keeps
// reading and answering other connections meanwhile, so a slow handler
// (sendfd/takeover may wait 10 s for the supervisor) only delays the
// requests queued behind it, never accepts, reads, 404s or idle probes.
// With handler_threads == 1 handlers never run concurrently with each other.
// Not thread-per-connection (each idle probe would cost a thread) and not
// MHD's polling-thread pool running handlers inline (a slow handler would
// stall every connection of its polling thread).
// A handler exception never reaches MHD: it is logged and answered 500
// `Internal("<what>")`.
//
// Lifetime: add_route() before start(); start() once; stop() (also run by
// the destructor) is idempotent. The object must outlive the server threads,
// which stop() joins. All methods are called from one controlling thread,
// never from inside a handler.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace nydus::daemon {

// One request as a handler sees it. Plain value; owned by the server for the
// duration of the handler call.
struct ApiRequest {
  std::string method;  // as sent: "GET", "PUT", ...
  std::string path;    // exact path, query removed, not percent-decoded
  std::vector<std::pair<std::string, std::string>> query;  // decoded, in order
  std::string body;    // empty means "no body"

  // The decoded value of the first `key` in the query string.
  std::optional<std::string> query_value(std::string_view key) const;
  bool has_body() const { return !body.empty(); }
};

struct ApiResponse {
  int status = 204;
  std::string body;  // JSON text; empty for 204
  // Every upstream endpoint answers JSON; only the Prometheus exposition
  // (our addition) sets another type.
  std::string content_type = "application/json";

  static ApiResponse json(std::string json_text) { return {200, std::move(json_text)}; }
  static ApiResponse no_content() { return {204, {}}; }
  static ApiResponse prometheus(std::string text) {
    return {200, std::move(text), "text/plain; version=0.0.4; charset=utf-8"};
  }
  // An upstream-shaped error: `status` with the body
  // {"code":"UNDEFINED","message":<message, JSON-escaped>}. Invalid UTF-8
  // in `message` is replaced, never thrown about.
  static ApiResponse error(int status, std::string_view message);
};

enum class BodyRule {
  kNone,      // a non-empty body is answered 400 BadRequest
  kRequired,  // a missing (empty) body is answered 400 BadRequest
  kOptional,  // the handler decides
};

using ApiHandler = std::function<ApiResponse(const ApiRequest&)>;

struct ApiServerOptions {
  std::string socket_path;
  size_t max_body_bytes = 1 << 20;
  // MHD's own default is FD_SETSIZE-4 (1020); when it is reached MHD stops
  // accepting, which a liveness probe would see as a hang. Each connection
  // needs one fd (see RLIMIT_NOFILE) and reserves up to 32 KiB of buffer.
  unsigned max_connections = 16384;
  unsigned handler_threads = 1;  // 0 is taken as 1
  // stop() first stops accepting, then waits this long for requests already
  // being handled to be answered (the reply to PUT /daemon/exit must reach
  // the snapshotter although the exit triggers the stop).
  std::chrono::milliseconds drain_timeout{1000};
  // Nice value the server's threads (MHD's polling thread and the handler
  // workers) run at, relative to the thread calling start(): negative =
  // scheduled ahead of the FUSE workers, so that the snapshotter's polls
  // are answered promptly while reads saturate the CPUs. Lowering a nice
  // value needs CAP_SYS_NICE; without it the threads run at the caller's
  // priority (logged at debug level).
  int nice_adjustment = 0;
};

class ApiServer {
 public:
  explicit ApiServer(ApiServerOptions options);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Registers `handler` for (method, path). Fails (kInvalidInput) after
  // start() or for a duplicate (method, path).
  Status add_route(std::string method, std::string path, BodyRule body, ApiHandler handler);

  // Removes any existing file at socket_path (as upstream does; the caller
  // must have done its crash check before), binds and listens, and starts
  // the threads. On failure nothing is left running and no socket exists.
  Status start();

  // Stops accepting, drains in-flight replies (drain_timeout), answers
  // requests still queued for a handler with 503 `ShuttingDown`, waits for
  // a running handler to return, closes every connection, joins all threads
  // and removes the socket file if it is still the one we created.
  void stop();

  bool running() const;
  const std::string& socket_path() const;

  class Impl;  // public only so the MHD callbacks can name it

 private:
  std::unique_ptr<Impl> impl_;
};

// Rust's `{:?}` of a string: quoted, with \" \\ \n \r \t \0 and \u{..}
// escapes. Upstream's error messages embed strings this way, e.g.
// `QueryString("'mountpoint' should be specified in query string")`.
std::string rust_debug_string(std::string_view text);

}  // namespace nydus::daemon
