// HttpClient against a bare TCP listener on loopback: the retry of refused
// connections (HttpRequest::refused_retry).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "backend/http_client.h"

using namespace nydus;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// A port nothing listens on (bound, then closed: refused until reused).
uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// After `delay`, listens on `port` and answers one request with 200 "ok".
std::thread late_server(uint16_t port, std::chrono::milliseconds delay, std::atomic<bool>* listening) {
  return std::thread([=]() {
    std::this_thread::sleep_for(delay);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 4) != 0) {
      close(fd);
      return;
    }
    listening->store(true);
    int c = accept(fd, nullptr, nullptr);
    if (c >= 0) {
      char buf[4096];
      (void)!read(c, buf, sizeof buf);
      const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
      (void)!write(c, answer.data(), answer.size());
      close(c);
    }
    close(fd);
  });
}

}  // namespace

TEST_CASE("HttpClient: a refused connection fails at once without refused_retry", "[backend][http]") {
  backend::HttpClient client({});
  backend::HttpRequest req;
  req.url = "http://127.0.0.1:" + std::to_string(free_port()) + "/";
  const auto start = Clock::now();
  auto res = client.perform(req);
  REQUIRE_FALSE(res.ok());
  CHECK(res.status().code() == Code::kIo);
  CHECK(Clock::now() - start < 200ms);
}

TEST_CASE("HttpClient: refused_retry waits for a server that starts listening", "[backend][http]") {
  backend::HttpClient client({});
  const uint16_t port = free_port();
  std::atomic<bool> listening{false};
  std::thread server = late_server(port, 150ms, &listening);
  backend::HttpRequest req;
  req.url = "http://127.0.0.1:" + std::to_string(port) + "/";
  req.refused_retry = 3000ms;
  auto res = client.perform(req);
  server.join();
  REQUIRE(listening.load());
  INFO((res.ok() ? "" : res.status().message()));
  REQUIRE(res.ok());
  CHECK(res->status == 200);
  CHECK(res->body == "ok");
}

TEST_CASE("HttpClient: refused_retry gives up after its deadline", "[backend][http]") {
  backend::HttpClient client({});
  backend::HttpRequest req;
  req.url = "http://127.0.0.1:" + std::to_string(free_port()) + "/";
  req.refused_retry = 120ms;
  const auto start = Clock::now();
  auto res = client.perform(req);
  const auto took = Clock::now() - start;
  REQUIRE_FALSE(res.ok());
  CHECK(res.status().code() == Code::kIo);
  CHECK(took >= 100ms);
  CHECK(took < 1000ms);
}
