#include "daemon/api_server.h"

#include <fcntl.h>
#include <microhttpd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/log.h"

namespace nydus::daemon {
namespace {

struct Route {
  BodyRule body;
  ApiHandler handler;
};

// Per-request state, created by the URI-log callback when MHD has read the
// request line and deleted by the completed callback. Touched by the MHD
// thread, and by one worker while the connection is suspended; MHD's resume
// mutex orders the worker's writes before the MHD thread's reads.
struct RequestContext {
  std::string target;  // raw request-target, as sent
  std::chrono::steady_clock::time_point begin = std::chrono::steady_clock::now();
  bool headers_seen = false;
  bool too_large = false;
  uint64_t body_bytes = 0;  // every body byte received, including discarded ones
  bool counted = false;     // counted in Impl::inflight_
  bool ready = false;       // `response` is the reply to queue
  MHD_Connection* conn = nullptr;
  const Route* route = nullptr;
  ApiRequest request;
  ApiResponse response;
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// application/x-www-form-urlencoded decoding, like Rust's form_urlencoded
// (what upstream's url::query_pairs uses): '+' is a space, %XX a byte, a
// malformed escape stays as written.
std::string form_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%' && i + 2 < in.size() && hex_value(in[i + 1]) >= 0 && hex_value(in[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(in[i + 1]) * 16 + hex_value(in[i + 2]));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> parse_query(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view piece = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (piece.empty()) continue;
    size_t eq = piece.find('=');
    if (eq == std::string_view::npos) out.emplace_back(form_decode(piece), std::string());
    else out.emplace_back(form_decode(piece.substr(0, eq)), form_decode(piece.substr(eq + 1)));
  }
  return out;
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  return true;
}

// Splits a request-target into path and decoded query. Accepts origin form
// ("/p?q") and absolute form ("http://host/p?q"); anything else is false.
bool parse_target(std::string_view target, ApiRequest* req) {
  if (size_t hash = target.find('#'); hash != std::string_view::npos) target = target.substr(0, hash);
  for (std::string_view scheme : {"http://", "https://"}) {
    if (starts_with_nocase(target, scheme)) {
      size_t slash = target.find('/', scheme.size());
      target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
      break;
    }
  }
  if (target.empty() || target[0] != '/') return false;
  size_t q = target.find('?');
  req->path = std::string(target.substr(0, q));
  req->query = q == std::string_view::npos ? decltype(req->query)() : parse_query(target.substr(q + 1));
  return true;
}

// A handler reply made safe to hand to MHD.
void sanitize(ApiResponse* r) {
  if (r->status < 100 || r->status > 999) {
    LOG_ERROR("api: handler returned HTTP status %d; answering 500", r->status);
    *r = ApiResponse::error(500, "Internal(\"invalid status code\")");
  }
  if (r->status < 200 || r->status == 204 || r->status == 304) r->body.clear();
}

ApiResponse shutting_down() { return ApiResponse::error(503, "ShuttingDown"); }

void mhd_logger(void*, const char* fmt, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  size_t n = std::strlen(buf);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
  LOG_INFO("api: microhttpd: %s", buf);
}

}  // namespace

std::optional<std::string> ApiRequest::query_value(std::string_view key) const {
  for (const auto& [k, v] : query)
    if (k == key) return v;
  return std::nullopt;
}

