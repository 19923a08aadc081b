#include "daemon/fuse_server.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "common/log.h"
#include "daemon/fuse_ops.h"

namespace nydus::daemon {

struct FuseSession::Context {
  FuseContext fuse;
  InflightOps inflight;
};

namespace {

using Clock = std::chrono::steady_clock;

// FUSE_NOTIFY_RESEND (kernel 6.9, protocol 7.40): the kernel moves every
// request some daemon has read but not answered back to the pending queue.
// Debian 12's <linux/fuse.h> (7.38) predates it.
constexpr int kFuseNotifyResend = 7;
// /dev/fuse is misc device 10:229 (FUSE_MINOR).
constexpr unsigned kFuseDevMajor = 10;
constexpr unsigned kFuseDevMinor = 229;
constexpr auto kInitWait = std::chrono::seconds(10);

// SIGUSR1 only interrupts the loop thread's wait inside libfuse's loop
// (installed without SA_RESTART; sem_wait is never restarted anyway).
void wake_handler(int) {}

void route_libfuse_logs(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  size_t n = strlen(buf);
  while (n > 0 && buf[n - 1] == '\n') buf[--n] = '\0';
  if (level <= FUSE_LOG_ERR) LOG_ERROR("libfuse: %s", buf);
  else if (level <= FUSE_LOG_NOTICE) LOG_INFO("libfuse: %s", buf);
  else LOG_DEBUG("libfuse: %s", buf);
}

void install_process_hooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    fuse_set_log_func(route_libfuse_logs);
    struct sigaction sa {};
    sa.sa_handler = wake_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGUSR1, &sa, nullptr);
  });
}

std::string errno_text(int err) { return std::strerror(err); }

// --- /proc/self/mountinfo ---------------------------------------------------

struct MountEntry {
  std::string mount_point;
  std::string fstype;
  std::string source;
  unsigned major = 0;
  unsigned minor = 0;
};

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mount_field(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto octal = [&](size_t k, char max) { return s[k] >= '0' && s[k] <= max; };
    if (s[i] == '\\' && i + 3 < s.size() && octal(i + 1, '3') && octal(i + 2, '7') && octal(i + 3, '7')) {
      out += static_cast<char>(((s[i + 1] - '0') << 6) | ((s[i + 2] - '0') << 3) | (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string normalize_path(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// The topmost mount at `path` (the last matching line: later mounts stack
// on top of earlier ones).
std::optional<MountEntry> topmost_mount(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return std::nullopt;
  const std::string want = normalize_path(path);
  std::optional<MountEntry> found;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::vector<std::string> f;
    for (std::string w; fields >> w;) f.push_back(w);
    // id parent major:minor root mount_point options [optional...] - fstype source super_options
    size_t dash = 0;
    for (size_t i = 6; i < f.size(); ++i) {
      if (f[i] == "-") {
        dash = i;
        break;
      }
    }
    if (dash == 0 || dash + 1 >= f.size()) continue;
    if (unescape_mount_field(f[4]) != want) continue;
    MountEntry e;
    e.mount_point = want;
    if (std::sscanf(f[2].c_str(), "%u:%u", &e.major, &e.minor) != 2) continue;
    e.fstype = f[dash + 1];
    e.source = dash + 2 < f.size() ? unescape_mount_field(f[dash + 2]) : "";
    found = e;
  }
  return found;
}

bool is_fuse_type(const std::string& fstype) { return fstype == "fuse" || fstype.rfind("fuse.", 0) == 0; }

uint64_t conn_id_from(const MountEntry& e) {
  // The kernel's MKDEV: fusectl names the directory after sb->s_dev.
  return (uint64_t{e.major} << 20) | e.minor;
}

// --- fusectl ----------------------------------------------------------------

// Writes "1" to <base>/<conn>/<file> for the first base that has it.
Result<std::string> write_fusectl(uint64_t conn, const char* file) {
  std::string last_error;
  for (const char* base : {"/proc/sys/fs/fuse/connections", "/sys/fs/fuse/connections"}) {
    std::string path = std::string(base) + "/" + std::to_string(conn) + "/" + file;
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd.valid()) {
      last_error = path + ": " + errno_text(errno);
      continue;
    }
    if (write(fd.get(), "1", 1) != 1) return Status::io(path + ": write: " + errno_text(errno));
    return path;
  }
  return Status::unsupported("no fusectl '" + std::string(file) + "' file (" + last_error + ")");
}

Status check_fuse_device(int fd) {
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0) return Status::invalid("takeover: fd " + std::to_string(fd) + " is not open");
  if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != kFuseDevMajor || minor(st.st_rdev) != kFuseDevMinor)
    return Status::invalid("takeover: the received fd is not /dev/fuse (mode " + std::to_string(st.st_mode) +
                           ", rdev " + std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev)) +
                           ")");
  return Status::Ok();
}

