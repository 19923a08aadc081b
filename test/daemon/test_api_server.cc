// The admin API transport (ApiServer), the v1 endpoints and the daemon state
// machine, driven over a real unix socket by a raw HTTP client so every
// byte on the wire is the test's choice.
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "daemon/api_server.h"
#include "daemon/api_v1.h"
#include "daemon/daemon_state.h"
#include "test/test_util.h"

using namespace nydus;
using namespace nydus::daemon;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------- client

int connect_unix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

struct Reply {
  int status = 0;
  std::string version;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
  nlohmann::json json() const { return nlohmann::json::parse(body); }
};

// One client connection that reads responses by Content-Length.
class Conn {
 public:
  explicit Conn(const std::string& path) : fd_(connect_unix(path)) {
    if (fd_ < 0) throw std::runtime_error("connect " + path + ": " + std::strerror(errno));
  }
  ~Conn() {
    if (fd_ >= 0) close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  int fd() const { return fd_; }

  // False once the peer is gone (EPIPE/ECONNRESET).
  bool send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // The next response, or nullopt on EOF or timeout.
  std::optional<Reply> recv(std::chrono::milliseconds timeout = 5000ms) {
    auto deadline = Clock::now() + timeout;
    size_t head_end;
    while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos)
      if (!fill(deadline)) return std::nullopt;
    Reply r;
    std::string head = buf_.substr(0, head_end);
    buf_.erase(0, head_end + 4);
    size_t line_end = head.find("\r\n");
    std::string status_line = head.substr(0, line_end);
    r.version = status_line.substr(0, status_line.find(' '));
    r.status = std::atoi(status_line.c_str() + status_line.find(' ') + 1);
    size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      size_t end = head.find("\r\n", pos);
      if (end == std::string::npos) end = head.size();
      std::string line = head.substr(pos, end - pos);
      size_t colon = line.find(':');
      std::string name = line.substr(0, colon);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      size_t v = colon + 1;
      while (v < line.size() && line[v] == ' ') ++v;
      r.headers[name] = line.substr(v);
      pos = end + 2;
    }
    size_t length = r.headers.count("content-length") ? std::stoul(r.headers["content-length"]) : 0;
    while (buf_.size() < length)
      if (!fill(deadline)) return std::nullopt;
    r.body = buf_.substr(0, length);
    buf_.erase(0, length);
    return r;
  }

  Reply roundtrip(const std::string& request) {
    REQUIRE(send(request));
    auto r = recv();
    REQUIRE(r.has_value());
    return *r;
  }

  // True when the server closed the connection (EOF/HUP) within `timeout`;
  // false if it is still open (or sent data).
  bool closed_by_peer(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR)) return true;
    char c;
    ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

 private:
  bool fill(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    char tmp[65536];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }

  int fd_;
  std::string buf_;
};

// A request as Go's net/http would send it over a unix socket.
std::string request(const std::string& method, const std::string& target, std::optional<std::string> body = {},
                     const std::string& extra_headers = "") {
  std::string r = method + " " + target + " HTTP/1.1\r\nHost: unix\r\nUser-Agent: Go-http-client/1.1\r\n";
  if (body) r += "Content-Length: " + std::to_string(body->size()) + "\r\n";
  r += extra_headers + "\r\n";
  if (body) r += *body;
  return r;
}

std::string error_body(const std::string& message) {
  return nlohmann::json{{"code", "UNDEFINED"}, {"message", message}}.dump();
}

void check_headers(const Reply& r) {
  CHECK(r.header("content-type") == "application/json");
  CHECK(r.header("server") == "Nydus API");
}

void raise_nofile(rlim_t wanted) {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur >= wanted) return;
  rl.rlim_cur = std::min(wanted, rl.rlim_max);
  setrlimit(RLIMIT_NOFILE, &rl);
}

// ---------------------------------------------------------------- daemon side

// Test-side fields are set by the test thread and read by the API handler
// thread; the socket orders them, but TSan cannot see that, so a mutex does.
class FakeController : public DaemonController {
 public:
  BuildInfo build_info() const override {
    return {"v0.1.0-test", "0123456789abcdef", "Mon Jan  1 00:00:00 2026", "release", "none"};
  }
  std::optional<std::string> id() const override { return get(id_); }
  std::optional<std::string> supervisor() const override { return get(supervisor_); }
  DaemonState state() const override { return sm.state(); }
  nlohmann::json backend_collection() const override { return get(collection_); }

  ControlStatus start() override {
    Status s = sm.fire(DaemonEvent::kStart);
    if (!s.ok()) return ControlError::from_transition(s);
    return {};
  }
  ControlStatus exit() override {
    Status s = sm.trigger_exit();
    if (!s.ok()) return ControlError::from_transition(s);
    exited = true;
    return {};
  }
  ControlStatus takeover() override {
    Status s = sm.fire(DaemonEvent::kTakeover);
    if (!s.ok()) return ControlError::from_transition(s);
    return {};
  }
  ControlStatus umount(const std::string& mountpoint) override {
    set(last_mountpoint_, mountpoint);
    return ControlError::mount("object or filesystem doesn't exist");
  }
  ControlResult<std::string> fs_metrics(const std::optional<std::string>& id) override {
    if (id && *id == "/") return std::string(R"({"id":"/","data_read":12})");
    return ControlError::no_counter();
  }
  ControlResult<std::optional<std::string>> inflight_metrics() override { return get(inflight_); }