ApiResponse ApiResponse::error(int status, std::string_view message) {
  nlohmann::ordered_json body;
  body["code"] = "UNDEFINED";
  body["message"] = std::string(message);
  return {status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

std::string rust_debug_string(std::string_view text) {
  std::string out = "\"";
  for (char ch : text) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\0': out += "\\0"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char esc[12];
          std::snprintf(esc, sizeof esc, "\\u{%x}", c);
          out += esc;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

class ApiServer::Impl {
 public:
  explicit Impl(ApiServerOptions options) : opts_(std::move(options)) {}

  Status add_route(std::string method, std::string path, BodyRule body, ApiHandler handler) {
    if (mhd_ != nullptr) return Status::invalid("api: add_route after start: " + method + " " + path);
    auto& by_method = routes_[path];
    if (by_method.count(method)) return Status::invalid("api: duplicate route " + method + " " + path);
    by_method[method] = Route{body, std::move(handler)};
    return Status::Ok();
  }

  Status start();
  void stop();
  bool running() const { return mhd_ != nullptr; }
  const std::string& socket_path() const { return opts_.socket_path; }

  // MHD callbacks (MHD thread only).
  static void* on_uri(void* cls, const char* uri, MHD_Connection* conn) noexcept;
  static MHD_Result on_access(void* cls, MHD_Connection* conn, const char* url, const char* method,
                              const char* version, const char* upload_data, size_t* upload_data_size,
                              void** con_cls) noexcept;
  static void on_completed(void* cls, MHD_Connection* conn, void** con_cls,
                           MHD_RequestTerminationCode toe) noexcept;

 private:
  MHD_Result access(MHD_Connection* conn, const char* method, const char* upload_data, size_t* upload_data_size,
                    RequestContext* ctx);
  // Decides the reply of a fully received request, or hands it to a worker.
  MHD_Result finish(MHD_Connection* conn, RequestContext* ctx);
  MHD_Result reply(MHD_Connection* conn, RequestContext* ctx, ApiResponse response);
  void count_inflight(RequestContext* ctx);
  void worker_loop();
  ApiResponse invoke(const RequestContext& ctx);
  bool on_worker_thread() const;

  const ApiServerOptions opts_;
  std::map<std::string, std::map<std::string, Route>> routes_;  // path → method; constant after start
  MHD_Daemon* mhd_ = nullptr;
  int quiesced_fd_ = -1;  // the listen fd once MHD_quiesce_daemon handed it back
  dev_t sock_dev_ = 0;
  ino_t sock_ino_ = 0;

  std::mutex mu_;
  std::condition_variable work_cv_;   // workers wait for queue_/stopping_
  std::condition_variable drain_cv_;  // stop() waits for inflight_ == 0
  std::deque<RequestContext*> queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;              // GUARDED_BY(mu_)
  size_t inflight_ = 0;                // GUARDED_BY(mu_): answered or dispatched, not yet completed
  std::vector<std::thread> workers_;
};

void* ApiServer::Impl::on_uri(void*, const char* uri, MHD_Connection*) noexcept {
  try {
    auto* ctx = new RequestContext;
    ctx->target = uri ? uri : "";
    return ctx;
  } catch (...) {
    return nullptr;  // on_access creates one (or fails the connection)
  }
}

MHD_Result ApiServer::Impl::on_access(void* cls, MHD_Connection* conn, const char* url, const char* method,
                                      const char*, const char* upload_data, size_t* upload_data_size,
                                      void** con_cls) noexcept {
  auto* self = static_cast<Impl*>(cls);
  try {
    auto* ctx = static_cast<RequestContext*>(*con_cls);
    if (ctx == nullptr) {
      ctx = new RequestContext;
      ctx->target = url ? url : "";
      *con_cls = ctx;
    }
    return self->access(conn, method, upload_data, upload_data_size, ctx);
  } catch (const std::exception& e) {
    LOG_ERROR("api: dropping connection: %s", e.what());
  } catch (...) {
    LOG_ERROR("api: dropping connection: unknown exception");
  }
  return MHD_NO;  // MHD closes the connection
}

void ApiServer::Impl::on_completed(void* cls, MHD_Connection*, void** con_cls,
                                   MHD_RequestTerminationCode toe) noexcept {
  auto* self = static_cast<Impl*>(cls);
  auto* ctx = static_cast<RequestContext*>(*con_cls);
  *con_cls = nullptr;
  if (ctx == nullptr) return;
  if (ctx->counted) {
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
      LOG_DEBUG("api: %s %s: reply not delivered (termination %d)", ctx->request.method.c_str(),
                ctx->target.c_str(), static_cast<int>(toe));
    std::lock_guard<std::mutex> lock(self->mu_);
    if (--self->inflight_ == 0) self->drain_cv_.notify_all();
  }
  delete ctx;
}

void ApiServer::Impl::count_inflight(RequestContext* ctx) {
  if (ctx->counted) return;
  ctx->counted = true;
  std::lock_guard<std::mutex> lock(mu_);
  ++inflight_;
}

MHD_Result ApiServer::Impl::access(MHD_Connection* conn, const char* method, const char* upload_data,
                                   size_t* upload_data_size, RequestContext* ctx) {
  if (ctx->ready) return reply(conn, ctx, std::move(ctx->response));  // back from a worker

  if (!ctx->headers_seen) {
    // First call: headers are in, no body byte has been read yet.
    ctx->headers_seen = true;
    ctx->request.method = method ? method : "";
    LOG_DEBUG("api: <--- %s %s", ctx->request.method.c_str(), ctx->target.c_str());
    const char* length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length != nullptr) {
      errno = 0;
      char* end = nullptr;
      unsigned long long n = std::strtoull(length, &end, 10);
      if (errno == 0 && end != length && n > opts_.max_body_bytes) {
        // Answered before the body is read; MHD then closes the connection.
        return reply(conn, ctx,
                     ApiResponse::error(400, "SizeLimitExceeded(" + std::to_string(opts_.max_body_bytes) +
                                                 ", " + std::to_string(n) + ")"));
      }
    }
    return MHD_YES;  // MHD sends "100 Continue" if the client asked for it
  }

  if (*upload_data_size != 0) {
    size_t n = *upload_data_size;
    ctx->body_bytes += n;
    if (!ctx->too_large) {
      if (ctx->request.body.size() + n > opts_.max_body_bytes) {
        // Chunked body past the limit: keep reading it, keep nothing.
        ctx->too_large = true;
        std::string().swap(ctx->request.body);
      } else {
        ctx->request.body.append(upload_data, n);
      }
    }
    *upload_data_size = 0;
    return MHD_YES;
  }
  return finish(conn, ctx);
}

MHD_Result ApiServer::Impl::finish(MHD_Connection* conn, RequestContext* ctx) {
  if (ctx->too_large) {
    return reply(conn, ctx,
                 ApiResponse::error(400, "SizeLimitExceeded(" + std::to_string(opts_.max_body_bytes) + ", " +
                                             std::to_string(ctx->body_bytes) + ")"));
  }
  if (!parse_target(ctx->target, &ctx->request)) return reply(conn, ctx, ApiResponse::error(400, "BadRequest"));
  auto path_it = routes_.find(ctx->request.path);
  if (path_it == routes_.end()) return reply(conn, ctx, ApiResponse::error(404, "NoRoute"));
  auto method_it = path_it->second.find(ctx->request.method);
  if (method_it == path_it->second.end()) return reply(conn, ctx, ApiResponse::error(400, "BadRequest"));
  const Route& route = method_it->second;
  if ((route.body == BodyRule::kNone && ctx->request.has_body()) ||
      (route.body == BodyRule::kRequired && !ctx->request.has_body()))
    return reply(conn, ctx, ApiResponse::error(400, "BadRequest"));

  ctx->route = &route;
  ctx->conn = conn;
  count_inflight(ctx);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      // Suspend before queueing: the worker may resume it at once.
      MHD_suspend_connection(conn);
      queue_.push_back(ctx);
      work_cv_.notify_one();
      return MHD_YES;
    }
  }
  return reply(conn, ctx, shutting_down());
}