Status lazy_unmount(const std::string& mountpoint) {
  if (umount2(mountpoint.c_str(), MNT_DETACH) == 0) return Status::Ok();
  const int err = errno;
  if (err != EPERM) return Status::io("umount " + mountpoint + ": " + errno_text(err));
  // Not root: the setuid helper can unmount a FUSE mount we own.
  pid_t pid = fork();
  if (pid < 0) return Status::io("fork: " + errno_text(errno));
  if (pid == 0) {
    execlp("fusermount3", "fusermount3", "-u", "-q", "-z", "--", mountpoint.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  return Status::io("umount " + mountpoint + ": " + errno_text(err) + "; fusermount3 -u -z failed too");
}

}  // namespace

// --- failover policy --------------------------------------------------------

Result<FailoverPolicy> parse_failover_policy(std::string_view text) {
  if (text == "none") return FailoverPolicy::kNone;
  if (text == "flush") return FailoverPolicy::kFlush;
  if (text == "resend") return FailoverPolicy::kResend;
  return Status::invalid("invalid FUSE fail-over mode " + std::string(text));
}

const char* failover_policy_name(FailoverPolicy policy) {
  switch (policy) {
    case FailoverPolicy::kNone: return "none";
    case FailoverPolicy::kFlush: return "flush";
    case FailoverPolicy::kResend: return "resend";
  }
  return "none";
}

// --- FuseSession ------------------------------------------------------------

FuseSession::FuseSession(fs::Vfs& vfs, const FuseServerOptions& options)
    : options_(options), context_(std::make_unique<Context>()) {
  context_->fuse.vfs = &vfs;
  context_->fuse.inflight = &context_->inflight;
}

Status FuseSession::create_session() {
  install_process_hooks();
  std::vector<std::string> argv_storage = {
      "nydusd", "-o", "ro,nosuid,nodev,noatime,default_permissions,allow_other,fsname=rafs"};
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  const fuse_lowlevel_ops& ops = fuse_operations();
  se_ = fuse_session_new(&args, &ops, sizeof ops, &context_->fuse);
  fuse_opt_free_args(&args);
  if (!se_) return Status::io("cannot create the FUSE session");
  return Status::Ok();
}

Result<std::unique_ptr<FuseSession>> FuseSession::mount(fs::Vfs& vfs, const FuseServerOptions& options) {
  std::unique_ptr<FuseSession> session(new FuseSession(vfs, options));
  NYDUS_TRY(session->create_session());
  if (fuse_session_mount(session->se_, options.mountpoint.c_str()) != 0)
    return Status::io("cannot mount FUSE at " + options.mountpoint + " (is /dev/fuse available and are we root?)");
  auto entry = topmost_mount(options.mountpoint);
  if (entry && is_fuse_type(entry->fstype)) {
    session->conn_id_ = conn_id_from(*entry);
  } else {
    LOG_WARN("mounted %s but /proc/self/mountinfo does not show it as fuse; FUSE connection id unknown",
             options.mountpoint.c_str());
  }
  LOG_INFO("mounted rafs at %s (FUSE connection %llu), up to %u FUSE threads%s", options.mountpoint.c_str(),
           static_cast<unsigned long long>(session->conn_id_), options.max_threads,
           options.clone_fd ? ", one cloned fd each" : ", sharing the session fd");
  return session;
}

Result<std::unique_ptr<FuseSession>> FuseSession::take_over(fs::Vfs& vfs, const FuseServerOptions& options,
                                                             UniqueFd fuse_fd, const TakeoverParams& params) {
  NYDUS_TRY(check_fuse_device(fuse_fd.get()));
  if (params.init.major != 7)
    return Status::invalid("takeover: FUSE_INIT protocol " + std::to_string(params.init.major) + "." +
                           std::to_string(params.init.minor) + " cannot be replayed (need 7.x)");
  // The mountpoint must be that connection: mountinfo only, never a stat
  // (which would wait on the connection nobody serves yet).
  auto entry = topmost_mount(options.mountpoint);
  if (!entry || !is_fuse_type(entry->fstype))
    return Status::invalid("takeover: " + options.mountpoint + " is not a FUSE mount");
  const uint64_t actual_conn = conn_id_from(*entry);
  if (params.conn_id != 0 && params.conn_id != actual_conn)
    return Status::invalid("takeover: " + options.mountpoint + " is FUSE connection " + std::to_string(actual_conn) +
                           ", the saved state is for connection " + std::to_string(params.conn_id));

  std::unique_ptr<FuseSession> session(new FuseSession(vfs, options));
  NYDUS_TRY(session->create_session());
  session->adopted_ = true;
  session->conn_id_ = actual_conn;

  // Give the session an fd number that refers to /dev/null for now;
  // fuse_session_mount("/dev/fd/N") adopts N without mounting (3.14:
  // fuse_mnt_parse_fuse_fd) and libfuse will not unmount it either.
  UniqueFd placeholder(open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!placeholder.valid()) return Status::io("open /dev/null: " + errno_text(errno));
  const std::string dev_fd = "/dev/fd/" + std::to_string(placeholder.get());
  if (fuse_session_mount(session->se_, dev_fd.c_str()) != 0)
    return Status::io("takeover: libfuse refused " + dev_fd);
  const int session_fd = placeholder.release();  // closed by fuse_session_destroy

  // Replay the kernel's INIT. The reply is written to /dev/null.
  struct {
    fuse_in_header header;
    fuse_init_in init;
  } message{};
  message.header.len = sizeof message;
  message.header.opcode = FUSE_INIT;
  message.header.unique = 1;
  message.init.major = params.init.major;
  message.init.minor = params.init.minor;
  message.init.max_readahead = params.init.max_readahead;
  message.init.flags = params.init.flags;
  message.init.flags2 = params.init.flags2;
  fuse_buf buf{};
  buf.size = sizeof message;
  buf.mem = &message;
  fuse_session_process_buf(session->se_, &buf);
  if (fuse_session_exited(session->se_))
    return Status::invalid("takeover: libfuse rejected the replayed FUSE_INIT " + std::to_string(params.init.major) +
                           "." + std::to_string(params.init.minor));

  // Now make the session's fd number the connection.
  if (dup3(fuse_fd.get(), session_fd, O_CLOEXEC) < 0)
    return Status::io("takeover: dup3 of the /dev/fuse fd: " + errno_text(errno));
  fuse_fd.reset();
  {
    std::lock_guard lk(session->state_mu_);
    session->init_ = params.init;
  }
  session->initialized_.store(true);
  LOG_INFO("took over FUSE connection %llu at %s (protocol %u.%u, flags 0x%x/0x%x)",
           static_cast<unsigned long long>(actual_conn), options.mountpoint.c_str(), params.init.major,
           params.init.minor, params.init.flags, params.init.flags2);

  session->pending_policy_ = params.policy;
  return session;
}

FuseSession::~FuseSession() {
  stop();
  if (se_ && !adopted_ && !unmounted_.load()) forget_mountpoint();
  if (se_) fuse_session_destroy(se_);
}

void FuseSession::forget_mountpoint() {
  // libfuse 3.14 frees the mountpoint string it keeps only in
  // fuse_session_unmount() (fuse_session_destroy() leaks it: LeakSanitizer
  // fails every ASan daemon that exits without unmounting). That function
  // skips the umount when poll() on the session fd reports POLLERR (a
  // severed connection, lib/mount.c fuse_kern_unmount). So: put a pipe
  // write end without a reader, which always polls POLLERR, under the
  // session's fd number (dropping our reference to the connection, as
  // fuse_session_destroy would) and let it free the string.
  const int session_fd = fuse_session_fd(se_);
  int p[2];
  if (session_fd < 0 || pipe2(p, O_CLOEXEC) != 0) return;
  close(p[0]);
  pollfd pfd{p[1], 0, 0};
  const bool pollerr = poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR);
  // Without POLLERR libfuse would unmount: keep the leak instead.
  if (pollerr && dup3(p[1], session_fd, O_CLOEXEC) >= 0) fuse_session_unmount(se_);
  close(p[1]);
}