  template <typename T, typename V>
  void set(T& field, V value) {
    std::lock_guard<std::mutex> lock(mu_);
    field = std::move(value);
  }
  template <typename T>
  T get(const T& field) const {
    std::lock_guard<std::mutex> lock(mu_);
    return field;
  }

  DaemonStateMachine sm;
  std::atomic<bool> exited{false};
  mutable std::mutex mu_;
  std::optional<std::string> id_, supervisor_, inflight_;  // GUARDED_BY(mu_)
  nlohmann::json collection_ = nullptr;                    // GUARDED_BY(mu_)
  std::string last_mountpoint_;                            // GUARDED_BY(mu_)
};

// A started server with the v1 routes plus a few test routes.
struct Harness {
  explicit Harness(ApiServerOptions options = {}) {
    sock = dir / "api.sock";
    options.socket_path = sock;
    server = std::make_unique<ApiServer>(options);
    REQUIRE(register_api_v1(*server, controller, events).ok());
    REQUIRE(server
                ->add_route("GET", "/test/echo", BodyRule::kOptional,
                            [](const ApiRequest& r) {
                              nlohmann::json q = nlohmann::json::array();
                              for (const auto& [k, v] : r.query) q.push_back({k, v});
                              return ApiResponse::json(
                                  nlohmann::json{{"path", r.path}, {"query", q}, {"body", r.body}}.dump());
                            })
                .ok());
    REQUIRE(server
                ->add_route("GET", "/test/throw", BodyRule::kNone,
                            [](const ApiRequest&) -> ApiResponse { throw std::runtime_error("boom \"x\""); })
                .ok());
    REQUIRE(server
                ->add_route("PUT", "/test/slow", BodyRule::kNone,
                            [this](const ApiRequest& r) {
                              ++slow_started;
                              std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(*r.query_value("ms"))));
                              return ApiResponse::no_content();
                            })
                .ok());
    REQUIRE(server->start().ok());
  }

  nydus::test::TempDir dir{"nydus-api"};
  std::string sock;
  FakeController controller;
  ErrorEvents events;
  std::unique_ptr<ApiServer> server;
  std::atomic<int> slow_started{0};
};

}  // namespace

// ====================================================================== state machine

TEST_CASE("state machine: the upstream transition table", "[state]") {
  std::vector<std::string> ran;
  auto action = [&ran](const char* name) {
    return [&ran, name] {
      ran.push_back(name);
      return Status::Ok();
    };
  };
  DaemonStateMachine sm(DaemonStateMachine::Actions{action("restore"), action("start_service"),
                                                    action("terminate_service"), action("umount")});
  CHECK(sm.state() == DaemonState::kInit);
  CHECK(std::string(sm.state_name()) == "INIT");

  // Start in INIT is the message the snapshotter/smoke tests see as 400.
  Status s = sm.fire(DaemonEvent::kStart);
  CHECK(s.code() == Code::kInvalidInput);
  CHECK(s.message() == "UnexpectedEvent(\"Start\")");
  CHECK(sm.fire(DaemonEvent::kExit).message() == "UnexpectedEvent(\"Exit\")");

  REQUIRE(sm.fire(DaemonEvent::kMount).ok());
  CHECK(sm.state() == DaemonState::kReady);
  CHECK(sm.fire(DaemonEvent::kMount).message() == "UnexpectedEvent(\"Mount\")");
  CHECK(sm.fire(DaemonEvent::kTakeover).message() == "UnexpectedEvent(\"Takeover\")");
  REQUIRE(sm.fire(DaemonEvent::kStart).ok());
  CHECK(std::string(sm.state_name()) == "RUNNING");
  CHECK(sm.fire(DaemonEvent::kStart).message() == "UnexpectedEvent(\"Start\")");
  CHECK(sm.fire(DaemonEvent::kExit).message() == "UnexpectedEvent(\"Exit\")");
  REQUIRE(sm.fire(DaemonEvent::kStop).ok());
  CHECK(sm.state() == DaemonState::kReady);
  REQUIRE(sm.fire(DaemonEvent::kStop).ok());  // READY --Stop--> STOPPED unmounts
  CHECK(sm.state() == DaemonState::kStopped);
  for (auto ev : {DaemonEvent::kMount, DaemonEvent::kTakeover, DaemonEvent::kStart, DaemonEvent::kStop,
                  DaemonEvent::kExit})
    CHECK(sm.fire(ev).code() == Code::kInvalidInput);
  CHECK(ran == std::vector<std::string>{"start_service", "terminate_service", "umount"});

  DaemonStateMachine takeover(DaemonStateMachine::Actions{action("restore"), {}, {}, {}});
  ran.clear();
  REQUIRE(takeover.fire(DaemonEvent::kTakeover).ok());
  CHECK(takeover.state() == DaemonState::kReady);
  REQUIRE(takeover.fire(DaemonEvent::kExit).ok());  // READY --Exit--> STOPPED: no umount
  CHECK(takeover.state() == DaemonState::kStopped);
  CHECK(ran == std::vector<std::string>{"restore"});

  DaemonStateMachine init_stop;
  REQUIRE(init_stop.fire(DaemonEvent::kStop).ok());
  CHECK(init_stop.state() == DaemonState::kStopped);

  CHECK(std::string(daemon_state_name(DaemonState::kUnknown)) == "UNKNOWN");
  CHECK(static_cast<int>(DaemonState::kReady) == 3);  // upstream's numbering
}