MHD_Result ApiServer::Impl::reply(MHD_Connection* conn, RequestContext* ctx, ApiResponse response) {
  count_inflight(ctx);
  auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - ctx->begin);
  LOG_DEBUG("api: ---> %s %s: %d, %lld us, %zu bytes", ctx->request.method.c_str(), ctx->target.c_str(),
            response.status, static_cast<long long>(elapsed.count()), response.body.size());
  MHD_Response* r = MHD_create_response_from_buffer(response.body.size(), response.body.data(),
                                                    MHD_RESPMEM_MUST_COPY);
  if (r == nullptr) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, response.content_type.c_str());
  MHD_add_response_header(r, MHD_HTTP_HEADER_SERVER, "Nydus API");
  MHD_Result ret = MHD_queue_response(conn, static_cast<unsigned>(response.status), r);
  MHD_destroy_response(r);
  return ret;
}

ApiResponse ApiServer::Impl::invoke(const RequestContext& ctx) {
  try {
    ApiResponse r = ctx.route->handler(ctx.request);
    sanitize(&r);
    return r;
  } catch (const std::exception& e) {
    LOG_ERROR("api: %s %s: handler threw: %s", ctx.request.method.c_str(), ctx.request.path.c_str(), e.what());
    try {
      return ApiResponse::error(500, "Internal(" + rust_debug_string(e.what()) + ")");
    } catch (...) {
    }
  } catch (...) {
    LOG_ERROR("api: %s %s: handler threw a non-exception", ctx.request.method.c_str(), ctx.request.path.c_str());
  }
  try {
    return ApiResponse::error(500, "Internal(\"unknown exception\")");
  } catch (...) {
    return ApiResponse{500, {}};
  }
}

