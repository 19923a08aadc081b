// Temporary output files of a running build (the blob and the bootstrap
// before their rename), removed when the process is interrupted by SIGINT,
// SIGTERM or SIGHUP, so an interrupted build leaves nothing half-written.
// Normal error paths remove their files themselves; this only covers
// signals. Thread-safe; at most kMaxTempFiles files are tracked at once
// (more are simply not cleaned up on a signal).
#pragma once

#include <string>

namespace nydus::builder {

inline constexpr int kMaxTempFiles = 16;

void register_temp_file(const std::string& path);
void unregister_temp_file(const std::string& path);

// Installs the handlers (once per process; the nydus-image CLI calls it).
void install_temp_file_cleanup();

}  // namespace nydus::builder