TEST_CASE("state machine: a failed action leaves the state and can be retried", "[state]") {
  int calls = 0;
  DaemonStateMachine sm(DaemonStateMachine::Actions{
      [&calls] { return ++calls == 1 ? Status::io("supervisor: connection refused") : Status::Ok(); },
      [] { return Status::invalid("bad thread count"); }, {}, {}});
  Status s = sm.fire(DaemonEvent::kTakeover);
  CHECK(s.code() == Code::kIo);
  CHECK(s.message() == "supervisor: connection refused");
  CHECK(sm.state() == DaemonState::kInit);
  REQUIRE(sm.fire(DaemonEvent::kTakeover).ok());
  CHECK(sm.state() == DaemonState::kReady);
  // An action's kInvalidInput must not look like "no such transition".
  s = sm.fire(DaemonEvent::kStart);
  CHECK(s.code() == Code::kIo);
  CHECK(s.message() == "bad thread count");
  CHECK(sm.state() == DaemonState::kReady);
  CHECK(ControlError::from_transition(s).http_status == 500);
  CHECK(ControlError::from_transition(s).debug == "DaemonAbnormal(Other(\"bad thread count\"))");
  Status unexpected = sm.fire(DaemonEvent::kMount);
  CHECK(ControlError::from_transition(unexpected).http_status == 400);
  CHECK(ControlError::from_transition(unexpected).debug == "DaemonAbnormal(UnexpectedEvent(\"Mount\"))");
}

TEST_CASE("state machine: trigger_stop and trigger_exit follow upstream", "[state]") {
  std::vector<std::string> ran;
  auto action = [&ran](const char* name) {
    return [&ran, name] {
      ran.push_back(name);
      return Status::Ok();
    };
  };
  DaemonStateMachine::Actions actions{action("restore"), action("start"), action("terminate"), action("umount")};

  DaemonStateMachine running(actions);
  REQUIRE(running.fire(DaemonEvent::kMount).ok());
  REQUIRE(running.fire(DaemonEvent::kStart).ok());
  ran.clear();
  REQUIRE(running.trigger_stop().ok());  // SIGTERM: stop workers, then unmount
  CHECK(running.state() == DaemonState::kStopped);
  CHECK(ran == std::vector<std::string>{"terminate", "umount"});
  REQUIRE(running.trigger_stop().ok());  // already stopped: no-op

  DaemonStateMachine exiting(actions);
  REQUIRE(exiting.fire(DaemonEvent::kMount).ok());
  REQUIRE(exiting.fire(DaemonEvent::kStart).ok());
  ran.clear();
  REQUIRE(exiting.trigger_exit().ok());  // PUT /daemon/exit: stop workers, keep the mount
  CHECK(exiting.state() == DaemonState::kStopped);
  CHECK(ran == std::vector<std::string>{"terminate"});
  REQUIRE(exiting.trigger_exit().ok());

  DaemonStateMachine init_exit(actions);
  REQUIRE(init_exit.trigger_exit().ok());
  CHECK(init_exit.state() == DaemonState::kStopped);
}

TEST_CASE("state machine: wait_for, re-entrancy and concurrent events", "[state]") {
  DaemonStateMachine sm;
  CHECK_FALSE(sm.wait_for(DaemonState::kReady, Clock::now() + 30ms));
  std::thread t([&] {
    std::this_thread::sleep_for(50ms);
    sm.fire(DaemonEvent::kMount);
  });
  CHECK(sm.wait_for(DaemonState::kReady, Clock::now() + 5s));
  t.join();
  CHECK(sm.wait_for(DaemonState::kReady, Clock::now()));  // already there

  // An action that fires an event is refused instead of deadlocking.
  DaemonStateMachine* self = nullptr;
  Status inner;
  DaemonStateMachine reentrant(DaemonStateMachine::Actions{
      {}, [&] {
        inner = self->fire(DaemonEvent::kStop);
        return Status::Ok();
      },
      {}, {}});
  self = &reentrant;
  REQUIRE(reentrant.fire(DaemonEvent::kMount).ok());
  REQUIRE(reentrant.fire(DaemonEvent::kStart).ok());
  CHECK(inner.code() == Code::kInvalidInput);
  CHECK(reentrant.state() == DaemonState::kRunning);

  // Many threads racing Start: exactly one wins.
  DaemonStateMachine race;
  REQUIRE(race.fire(DaemonEvent::kMount).ok());
  std::atomic<int> wins{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      if (race.fire(DaemonEvent::kStart).ok()) ++wins;
    });
  for (auto& th : threads) th.join();
  CHECK(wins == 1);
  CHECK(race.state() == DaemonState::kRunning);
}