void ApiServer::Impl::worker_loop() {
  for (;;) {
    RequestContext* ctx = nullptr;
    bool shutting = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      ctx = queue_.front();
      queue_.pop_front();
      shutting = stopping_;
    }
    ctx->response = shutting ? shutting_down() : invoke(*ctx);
    ctx->ready = true;
    // ctx may be freed by the MHD thread as soon as it is resumed.
    MHD_resume_connection(ctx->conn);
  }
}

bool ApiServer::Impl::on_worker_thread() const {
  for (const auto& t : workers_)
    if (t.get_id() == std::this_thread::get_id()) return true;
  return false;
}

Status ApiServer::Impl::start() {
  if (mhd_ != nullptr) return Status::invalid("api: server already started");
  const std::string& path = opts_.socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return Status::invalid("api: socket path '" + path + "' is empty or too long");
  // Bound under a temporary name, listening, then renamed into place: a
  // client that sees the path (the snapshotter polls for it) can connect at
  // once, never "connection refused" between bind and listen. Paths too
  // long for the temporary name are bound directly.
  std::string bind_path = path + ".tmp" + std::to_string(getpid());
  if (bind_path.size() >= sizeof addr.sun_path) bind_path = path;
  std::memcpy(addr.sun_path, bind_path.c_str(), bind_path.size() + 1);

  // As upstream: whatever is at the path goes (a stale socket of a dead daemon).
  if (unlink(path.c_str()) != 0 && errno != ENOENT)
    return Status::io("api: cannot remove " + path + ": " + std::strerror(errno));
  if (bind_path != path) unlink(bind_path.c_str());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::io(std::string("api: socket: ") + std::strerror(errno));
  auto fail = [&](const std::string& what) {
    int err = errno;
    close(fd);
    unlink(bind_path.c_str());
    return Status::io("api: " + what + " " + bind_path + ": " + std::strerror(err));
  };
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    close(fd);
    return Status::io("api: bind " + bind_path + ": " + std::strerror(err));
  }
  if (listen(fd, SOMAXCONN) != 0) return fail("listen");
  if (bind_path != path && rename(bind_path.c_str(), path.c_str()) != 0) return fail("rename to " + path + ":");
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    Status s = fail("stat");
    unlink(path.c_str());
    return s;
  }
  sock_dev_ = st.st_dev;
  sock_ino_ = st.st_ino;

  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC | MHD_USE_ERROR_LOG;
  const char* poller = "select";
  if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES) {
    flags |= MHD_USE_EPOLL;
    poller = "epoll";
  } else if (MHD_is_feature_supported(MHD_FEATURE_POLL) == MHD_YES) {
    flags |= MHD_USE_POLL;
    poller = "poll";
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = false;
  }
  // Threads inherit the nice value of the thread that creates them (it is
  // per thread on Linux): adjust ours while MHD and the workers start, then
  // put it back.
  const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
  errno = 0;
  const int caller_nice = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
  const bool adjusted = opts_.nice_adjustment != 0 && errno == 0 &&
                        setpriority(PRIO_PROCESS, static_cast<id_t>(tid), caller_nice + opts_.nice_adjustment) == 0;
  if (opts_.nice_adjustment != 0 && !adjusted)
    LOG_DEBUG("api: cannot change the API threads' nice value by %d: %s", opts_.nice_adjustment, std::strerror(errno));
  struct RestoreNice {
    bool active;
    pid_t tid;
    int nice;
    ~RestoreNice() {
      if (active) setpriority(PRIO_PROCESS, static_cast<id_t>(tid), nice);
    }
  } restore_nice{adjusted, tid, caller_nice};
  mhd_ = MHD_start_daemon(flags, 0, nullptr, nullptr, &Impl::on_access, this,
                          MHD_OPTION_EXTERNAL_LOGGER, &mhd_logger, nullptr,  // must come first
                          MHD_OPTION_LISTEN_SOCKET, static_cast<MHD_socket>(fd),
                          MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned>(opts_.max_connections),
                          MHD_OPTION_CONNECTION_TIMEOUT, 0u,  // never close idle connections
                          MHD_OPTION_URI_LOG_CALLBACK, &Impl::on_uri, this,
                          MHD_OPTION_NOTIFY_COMPLETED, &Impl::on_completed, this,
                          MHD_OPTION_END);
  if (mhd_ == nullptr) {
    close(fd);
    unlink(path.c_str());
    return Status::io("api: cannot start the HTTP server (libmicrohttpd) on " + path);
  }
  // From here MHD owns fd (it closes it in MHD_stop_daemon).
  unsigned n = opts_.handler_threads == 0 ? 1 : opts_.handler_threads;
  try {
    for (unsigned i = 0; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (const std::system_error& e) {
    stop();
    return Status::io(std::string("api: cannot start handler threads: ") + e.what());
  }
  LOG_INFO("api: listening on %s (%s, %u handler thread(s), max %u connections)", path.c_str(), poller, n,
           opts_.max_connections);
  return Status::Ok();
}

void ApiServer::Impl::stop() {
  if (mhd_ == nullptr) return;
  if (on_worker_thread()) {
    LOG_ERROR("api: stop() called from an API handler; ignored (it would join itself)");
    return;
  }
  // 1. No new connections; existing ones keep being served.
  MHD_socket fd = MHD_quiesce_daemon(mhd_);
  if (fd != MHD_INVALID_SOCKET) quiesced_fd_ = fd;
  // 2. Let requests already being handled get their reply out.
  {
    std::unique_lock<std::mutex> lock(mu_);
    drain_cv_.wait_for(lock, opts_.drain_timeout, [&] { return inflight_ == 0; });
    stopping_ = true;  // from now on nothing is suspended any more
  }
  work_cv_.notify_all();
  // 3. Workers answer what is queued with 503, resume it, and exit, so no
  //    connection is left suspended (MHD_stop_daemon aborts on one).
  for (auto& t : workers_) t.join();
  workers_.clear();
  MHD_stop_daemon(mhd_);
  mhd_ = nullptr;
  if (quiesced_fd_ >= 0) close(quiesced_fd_);
  quiesced_fd_ = -1;
  // Remove the socket file only if it is still ours (a successor may have
  // bound the same path after unlinking ours).
  struct stat st {};
  if (lstat(opts_.socket_path.c_str(), &st) == 0 && st.st_dev == sock_dev_ && st.st_ino == sock_ino_)
    unlink(opts_.socket_path.c_str());
  LOG_INFO("api: stopped, %s removed", opts_.socket_path.c_str());
}

ApiServer::ApiServer(ApiServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
ApiServer::~ApiServer() { stop(); }

Status ApiServer::add_route(std::string method, std::string path, BodyRule body, ApiHandler handler) {
  return impl_->add_route(std::move(method), std::move(path), body, std::move(handler));
}
Status ApiServer::start() { return impl_->start(); }
void ApiServer::stop() { impl_->stop(); }
bool ApiServer::running() const { return impl_->running(); }
const std::string& ApiServer::socket_path() const { return impl_->socket_path(); }

}  // namespace nydus::daemon
