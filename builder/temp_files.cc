#include "builder/temp_files.h"

#include <limits.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>

namespace nydus::builder {

namespace {

// Fixed storage: the signal handler may only read it and call unlink().
struct Slot {
  std::atomic<bool> used{false};
  char path[PATH_MAX];
};
Slot g_slots[kMaxTempFiles];
std::mutex g_mu;  // serializes registration (never taken by the handler)

void on_signal(int sig) {
  for (auto& s : g_slots) {
    if (s.used.load(std::memory_order_acquire)) ::unlink(s.path);
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

}  // namespace

void register_temp_file(const std::string& path) {
  if (path.size() >= PATH_MAX) return;
  std::lock_guard<std::mutex> lk(g_mu);
  for (auto& s : g_slots) {
    if (!s.used.load(std::memory_order_relaxed)) {
      std::memcpy(s.path, path.c_str(), path.size() + 1);
      s.used.store(true, std::memory_order_release);
      return;
    }
  }
}

void unregister_temp_file(const std::string& path) {
  std::lock_guard<std::mutex> lk(g_mu);
  for (auto& s : g_slots) {
    if (s.used.load(std::memory_order_relaxed) && path == s.path) {
      s.used.store(false, std::memory_order_release);
      return;
    }
  }
}

void install_temp_file_cleanup() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
}

}  // namespace nydus::builder