// ====================================================================== transport

TEST_CASE("api: DaemonInfo, headers and keep-alive", "[api]") {
  Harness h;
  struct stat st {};
  REQUIRE(stat(h.sock.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));

  Conn c(h.sock);
  for (int i = 0; i < 3; ++i) {  // three requests on one connection
    Reply r = c.roundtrip(request("GET", "/api/v1/daemon"));
    CHECK(r.status == 200);
    check_headers(r);
    auto j = r.json();
    CHECK(j["state"] == "INIT");
    CHECK(j["id"].is_null());
    CHECK(j["supervisor"].is_null());
    CHECK(j["backend_collection"].is_null());
    CHECK(j["version"]["git_commit"] == "0123456789abcdef");
    CHECK(j["version"]["package_ver"] == "v0.1.0-test");
    CHECK(j["version"].contains("build_time"));
    CHECK(j["version"].contains("profile"));
    CHECK(j["version"].contains("rustc"));
    // Field order as upstream's serde output.
    CHECK(r.body.find("\"version\"") < r.body.find("\"id\""));
    CHECK(r.body.find("\"state\"") < r.body.find("\"backend_collection\""));
  }
  CHECK_FALSE(c.closed_by_peer(100ms));

  h.controller.set(h.controller.id_, std::string("cq1abc"));
  h.controller.set(h.controller.supervisor_, std::string("/run/supervisor/cq1abc.sock"));
  h.controller.set(h.controller.collection_,
                   nlohmann::json{{"/42", {{"backend_type", "Rafs"}, {"mountpoint", "/42"}}}});
  auto j = c.roundtrip(request("GET", "/api/v1/daemon")).json();
  CHECK(j["id"] == "cq1abc");
  CHECK(j["supervisor"] == "/run/supervisor/cq1abc.sock");
  CHECK(j["backend_collection"]["/42"]["backend_type"] == "Rafs");
  auto v2 = c.roundtrip(request("GET", "/api/v2/daemon")).json();
  CHECK(v2["backend_collection"].is_null());
  CHECK(v2["id"] == "cq1abc");

  // HTTP/1.0 and an absolute-form target also work.
  Conn old(h.sock);
  Reply r10 = old.roundtrip("GET /api/v1/daemon HTTP/1.0\r\n\r\n");
  CHECK(r10.status == 200);
  check_headers(r10);
  Reply abs = c.roundtrip(request("GET", "http://unix/api/v1/daemon"));
  CHECK(abs.status == 200);
}

TEST_CASE("api: routing and transport errors", "[api]") {
  Harness h;
  Conn c(h.sock);

  Reply r = c.roundtrip(request("GET", "/api/v1/nothing"));
  CHECK(r.status == 404);
  CHECK(r.body == error_body("NoRoute"));
  check_headers(r);
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon/")).status == 404);  // exact path only
  CHECK(c.roundtrip(request("GET", "/api/v1")).status == 404);

  r = c.roundtrip(request("DELETE", "/api/v1/daemon"));  // wrong method
  CHECK(r.status == 400);
  CHECK(r.body == error_body("BadRequest"));
  check_headers(r);
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon/start")).status == 400);

  // PUT with Content-Length: 0 is "no body".
  r = c.roundtrip(request("PUT", "/api/v1/daemon/fuse/sendfd", std::string()));
  CHECK(r.status == 501);
  CHECK(r.body == error_body("Upgrade(DaemonAbnormal(Unsupported))"));

  // A body on a no-body endpoint: 400, and the connection stays usable.
  r = c.roundtrip(request("PUT", "/api/v1/daemon/start", std::string("{}")));
  CHECK(r.status == 400);
  CHECK(r.body == error_body("BadRequest"));
  CHECK(h.controller.state() == DaemonState::kInit);
  r = c.roundtrip(request("GET", "/api/v1/daemon", std::string("x")));
  CHECK(r.status == 400);
  // A body-required endpoint without one.
  r = c.roundtrip(request("PUT", "/api/v1/daemon", std::string()));
  CHECK(r.status == 400);
  CHECK(r.body == error_body("BadRequest"));
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon")).status == 200);

  // A target that is not a path.
  CHECK(c.roundtrip(request("GET", "*")).status == 400);

  // Handler exceptions become 500 and never reach MHD.
  r = c.roundtrip(request("GET", "/test/throw"));
  CHECK(r.status == 500);
  CHECK(r.body == error_body("Internal(\"boom \\\"x\\\"\")"));
  check_headers(r);
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon")).status == 200);
}

