#include "daemon/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "common/log.h"

namespace nydus::daemon {
namespace {

using Clock = std::chrono::steady_clock;

std::string errno_text(int err) { return std::strerror(err); }

Status make_address(const std::string& path, sockaddr_un* addr) {
  if (path.empty()) return Status::invalid("supervisor: empty socket path");
  if (path.size() >= sizeof(addr->sun_path))
    return Status::invalid("supervisor: socket path too long (" + std::to_string(path.size()) + " bytes): " + path);
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return Status::Ok();
}

// Milliseconds left until `deadline` for poll(), at least 0.
int poll_timeout(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 60'000 ? 60'000 : static_cast<int>(left);
}

// Waits until `fd` is readable. kTimeout after the deadline.
Status wait_readable(int fd, Clock::time_point deadline, const std::string& path) {
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    int timeout = poll_timeout(deadline);
    int rc = poll(&pfd, 1, timeout);
    if (rc > 0) return Status::Ok();
    if (rc < 0 && errno != EINTR) return Status::io("supervisor " + path + ": poll: " + errno_text(errno));
    if (rc == 0 && Clock::now() >= deadline)
      return Status::timeout("supervisor " + path + ": no state received before the deadline");
  }
}

// Collects every fd of every SCM_RIGHTS message in `msg` into `fds`.
void collect_fds(msghdr* msg, std::vector<UniqueFd>* fds) {
  for (cmsghdr* c = CMSG_FIRSTHDR(msg); c != nullptr; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(c);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, data + i * sizeof(int), sizeof fd);
      fds->emplace_back(fd);
    }
  }
}

}  // namespace

Status send_state(const std::string& supervisor_path, std::span<const uint8_t> state, int fuse_fd,
                  std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  NYDUS_TRY(make_address(supervisor_path, &addr));
  if (fuse_fd < 0 || fcntl(fuse_fd, F_GETFD) < 0)
    return Status::invalid("supervisor: no valid fd to send (fd " + std::to_string(fuse_fd) + ")");
  // A zero-length stream sendmsg transmits no data and so drops the fd too.
  if (state.empty()) return Status::invalid("supervisor: refusing to send an empty state");

  UniqueFd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return Status::io("supervisor: socket: " + errno_text(errno));
  // Bounds connect (full backlog) and every blocking write below.
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1000;
  setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  for (;;) {
    if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
    if (errno == EINTR) continue;
    int err = errno;
    if (err == EAGAIN || err == EINPROGRESS)
      return Status::timeout("supervisor " + supervisor_path + ": connect timed out (backlog full)");
    return Status::io("supervisor " + supervisor_path + ": connect: " + errno_text(err));
  }

  // Send a dup so that the caller's fd never depends on this exchange.
  UniqueFd dup_fd(fcntl(fuse_fd, F_DUPFD_CLOEXEC, 3));
  if (!dup_fd.valid()) return Status::io("supervisor: dup of fd " + std::to_string(fuse_fd) + ": " + errno_text(errno));

  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))] = {};
  iovec iov{const_cast<uint8_t*>(state.data()), state.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  int raw = dup_fd.get();
  std::memcpy(CMSG_DATA(c), &raw, sizeof raw);

  ssize_t sent;
  for (;;) {
    sent = sendmsg(sock.get(), &msg, MSG_NOSIGNAL);
    if (sent >= 0) break;
    if (errno == EINTR) continue;  // nothing was sent, the fd neither
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK)
      return Status::timeout("supervisor " + supervisor_path + ": sendmsg timed out");
    return Status::io("supervisor " + supervisor_path + ": sendmsg: " + errno_text(err));
  }
  // The fd went with the first byte; the rest are plain writes.
  size_t done = static_cast<size_t>(sent);
  while (done < state.size()) {
    ssize_t n = send(sock.get(), state.data() + done, state.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    int err = n < 0 ? errno : EPIPE;
    if (err == EAGAIN || err == EWOULDBLOCK)
      return Status::timeout("supervisor " + supervisor_path + ": write timed out after " + std::to_string(done) +
                             " of " + std::to_string(state.size()) + " bytes");
    return Status::io("supervisor " + supervisor_path + ": write after " + std::to_string(done) + " of " +
                      std::to_string(state.size()) + " bytes: " + errno_text(err));
  }
  return Status::Ok();
}

Result<ReceivedState> receive_state(const std::string& path, Clock::time_point deadline) {
  sockaddr_un addr{};
  NYDUS_TRY(make_address(path, &addr));

  UniqueFd sock;
  int last_err = 0;
  for (;;) {
    sock.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!sock.valid()) return Status::io("supervisor: socket: " + errno_text(errno));
    if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
    last_err = errno;
    // Not listening yet (no file, stale file) or backlog full: retry.
    if (last_err != ENOENT && last_err != ECONNREFUSED && last_err != EAGAIN && last_err != EINTR)
      return Status::io("supervisor " + path + ": connect: " + errno_text(last_err));
    if (Clock::now() >= deadline)
      return Status::timeout("supervisor " + path + ": not listening before the deadline (last error: " +
                             errno_text(last_err) + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  ReceivedState out;
  std::vector<UniqueFd> fds;
  std::vector<uint8_t> buf(kSupervisorFirstRecvBytes);
  bool truncated = false;
  bool first = true;
  for (;;) {
    NYDUS_TRY(wait_readable(sock.get(), deadline, path));
    alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * kSupervisorMaxFds)];
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(sock.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return Status::io("supervisor " + path + ": recvmsg: " + errno_text(errno));
    }
    collect_fds(&msg, &fds);
    if (msg.msg_flags & MSG_CTRUNC) truncated = true;
    if (n == 0) break;  // EOF
    if (out.data.size() + static_cast<size_t>(n) > kSupervisorMaxStateBytes)
      return Status::invalid("supervisor " + path + ": state larger than " +
                             std::to_string(kSupervisorMaxStateBytes) + " bytes");
    out.data.insert(out.data.end(), buf.begin(), buf.begin() + n);
    if (first) {
      // After the first message, read the rest in bigger pieces.
      buf.resize(256 * 1024);
      first = false;
    }
  }
  if (truncated) LOG_WARN("supervisor %s: more than %zu fds sent; the kernel dropped the excess", path.c_str(),
                          kSupervisorMaxFds);
  if (fds.empty()) return Status::invalid("supervisor " + path + ": no fd received with the state");
  if (fds.size() > 1) LOG_WARN("supervisor %s: %zu fds received; keeping the first", path.c_str(), fds.size());
  out.fd = std::move(fds.front());
  // The rest close when `fds` goes out of scope.
  return out;
}

}  // namespace nydus::daemon
