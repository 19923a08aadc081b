// A test supervisor: the server side of the supervisor channel, mirroring
// nydus-snapshotter pkg/supervisor/supervisor.go (read there, not copied):
//   wait_states(timeout)  = waitStatesTimeout: remove the socket file,
//       listen, then in the background accept ONE connection, read messages
//       (data + control) until EOF, take the first fd of the first
//       SCM_RIGHTS message, and overwrite the stored data and fd. The
//       listener closes after `timeout` if nobody connected.
//   send_states(timeout)  = SendStatesTimeout: remove the socket file,
//       listen, then in the background accept ONE connection and sendmsg the
//       stored data with SCM_RIGHTS of the stored fd in the first message
//       (looping over partial writes), then close.
// Difference: supervisor.go keeps the previous fd open when a new one
// arrives (a leak); this one closes it.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace nydus::test {

class TestSupervisor {
 public:
  explicit TestSupervisor(std::string path) : path_(std::move(path)) {}
  ~TestSupervisor() {
    join();
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
  TestSupervisor(const TestSupervisor&) = delete;
  TestSupervisor& operator=(const TestSupervisor&) = delete;

  const std::string& path() const { return path_; }

  void wait_states(std::chrono::milliseconds timeout) {
    int listener = listen_now();
    start([this, listener, timeout] {
      int conn = accept_within(listener, timeout);
      ::close(listener);
      if (conn < 0) return finish(false);
      std::vector<uint8_t> data;
      std::vector<int> fds;
      for (;;) {
        uint8_t buf[64 * 1024];
        alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * 64)];
        iovec iov{buf, sizeof buf};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = ::recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
          if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
          for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            fds.push_back(fd);
          }
        }
        if (n == 0) break;
        data.insert(data.end(), buf, buf + n);
      }
      ::close(conn);
      {
        std::lock_guard lk(mu_);
        data_ = std::move(data);
        if (!fds.empty()) {
          if (fd_ >= 0) ::close(fd_);
          fd_ = fds[0];
        }
        received_fds_ = fds.size();
      }
      for (size_t i = 1; i < fds.size(); ++i) ::close(fds[i]);
      finish(true);
    });
  }

  void send_states(std::chrono::milliseconds timeout) {
    int listener = listen_now();
    start([this, listener, timeout] {
      int conn = accept_within(listener, timeout);
      ::close(listener);
      if (conn < 0) return finish(false);
      std::vector<uint8_t> data;
      int fd;
      {
        std::lock_guard lk(mu_);
        data = data_;
        fd = fd_;
      }
      size_t done = 0;
      bool oob_sent = fd < 0;
      bool ok = true;
      while (done < data.size() || !oob_sent) {
        alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))] = {};
        iovec iov{data.data() + done, data.size() - done};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (!oob_sent) {
          msg.msg_control = control;
          msg.msg_controllen = sizeof control;
          cmsghdr* c = CMSG_FIRSTHDR(&msg);
          c->cmsg_level = SOL_SOCKET;
          c->cmsg_type = SCM_RIGHTS;
          c->cmsg_len = CMSG_LEN(sizeof(int));
          std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
        }
        ssize_t n = ::sendmsg(conn, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          ok = false;
          break;
        }
        done += static_cast<size_t>(n);
        oob_sent = true;
      }
      ::close(conn);
      finish(ok);
    });
  }

  // Waits for the background exchange; true when it completed.
  bool wait_done(std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, timeout, [this] { return done_; });
    bool ok = done_ && ok_;
    lk.unlock();
    join();
    return ok;
  }

  std::vector<uint8_t> data() const {
    std::lock_guard lk(mu_);
    return data_;
  }
  int fd() const {
    std::lock_guard lk(mu_);
    return fd_;
  }
  size_t received_fds() const {
    std::lock_guard lk(mu_);
    return received_fds_;
  }
  void set(std::vector<uint8_t> data, int fd) {  // takes ownership of fd
    std::lock_guard lk(mu_);
    data_ = std::move(data);
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int listen_now() {
    join();
    ::unlink(path_.c_str());
    int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(s, 16) != 0)
      throw std::runtime_error("test supervisor: cannot listen on " + path_ + ": " + std::strerror(errno));
    return s;
  }
  static int accept_within(int listener, std::chrono::milliseconds timeout) {
    pollfd pfd{listener, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(timeout.count())) != 1) return -1;
    return ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  }
  template <typename Fn>
  void start(Fn fn) {
    {
      std::lock_guard lk(mu_);
      done_ = false;
      ok_ = false;
    }
    thread_ = std::thread(std::move(fn));
  }
  void finish(bool ok) {
    std::lock_guard lk(mu_);
    done_ = true;
    ok_ = ok;
    cv_.notify_all();
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

  const std::string path_;
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  bool ok_ = false;
  std::vector<uint8_t> data_;
  int fd_ = -1;
  size_t received_fds_ = 0;
};

}  // namespace nydus::test
