// FuseServer: mounts an fs::Filesystem over FUSE and runs the multithreaded
// request loop until SIGTERM/SIGINT or until the mount disappears.
//
// Mount: source "rafs", type "fuse", options
// ro,nosuid,nodev,noatime,default_permissions,allow_other. Loop: libfuse's
// multithreaded loop with clone_fd (one /dev/fuse fd per worker).
// Shutdown on SIGTERM/SIGINT: workers are stopped, then the mount is
// removed, then serve() returns 0. An external umount also makes serve()
// return 0. serve() is called once, from the main thread, which must have
// called block_shutdown_signals() before starting any other thread.
#pragma once

#include <functional>
#include <string>

#include "fs/filesystem.h"
#include "fs/fs_metrics.h"

namespace nydus::daemon {

struct FuseServerOptions {
  std::string mountpoint;  // canonical, existing directory
  unsigned max_threads = 4;
  fs::FsMetrics* metrics = nullptr;  // optional; must outlive serve_fuse()
  // Called once on the calling thread after the mount exists and before
  // requests are served (the daemon moves to RUNNING and opens its API).
  std::function<void()> on_mounted;
};

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and so in every
// thread created after it), so that serve() can take them synchronously.
void block_shutdown_signals();

// Returns the process exit code: 0 after a clean stop, 1 if the mount
// could not be set up (with the reason logged).
int serve_fuse(fs::Filesystem& fs, const FuseServerOptions& options);

}  // namespace nydus::daemon
