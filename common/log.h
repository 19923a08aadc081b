// Process-wide logging: printf-style, one line per call, thread-safe.
//
// Lines look like "2026-11-28T01:02:03.123456Z INFO [file.cc:42] message".
// The sink is stderr until log_to_file() succeeds. All functions may be
// called from any thread; a line is written with one write(2) so lines from
// different threads never interleave.
#pragma once

#include <string>
#include <string_view>

namespace nydus::log {

enum class Level { kTrace = 0, kDebug, kInfo, kWarn, kError };

// Parses "trace|debug|info|warn|warning|error" (case-insensitive). Returns
// false for anything else.
bool parse_level(const std::string& text, Level* out);
const char* level_name(Level level);

void set_level(Level level);
Level level();

// Appends to `path`; when rotation_bytes > 0 the file is renamed to
// `path.<unix-time>` once it grows past that size and a new one is started
// (the 10 newest rotated files are kept). Returns false with errno set on
// failure; logging then stays on the previous sink.
bool log_to_file(const std::string& path, unsigned long long rotation_bytes);

// Receives the message text (without timestamp, level and newline) of
// every ERROR line, on the logging thread, after the line is written.
// Feeds GET /api/v1/daemon/events. The sink must not log. nullptr = none.
using ErrorSink = void (*)(std::string_view message);
void set_error_sink(ErrorSink sink);

void write(Level level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

}  // namespace nydus::log

#define NYDUS_LOG(log_level_, ...)                                              \
  do {                                                                          \
    if (static_cast<int>(log_level_) >= static_cast<int>(::nydus::log::level())) \
      ::nydus::log::write(log_level_, __FILE__, __LINE__, __VA_ARGS__);         \
  } while (0)
#define LOG_TRACE(...) NYDUS_LOG(::nydus::log::Level::kTrace, __VA_ARGS__)
#define LOG_DEBUG(...) NYDUS_LOG(::nydus::log::Level::kDebug, __VA_ARGS__)
#define LOG_INFO(...) NYDUS_LOG(::nydus::log::Level::kInfo, __VA_ARGS__)
#define LOG_WARN(...) NYDUS_LOG(::nydus::log::Level::kWarn, __VA_ARGS__)
#define LOG_ERROR(...) NYDUS_LOG(::nydus::log::Level::kError, __VA_ARGS__)