TEST_CASE("api: query strings are form-url-decoded", "[api]") {
  Harness h;
  Conn c(h.sock);
  Reply r = c.roundtrip(request("GET", "/test/echo?mountpoint=%2F42&x=a+b%20c&flag&bad=%zz%4&mountpoint=/second"));
  REQUIRE(r.status == 200);
  auto j = r.json();
  CHECK(j["path"] == "/test/echo");
  CHECK(j["query"] == nlohmann::json::parse(
                          R"([["mountpoint","/42"],["x","a b c"],["flag",""],["bad","%zz%4"],["mountpoint","/second"]])"));

  // Through a real endpoint: the umount target arrives decoded.
  r = c.roundtrip(request("DELETE", "/api/v1/mount?mountpoint=%2F42"));
  CHECK(r.status == 500);
  CHECK(r.body == error_body("Mount(MountFilesystem(Other(\"object or filesystem doesn't exist\")))"));
  CHECK(h.controller.get(h.controller.last_mountpoint_) == "/42");
  r = c.roundtrip(request("DELETE", "/api/v1/mount"));
  CHECK(r.status == 400);
  CHECK(r.body == error_body("QueryString(\"'mountpoint' should be specified in query string\")"));
}

TEST_CASE("api: body limits", "[api]") {
  ApiServerOptions options;
  options.max_body_bytes = 1 << 20;
  Harness h(options);

  SECTION("2 MiB with Content-Length: 400 before the body is read, then close") {
    Conn c(h.sock);
    std::string head = "PUT /api/v1/daemon HTTP/1.1\r\nHost: unix\r\nContent-Length: 2097152\r\n\r\n";
    REQUIRE(c.send(head));
    auto r = c.recv();
    REQUIRE(r.has_value());
    CHECK(r->status == 400);
    CHECK(r->body == error_body("SizeLimitExceeded(1048576, 2097152)"));
    check_headers(*r);
    c.send(std::string(2 << 20, 'x'));  // may fail with EPIPE: the server does not read it
    CHECK(c.closed_by_peer(2000ms));
    Conn again(h.sock);
    CHECK(again.roundtrip(request("GET", "/api/v1/daemon")).status == 200);
  }
  SECTION("a body at the limit is accepted") {
    Conn c(h.sock);
    std::string body = "{\"log_level\":\"info\"" + std::string((1 << 20) - 20, ' ') + "}";
    REQUIRE(body.size() == 1 << 20);
    Reply r = c.roundtrip(request("PUT", "/api/v1/daemon", body));
    CHECK(r.status == 204);
  }
  SECTION("chunked bodies: small ones work, large ones are discarded and refused") {
    Conn c(h.sock);
    Reply r = c.roundtrip(
        "GET /test/echo HTTP/1.1\r\nHost: unix\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    CHECK(r.status == 200);
    CHECK(r.json()["body"] == "hello");
    std::string req = "GET /test/echo HTTP/1.1\r\nHost: unix\r\nTransfer-Encoding: chunked\r\n\r\n";
    std::string chunk(64 * 1024, 'y');
    char size_line[32];
    std::snprintf(size_line, sizeof size_line, "%zx\r\n", chunk.size());
    for (int i = 0; i < 32; ++i) req += size_line + chunk + "\r\n";  // 2 MiB
    req += "0\r\n\r\n";
    r = c.roundtrip(req);
    CHECK(r.status == 400);
    CHECK(r.body == error_body("SizeLimitExceeded(1048576, 2097152)"));
    CHECK(c.roundtrip(request("GET", "/api/v1/daemon")).status == 200);  // same connection
  }
}

TEST_CASE("api: a slow client does not hold up others", "[api]") {
  Harness h;
  std::string req = request("GET", "/api/v1/daemon");
  std::optional<Reply> slow_reply;
  std::thread slow([&] {
    Conn c(h.sock);
    for (char ch : req) {
      c.send(std::string_view(&ch, 1));
      std::this_thread::sleep_for(50ms);
    }
    slow_reply = c.recv();
  });
  Conn fast(h.sock);
  std::this_thread::sleep_for(200ms);  // the slow client is mid-headers
  for (int i = 0; i < 20; ++i) {
    auto begin = Clock::now();
    CHECK(fast.roundtrip(request("GET", "/api/v1/daemon")).status == 200);
    CHECK(Clock::now() - begin < 500ms);
  }
  slow.join();
  REQUIRE(slow_reply.has_value());
  CHECK(slow_reply->status == 200);
}

TEST_CASE("api: a slow handler does not block the polling thread", "[api]") {
  ApiServerOptions options;
  options.handler_threads = 2;
  Harness h(options);
  std::atomic<int> slow_status{0};  // Catch2 assertions are main-thread only
  std::thread slow([&] {
    Conn c(h.sock);
    c.send(request("PUT", "/test/slow?ms=1500"));
    if (auto r = c.recv()) slow_status = r->status;
  });
  while (h.slow_started == 0) std::this_thread::sleep_for(5ms);
  auto begin = Clock::now();
  Conn c(h.sock);  // accepted while the handler sleeps
  CHECK(c.roundtrip(request("GET", "/nothing")).status == 404);           // answered by the polling thread
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon")).status == 200);     // the second handler thread
  CHECK(Clock::now() - begin < 1000ms);
  slow.join();
  CHECK(slow_status == 204);
}

TEST_CASE("api: 1000 idle connections are never closed and do not block a new one", "[api][idle]") {
  raise_nofile(8192);
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < 2200) {
    WARN("RLIMIT_NOFILE too low (" << rl.rlim_cur << ") for 1000 connections; skipped");
    return;
  }
  Harness h;
  std::vector<std::unique_ptr<Conn>> idle;
  for (int i = 0; i < 1000; ++i) idle.push_back(std::make_unique<Conn>(h.sock));

  auto begin = Clock::now();
  Conn c(h.sock);
  Reply r = c.roundtrip(request("GET", "/api/v1/daemon"));
  CHECK(r.status == 200);
  CHECK(Clock::now() - begin < 1s);

  std::this_thread::sleep_for(3s);
  std::vector<pollfd> fds;
  for (auto& conn : idle) fds.push_back({conn->fd(), POLLIN | POLLRDHUP, 0});
  REQUIRE(poll(fds.data(), fds.size(), 0) >= 0);
  int hup = 0;
  for (auto& p : fds) hup += p.revents != 0;
  CHECK(hup == 0);
  // They still work as connections, too.
  CHECK(idle.front()->roundtrip(request("GET", "/api/v1/daemon")).status == 200);
  CHECK(idle.back()->roundtrip(request("GET", "/api/v1/daemon")).status == 200);
}

