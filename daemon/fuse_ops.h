// The FUSE low-level adapter: translates requests into fs::Vfs calls and
// Status into errno replies. Each op replies exactly once; no exception
// escapes into libfuse (a thrown bad_alloc becomes ENOMEM, anything else
// EIO). The session's userdata must be a FuseContext that outlives it.
//
// Metrics: each op counts into the FsMetrics of the instance that serves
// its node: the fs::FsMetrics the daemon passed as the mount's context to
// fs::Vfs::mount (nothing is counted for pseudo directories or mounts
// without one). Every op with an upstream fop index (all but init and
// releasedir) is counted as a hit or an error and timed (fs::FopTimer);
// reads also add their bytes; see fs/fs_metrics.h for what is counted and
// where it differs from upstream. Per-inode records use the image's inode
// number (Filesystem::ino_of), as upstream does.
//
// Shared mode: lookups report the mount's FUSE generation; negative lookups
// in pseudo directories are not cached (an image may be mounted there
// next). The daemon invalidates the kernel's dentries on mount and umount
// (FuseSession::invalidate).
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "daemon/inflight.h"
#include "fs/vfs.h"

namespace nydus::daemon {

struct FuseContext {
  fs::Vfs* vfs = nullptr;
  InflightOps* inflight = nullptr;  // nullptr = not tracked; must outlive the session
  double entry_timeout = 86400;  // images are immutable: cache for long
  double attr_timeout = 86400;
};

const fuse_lowlevel_ops& fuse_operations();

}  // namespace nydus::daemon