int FuseSession::fd() const { return se_ && !unmounted_.load() ? fuse_session_fd(se_) : -1; }

void FuseSession::invalidate(const fs::VfsChange& change, bool umount) {
  std::lock_guard lk(mu_);  // not while start/stop/unmount change the session
  if (!running_.load() || unmounted_.load()) return;
  // Errors are expected and harmless: ENOENT when the kernel has nothing
  // cached under that name or inode.
  if (!change.entry_name.empty())
    fuse_lowlevel_notify_inval_entry(se_, change.entry_parent, change.entry_name.data(), change.entry_name.size());
  fuse_lowlevel_notify_inval_inode(se_, change.entry_parent ? change.entry_parent : fs::kRootNode, 0, 0);
  if (umount && change.mount.root != 0) fuse_lowlevel_notify_inval_inode(se_, change.mount.root, 0, 0);
}

std::vector<InflightOp> FuseSession::inflight() const { return context_->inflight.snapshot(); }

std::optional<FuseInitParams> FuseSession::init_params() const {
  std::lock_guard lk(state_mu_);
  return init_;
}

Result<std::string> FuseSession::apply_failover_policy(FailoverPolicy policy) {
  switch (policy) {
    case FailoverPolicy::kNone:
      return std::string("none");
    case FailoverPolicy::kFlush:
      return write_fusectl(conn_id_, "flush");
    case FailoverPolicy::kResend: {
      fuse_out_header out{};
      out.len = sizeof out;
      out.error = kFuseNotifyResend;  // for a notification: the code
      out.unique = 0;                 // 0 marks a notification
      ssize_t n = write(fuse_session_fd(se_), &out, sizeof out);
      if (n == static_cast<ssize_t>(sizeof out)) return std::string("FUSE_NOTIFY_RESEND");
      const int err = n < 0 ? errno : EIO;
      LOG_INFO("FUSE_NOTIFY_RESEND not accepted (%s); trying fusectl", errno_text(err).c_str());
      return write_fusectl(conn_id_, "resend");
    }
  }
  return Status::invalid("unknown failover policy");
}

