#include "daemon/fuse_server.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "daemon/fuse_ops.h"

namespace nydus::daemon {
namespace {

// SIGUSR1 only interrupts the main thread's wait inside libfuse's loop
// (the handler is installed without SA_RESTART).
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

}  // namespace

void block_shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int serve_fuse(fs::Filesystem& fs, const FuseServerOptions& options) {
  fuse_set_log_func(route_libfuse_logs);
  struct sigaction sa {};
  sa.sa_handler = wake_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGUSR1, &sa, nullptr);

  FuseContext context;
  context.fs = &fs;
  context.metrics = options.metrics;
  std::vector<std::string> argv_storage = {
      "nydusd", "-o", "ro,nosuid,nodev,noatime,default_permissions,allow_other,fsname=rafs"};
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  const fuse_lowlevel_ops& ops = fuse_operations();
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &context);
  fuse_opt_free_args(&args);
  if (!se) {
    LOG_ERROR("cannot create the FUSE session");
    return 1;
  }
  if (fuse_session_mount(se, options.mountpoint.c_str()) != 0) {
    LOG_ERROR("cannot mount FUSE at %s (is /dev/fuse available and are we root?)", options.mountpoint.c_str());
    fuse_session_destroy(se);
    return 1;
  }
  LOG_INFO("mounted rafs at %s with up to %u FUSE threads", options.mountpoint.c_str(), options.max_threads);
  if (options.on_mounted) options.on_mounted();

  // Shutdown signals are blocked in every thread; this one takes them.
  std::atomic<bool> loop_done{false};
  std::atomic<bool> signalled{false};
  const pthread_t main_thread = pthread_self();
  std::thread signal_thread([&] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    while (!loop_done.load()) {
      timespec tick{0, 100 * 1000 * 1000};
      int sig = sigtimedwait(&set, nullptr, &tick);
      if (sig == SIGHUP) continue;  // no reload semantics; stay up
      if (sig > 0) {
        LOG_INFO("received signal %d, stopping", sig);
        signalled.store(true);
        fuse_session_exit(se);
      }
      // libfuse's main thread sleeps on a semaphore until a worker ends;
      // keep poking it (the first poke may land before it sleeps).
      if (signalled.load()) pthread_kill(main_thread, SIGUSR1);
    }
  });

  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  fuse_loop_cfg_set_max_threads(cfg, options.max_threads);
  int rc = fuse_session_loop_mt(se, cfg);
  fuse_loop_cfg_destroy(cfg);
  loop_done.store(true);
  signal_thread.join();

  if (signalled.load()) {
    LOG_INFO("unmounting %s", options.mountpoint.c_str());
  } else {
    LOG_INFO("FUSE session ended (rc %d): the mount at %s is gone", rc, options.mountpoint.c_str());
  }
  fuse_session_unmount(se);
  fuse_session_destroy(se);
  return 0;
}

}  // namespace nydus::daemon
