#include "common/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <mutex>
#include <string>
#include <vector>

namespace nydus::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::mutex g_sink_mu;  // guards the file sink fields below
int g_fd = STDERR_FILENO;
std::string g_path;
unsigned long long g_rotation_bytes = 0;
unsigned long long g_written = 0;

const char* base_name(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

// Keeps the 10 newest "<path>.<digits>" files, removes older ones.
void prune_rotated(const std::string& path) {
  std::string dir = ".", base = path;
  if (auto pos = path.rfind('/'); pos != std::string::npos) {
    dir = path.substr(0, pos);
    base = path.substr(pos + 1);
  }
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> rotated;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() > base.size() + 1 && name.compare(0, base.size() + 1, base + ".") == 0)
      rotated.push_back(name);
  }
  closedir(d);
  std::sort(rotated.begin(), rotated.end());
  while (rotated.size() > 10) {
    unlink((dir + "/" + rotated.front()).c_str());
    rotated.erase(rotated.begin());
  }
}

void rotate_locked() {
  std::string rotated = g_path + "." + std::to_string(static_cast<long long>(time(nullptr)));
  rename(g_path.c_str(), rotated.c_str());
  int fd = open(g_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd >= 0) {
    close(g_fd);
    g_fd = fd;
  }
  g_written = 0;
  prune_rotated(g_path);
}

}  // namespace

bool parse_level(const std::string& text, Level* out) {
  std::string t = text;
  for (auto& c : t) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  if (t == "trace") *out = Level::kTrace;
  else if (t == "debug") *out = Level::kDebug;
  else if (t == "info") *out = Level::kInfo;
  else if (t == "warn" || t == "warning") *out = Level::kWarn;
  else if (t == "error") *out = Level::kError;
  else return false;
  return true;
}

const char* level_name(Level level) {
  switch (level) {
    case Level::kTrace: return "TRACE";
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kWarn: return "WARN";
    case Level::kError: return "ERROR";
  }
  return "?";
}

void set_level(Level level) { g_level.store(static_cast<int>(level)); }
Level level() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }

bool log_to_file(const std::string& path, unsigned long long rotation_bytes) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  struct stat st {};
  fstat(fd, &st);
  std::lock_guard<std::mutex> lock(g_sink_mu);
  if (g_fd != STDERR_FILENO) close(g_fd);
  g_fd = fd;
  g_path = path;
  g_rotation_bytes = rotation_bytes;
  g_written = static_cast<unsigned long long>(st.st_size);
  return true;
}

namespace {
std::atomic<ErrorSink> g_error_sink{nullptr};
}  // namespace

void write(Level level, const char* file, int line, const char* fmt, ...) {
  char buf[4096];
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  tm utc{};
  gmtime_r(&now.tv_sec, &utc);
  int n = std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ %s [%s:%d] ",
                        utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour,
                        utc.tm_min, utc.tm_sec, now.tv_nsec / 1000, level_name(level),
                        base_name(file), line);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + n, sizeof buf - static_cast<size_t>(n) - 1, fmt, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(n) + (m < 0 ? 0 : std::min<size_t>(static_cast<size_t>(m), sizeof buf - static_cast<size_t>(n) - 2));
  buf[len++] = '\n';
  {
    std::lock_guard<std::mutex> lock(g_sink_mu);
    ssize_t w = ::write(g_fd, buf, len);
    if (w > 0 && g_fd != STDERR_FILENO) {
      g_written += static_cast<unsigned long long>(w);
      if (g_rotation_bytes > 0 && g_written >= g_rotation_bytes) rotate_locked();
    }
  }
  // Outside the lock: the sink may take its own locks (never log).
  if (level == Level::kError) {
    if (ErrorSink sink = g_error_sink.load(std::memory_order_acquire))
      sink(std::string_view(buf + n, len - static_cast<size_t>(n) - 1));
  }
}

void set_error_sink(ErrorSink sink) { g_error_sink.store(sink, std::memory_order_release); }

}  // namespace nydus::log