Status FuseSession::process_kernel_init() {
  // A >7 major is answered with "retry with 7.x"; the kernel then sends a
  // second INIT. Anything else ends after one request.
  for (int attempt = 0; attempt < 2; ++attempt) {
    pollfd pfd{fuse_session_fd(se_), POLLIN, 0};
    int rc;
    do {
      rc = poll(&pfd, 1, static_cast<int>(std::chrono::milliseconds(kInitWait).count()));
    } while (rc < 0 && errno == EINTR);
    if (rc == 0) return Status::timeout("no FUSE_INIT from the kernel within 10 s");
    if (rc < 0) return Status::io("poll /dev/fuse: " + errno_text(errno));

    fuse_buf buf{};
    int res = fuse_session_receive_buf(se_, &buf);
    if (res <= 0 || (buf.flags & FUSE_BUF_IS_FD) || buf.size < sizeof(fuse_in_header)) {
      free(buf.mem);
      return Status::io("the FUSE connection ended before FUSE_INIT (" + std::to_string(res) + ")");
    }
    const auto* in = static_cast<const fuse_in_header*>(buf.mem);
    const bool is_init = in->opcode == FUSE_INIT;
    fuse_init_in arg{};
    if (is_init) std::memcpy(&arg, in + 1, std::min(buf.size - sizeof *in, sizeof arg));
    fuse_session_process_buf(se_, &buf);
    free(buf.mem);
    if (!is_init) return Status::io("first FUSE request is not INIT");
    if (fuse_session_exited(se_)) return Status::io("FUSE_INIT failed (see the libfuse message above)");
    if (arg.major > 7) continue;
    FuseInitParams p;
    p.major = arg.major;
    p.minor = arg.minor;
    p.max_readahead = arg.max_readahead;
    p.flags = arg.flags;
    p.flags2 = arg.flags2;
    {
      std::lock_guard lk(state_mu_);
      init_ = p;
    }
    initialized_.store(true);
    LOG_INFO("FUSE_INIT: kernel protocol %u.%u, flags 0x%x/0x%x, max_readahead %u", p.major, p.minor, p.flags,
             p.flags2, p.max_readahead);
    return Status::Ok();
  }
  return Status::io("the kernel sent no 7.x FUSE_INIT");
}