TEST_CASE("api: stop drains replies, closes connections, removes the socket", "[api]") {
  SECTION("a reply in progress when stop() starts is still delivered") {
    Harness h;
    Conn idle(h.sock);
    Conn c(h.sock);
    REQUIRE(c.send(request("PUT", "/test/slow?ms=300")));
    while (h.slow_started == 0) std::this_thread::sleep_for(5ms);
    h.server->stop();
    auto r = c.recv(1000ms);
    REQUIRE(r.has_value());
    CHECK(r->status == 204);
    CHECK(idle.closed_by_peer(1000ms));
    struct stat st {};
    CHECK(stat(h.sock.c_str(), &st) != 0);
    CHECK_FALSE(h.server->running());
    h.server->stop();  // idempotent
  }
  SECTION("queued requests do not abort the shutdown") {
    ApiServerOptions options;
    options.drain_timeout = 0ms;
    Harness h(options);
    Conn a(h.sock), b(h.sock), d(h.sock);
    REQUIRE(a.send(request("PUT", "/test/slow?ms=300")));
    while (h.slow_started == 0) std::this_thread::sleep_for(5ms);
    REQUIRE(b.send(request("PUT", "/test/slow?ms=300")));
    REQUIRE(d.send(request("PUT", "/test/slow?ms=300")));
    std::this_thread::sleep_for(50ms);
    h.server->stop();  // must not trip MHD's "suspended connections" panic
    CHECK(h.slow_started == 1);
    for (Conn* conn : {&a, &b, &d}) {
      auto r = conn->recv(1000ms);
      if (r) CHECK((r->status == 204 || r->status == 503));
    }
  }
  SECTION("the socket file is only removed if it is still ours") {
    Harness h;
    std::string replaced = h.sock;
    unlink(replaced.c_str());
    { std::ofstream(replaced) << "successor"; }
    h.server->stop();
    struct stat st {};
    CHECK(stat(replaced.c_str(), &st) == 0);
  }
}

TEST_CASE("api: start replaces a stale file and reports bind errors", "[api]") {
  nydus::test::TempDir dir("nydus-api");
  std::string path = dir / "api.sock";
  { std::ofstream(path) << "stale"; }
  ApiServerOptions options;
  options.socket_path = path;
  ApiServer server(options);
  REQUIRE(server.start().ok());
  struct stat st {};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK_FALSE(server.start().ok());  // already started
  CHECK_FALSE(server.add_route("GET", "/x", BodyRule::kNone, [](const ApiRequest&) { return ApiResponse{}; }).ok());
  server.stop();

  ApiServerOptions bad;
  bad.socket_path = dir / "no-such-dir/api.sock";
  ApiServer failing(bad);
  Status s = failing.start();
  CHECK_FALSE(s.ok());
  CHECK(s.message().find("bind") != std::string::npos);
  ApiServerOptions too_long;
  too_long.socket_path = "/" + std::string(200, 'x');
  CHECK_FALSE(ApiServer(too_long).start().ok());

  ApiServer dup(options);
  REQUIRE(dup.add_route("GET", "/x", BodyRule::kNone, [](const ApiRequest&) { return ApiResponse{}; }).ok());
  CHECK_FALSE(dup.add_route("GET", "/x", BodyRule::kNone, [](const ApiRequest&) { return ApiResponse{}; }).ok());
}

// ====================================================================== endpoints