void FuseSession::loop_ended() {
  if (live_threads_.fetch_sub(1) != 1) return;
  {
    std::lock_guard lk(state_mu_);
    if (!stop_requested_.load()) {
      lost_.store(true);
      LOG_INFO("FUSE session ended: the connection at %s is gone", options_.mountpoint.c_str());
    }
  }
  lost_cv_.notify_all();
}

void FuseSession::run_libfuse_loop() {
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  fuse_loop_cfg_set_max_threads(cfg, options_.max_threads);
  const int rc = fuse_session_loop_mt(se_, cfg);
  fuse_loop_cfg_destroy(cfg);
  if (rc != 0 && !stop_requested_.load()) LOG_INFO("libfuse loop returned %d", rc);
  loop_ended();
}

void FuseSession::run_worker() {
  fuse_buf buf{};
  while (!stop_requested_.load()) {
    // Blocks in read(2) on the session fd. stop()'s SIGUSR1 makes it return
    // -EINTR unless a request was already read, which is then answered.
    const int res = fuse_session_receive_buf(se_, &buf);
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res <= 0) {
      // 0: ENODEV, the connection is gone (libfuse marked the session
      // exited); < 0: a read error libfuse has printed.
      if (res < 0) LOG_ERROR("reading /dev/fuse: %s", errno_text(-res).c_str());
      fuse_session_exit(se_);
      break;
    }
    if (!(buf.flags & FUSE_BUF_IS_FD) && buf.size >= sizeof(fuse_in_header))
      InflightOps::note_unique(static_cast<const fuse_in_header*>(buf.mem)->unique);
    fuse_session_process_buf(se_, &buf);
  }
  free(buf.mem);
  loop_ended();
}

Status FuseSession::start() {
  std::lock_guard lk(mu_);
  if (running_.load()) return Status::Ok();
  if (unmounted_.load()) return Status::invalid("FUSE session at " + options_.mountpoint + " is unmounted");
  if (lost_.load() || fuse_session_exited(se_))
    return Status::io("FUSE connection at " + options_.mountpoint + " is gone");
  if (!initialized_.load()) NYDUS_TRY(process_kernel_init());
  if (pending_policy_) {
    // After a takeover, once: by now a predecessor that was still serving
    // during the takeover (hot upgrade) has exited, so what it read and did
    // not answer is in the kernel's processing queue.
    const FailoverPolicy policy = *pending_policy_;
    pending_policy_.reset();
    auto applied = apply_failover_policy(policy);
    if (applied.ok()) {
      LOG_INFO("failover policy %s: %s", failover_policy_name(policy), applied->c_str());
    } else {
      LOG_WARN("failover policy %s could not be applied: %s", failover_policy_name(policy),
               applied.status().message().c_str());
    }
  }
  stop_requested_.store(false);
  // Threads inherit the caller's mask (block_shutdown_signals()); only the
  // wake-up signal must get through.
  sigset_t wake, old;
  sigemptyset(&wake);
  sigaddset(&wake, SIGUSR1);
  pthread_sigmask(SIG_UNBLOCK, &wake, &old);
  const unsigned n = options_.clone_fd ? 1 : std::max(1u, options_.max_threads);
  live_threads_.store(static_cast<int>(n));
  for (unsigned i = 0; i < n; ++i) {
    if (options_.clone_fd) threads_.emplace_back([this] { run_libfuse_loop(); });
    else threads_.emplace_back([this] { run_worker(); });
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  running_.store(true);
  return Status::Ok();
}

void FuseSession::stop() {
  std::lock_guard lk(mu_);
  if (!running_.load()) return;
  stop_requested_.store(true);
  // libfuse's loop needs its exit flag; our workers must not see it (it
  // would make libfuse drop requests they read).
  if (options_.clone_fd) fuse_session_exit(se_);
  // Poke until every thread has left: a worker blocked in read(2) returns
  // EINTR; libfuse's loop thread leaves its sem_wait. A poke may land just
  // before a thread blocks, hence the repetition.
  while (live_threads_.load() > 0) {
    for (auto& t : threads_) pthread_kill(t.native_handle(), SIGUSR1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  for (auto& t : threads_) t.join();
  threads_.clear();
  running_.store(false);
  // The session can be started again (libfuse's loop resets its exit flag
  // when it returns; ours never set it) unless the connection is gone.
}

Status FuseSession::unmount() {
  stop();
  std::lock_guard lk(mu_);
  if (unmounted_.load()) return Status::Ok();
  if (!adopted_) {
    // Ours: libfuse knows the mountpoint (lazy umount, closes the fd).
    fuse_session_unmount(se_);
    unmounted_.store(true);
    return Status::Ok();
  }
  auto entry = topmost_mount(options_.mountpoint);
  if (!entry) {
    unmounted_.store(true);  // already gone
    return Status::Ok();
  }
  if (!is_fuse_type(entry->fstype) || conn_id_from(*entry) != conn_id_)
    return Status::invalid("not unmounting " + options_.mountpoint + ": the topmost mount there is not FUSE connection " +
                           std::to_string(conn_id_));
  NYDUS_TRY(lazy_unmount(options_.mountpoint));
  unmounted_.store(true);
  return Status::Ok();
}

bool FuseSession::wait_connection_lost(Clock::time_point deadline) {
  std::unique_lock lk(state_mu_);
  lost_cv_.wait_until(lk, deadline, [this] { return lost_.load(); });
  return lost_.load();
}

// --- process-level helpers ----------------------------------------------------

void block_shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

ShutdownCause wait_for_shutdown(FuseSession& session) {
  return wait_for_shutdown([&session] { return session.connection_lost(); });
}

ShutdownCause wait_for_shutdown(const std::function<bool()>& connection_lost) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  for (;;) {
    if (connection_lost && connection_lost()) return ShutdownCause::kConnectionLost;
    timespec tick{0, 100 * 1000 * 1000};
    int sig = sigtimedwait(&set, nullptr, &tick);
    if (sig == SIGHUP) continue;  // no reload semantics; stay up
    if (sig > 0) {
      LOG_INFO("received signal %d, stopping", sig);
      return ShutdownCause::kSignal;
    }
  }
}

bool previous_daemon_crashed(const std::string& mountpoint, const std::string& apisock) {
  auto entry = topmost_mount(mountpoint);
  if (!entry || !is_fuse_type(entry->fstype) || entry->source != "rafs") return false;
  struct stat st {};
  if (apisock.empty() || lstat(apisock.c_str(), &st) != 0) return false;
  sockaddr_un addr{};
  if (apisock.size() >= sizeof addr.sun_path) return false;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, apisock.data(), apisock.size());
  UniqueFd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock.valid()) return false;
  if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) return false;
  // EAGAIN: a listener with a full backlog is alive. Anything else
  // (ECONNREFUSED, ENOTSOCK, ...) means nobody is serving that socket.
  const bool crashed = errno != EAGAIN && errno != EINPROGRESS;
  if (crashed)
    LOG_WARN("a previous daemon crashed: %s is still a rafs FUSE mount and %s refuses connections; "
             "waiting for takeover",
             mountpoint.c_str(), apisock.c_str());
  return crashed;
}

std::optional<uint64_t> fuse_conn_id_of(const std::string& mountpoint) {
  auto entry = topmost_mount(mountpoint);
  if (!entry || !is_fuse_type(entry->fstype)) return std::nullopt;
  return conn_id_from(*entry);
}

}  // namespace nydus::daemon