TEST_CASE("api v1: lifecycle endpoints drive the state machine", "[api][v1]") {
  Harness h;
  Conn c(h.sock);
  Reply r = c.roundtrip(request("PUT", "/api/v1/daemon/start", std::string()));
  CHECK(r.status == 400);
  CHECK(r.body == error_body("Configure(DaemonAbnormal(UnexpectedEvent(\"Start\")))"));

  r = c.roundtrip(request("PUT", "/api/v1/daemon/fuse/takeover", std::string()));
  CHECK(r.status == 204);
  CHECK(r.body.empty());
  check_headers(r);
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon")).json()["state"] == "READY");
  r = c.roundtrip(request("PUT", "/api/v1/daemon/fuse/takeover", std::string()));
  CHECK(r.status == 400);
  CHECK(r.body == error_body("Upgrade(DaemonAbnormal(UnexpectedEvent(\"Takeover\")))"));

  CHECK(c.roundtrip(request("PUT", "/api/v1/daemon/start", std::string())).status == 204);
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon")).json()["state"] == "RUNNING");

  CHECK(c.roundtrip(request("PUT", "/api/v1/daemon/exit", std::string())).status == 204);
  CHECK(h.controller.exited);
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon")).json()["state"] == "STOPPED");
}

TEST_CASE("api v1: log level, events, config and stubs", "[api][v1]") {
  Harness h;
  Conn c(h.sock);
  log::Level before = log::level();

  Reply r = c.roundtrip(request("PUT", "/api/v1/daemon", std::string(R"({"log_level":"debug"})")));
  CHECK(r.status == 204);
  CHECK(log::level() == log::Level::kDebug);
  r = c.roundtrip(request("PUT", "/api/v2/daemon", std::string(R"({"log_level":"Warn","extra":1})")));
  CHECK(r.status == 204);
  CHECK(log::level() == log::Level::kWarn);
  r = c.roundtrip(request("PUT", "/api/v1/daemon", std::string(R"({"log_level":"loud"})")));
  CHECK(r.status == 500);
  CHECK(r.body == error_body("Configure(ResponsePayloadType)"));
  log::set_level(before);

  // Malformed and mistyped JSON bodies: 400 ParseBody(...).
  r = c.roundtrip(request("PUT", "/api/v1/daemon", std::string("{\"log_level\":")));
  CHECK(r.status == 400);
  CHECK(r.json()["message"].get<std::string>().rfind("ParseBody(Error(\"", 0) == 0);
  r = c.roundtrip(request("PUT", "/api/v1/daemon", std::string("{}")));
  CHECK(r.status == 400);
  CHECK(r.body == error_body("ParseBody(Error(\"missing field `log_level`\", line: 1, column: 2))"));
  r = c.roundtrip(request("PUT", "/api/v1/daemon", std::string("[1]")));
  CHECK(r.status == 400);
  CHECK(r.json()["message"] == "ParseBody(Error(\"invalid type: sequence, expected struct DaemonConf\", line: 1, column: 3))");
  r = c.roundtrip(request("POST", "/api/v1/mount?mountpoint=%2F42", std::string(R"({"fs_type":"rafs","config":"{}"})")));
  CHECK(r.status == 400);
  CHECK(r.json()["message"].get<std::string>().find("missing field `source`") != std::string::npos);

  // Go escapes <, > and & as \u003c...; decode them.
  r = c.roundtrip(request("POST", "/api/v1/mount?mountpoint=%2F42",
                          std::string(R"({"source":"/a\u003cb","fs_type":"rafs","config":"{\"x\":\"\u0026\"}"})")));
  CHECK(r.status == 501);
  CHECK(r.body == error_body("Mount(DaemonAbnormal(Unsupported))"));
  r = c.roundtrip(request("POST", "/api/v1/mount?mountpoint=%2F42", std::string(R"({"source":"/b","config":"{}"})")));
  CHECK(r.status == 500);  // fs_type missing = "", which upstream rejects
  CHECK(r.body == error_body("Mount(MountFilesystem(Other(\"invalid argument `only 'rafs' and 'passthrough_fs' are "
                             "supported, but  was specified`\")))"));
  r = c.roundtrip(request("PUT", "/api/v1/mount?mountpoint=%2F42",
                          std::string(R"({"source":"/b","fs_type":"rafs","config":"{}","prefetch_files":["/x"]})")));
  CHECK(r.status == 501);

  // Events ring buffer.
  h.events.push("backend: read blob abc failed");
  r = c.roundtrip(request("GET", "/api/v1/daemon/events"));
  CHECK(r.status == 200);
  auto ev = r.json();
  CHECK(ev["max_errors"] == 500);
  CHECK(ev["max_size"] == 51200);
  CHECK(ev["total_errors"] == 1);
  CHECK(ev["errors"][0].get<std::string>().find(" GMT - backend: read blob abc failed") != std::string::npos);
  CHECK(ev["total_size"] == ev["errors"][0].get<std::string>().size());

  // Metrics: controller answers, NoCounter is 404, stubs are 501.
  r = c.roundtrip(request("GET", "/api/v1/metrics?id=%2F"));
  CHECK(r.status == 200);
  CHECK(r.json()["data_read"] == 12);
  r = c.roundtrip(request("GET", "/api/v1/metrics?id=poison"));
  CHECK(r.status == 404);
  CHECK(r.body == error_body("GlobalMetrics(Metrics(Stats(NoCounter)))"));
  r = c.roundtrip(request("GET", "/api/v1/metrics/pattern"));
  CHECK(r.status == 501);
  CHECK(r.body == error_body("Pattern(DaemonAbnormal(Unsupported))"));
  for (const char* path : {"/api/v1/metrics/files?latest=true", "/api/v1/metrics/backend", "/api/v1/metrics/backend/reads",
                           "/api/v1/metrics/blobcache?id=%2F42", "/api/v1/config?id=%2F",
                           "/api/v1/daemon/backend?mountpoint=%2F"})
    CHECK(c.roundtrip(request("GET", path)).status == 501);
  CHECK(c.roundtrip(request("GET", "/api/v1/daemon/backend")).status == 400);
  r = c.roundtrip(request("GET", "/api/v1/metrics/inflight"));
  CHECK(r.status == 204);
  check_headers(r);
  h.controller.set(h.controller.inflight_, std::string(R"([{"inode":1,"opcode":15,"unique":7,"timestamp_secs":1}])"));
  r = c.roundtrip(request("GET", "/api/v1/metrics/inflight"));
  CHECK(r.status == 200);
  CHECK(r.json()[0]["opcode"] == 15);
  r = c.roundtrip(request("PUT", "/api/v1/config?id=%2F", std::string(R"({"registry_auth":"dXNlcjpwYXNz"})")));
  CHECK(r.status == 501);
  r = c.roundtrip(request("PUT", "/api/v1/config?id=%2F", std::string(R"({"registry_auth":1})")));
  CHECK(r.status == 400);
  CHECK(c.roundtrip(request("PUT", "/api/v1/daemon/fuse/sendfd", std::string())).status == 501);
  CHECK(c.roundtrip(request("GET", "/api/v2/blobs?domain_id=d")).status == 501);
  CHECK(c.roundtrip(request("GET", "/api/v2/blobs")).status == 400);
  CHECK(c.roundtrip(request("DELETE", "/api/v2/blobs?blob_id=b")).status == 501);
}

TEST_CASE("api v1: error events ring buffer", "[api][v1]") {
  ErrorEvents events(3, 120);
  for (int i = 0; i < 5; ++i) CHECK(events.push("error " + std::to_string(i)));
  auto j = nlohmann::json::parse(events.to_json());
  CHECK(j["total_errors"] == 3);
  CHECK(j["errors"][0].get<std::string>().find("error 2") != std::string::npos);
  CHECK(j["errors"][2].get<std::string>().find("error 4") != std::string::npos);
  CHECK(events.push(std::string(60, 'x')));  // evicts by size
  j = nlohmann::json::parse(events.to_json());
  CHECK(j["total_size"].get<size_t>() <= 120);
  CHECK(j["errors"].back().get<std::string>().find(std::string(60, 'x')) != std::string::npos);
  CHECK_FALSE(events.push(std::string(200, 'y')));  // larger than the whole buffer
  CHECK(nlohmann::json::parse(events.to_json())["total_errors"] == j["total_errors"]);
}

TEST_CASE("api: rust_debug_string and error bodies", "[api]") {
  CHECK(rust_debug_string("a\"b\\c\nd\te\x01") == "\"a\\\"b\\\\c\\nd\\te\\u{1}\"");
  ApiResponse r = ApiResponse::error(500, "bad \xff utf8 <&>");
  CHECK(r.status == 500);
  auto j = nlohmann::json::parse(r.body);
  CHECK(j["code"] == "UNDEFINED");
  CHECK(r.body.rfind("{\"code\":\"UNDEFINED\",\"message\":", 0) == 0);
}

TEST_CASE("api: curl --unix-socket", "[api][curl]") {
  if (system("command -v curl >/dev/null 2>&1") != 0) {
    WARN("curl not installed; skipped");
    return;
  }
  Harness h;
  auto run = [](const std::string& cmd) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
  };
  std::string curl = "curl -sS --max-time 5 --unix-socket " + h.sock + " ";
  std::string out = run(curl + "http://unix/api/v1/daemon");
  CHECK(nlohmann::json::parse(out)["state"] == "INIT");
  out = run(curl + "-o /dev/null -w '%{http_code}' -X PUT http://unix/api/v1/daemon/fuse/takeover");
  CHECK(out == "204");
  out = run(curl + "-i -X PUT -d '{\"log_level\":\"nope\"}' http://unix/api/v1/daemon");
  CHECK(out.find("HTTP/1.1 500") != std::string::npos);
  CHECK(out.find("Server: Nydus API") != std::string::npos);
  CHECK(out.find("Content-Type: application/json") != std::string::npos);
  CHECK(out.find(error_body("Configure(ResponsePayloadType)")) != std::string::npos);
  out = run(curl + "-w '%{http_code}' 'http://unix/api/v1/mount?mountpoint=%2F42' -X DELETE");
  CHECK(out.find("object or filesystem doesn't exist") != std::string::npos);
  CHECK(h.controller.get(h.controller.last_mountpoint_) == "/42");
}
