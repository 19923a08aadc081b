// The FUSE low-level adapter: translates requests into fs::Filesystem calls
// and Status into errno replies. Each op replies exactly once; no exception
// escapes into libfuse (a thrown bad_alloc becomes ENOMEM, anything else
// EIO). The session's userdata must be a FuseContext that outlives it.
//
// Metrics: with FuseContext::metrics set, every op with an upstream fop
// index (all but init and releasedir) is counted as a hit or an error and
// timed (fs::FopTimer), reads also add their bytes; see fs/fs_metrics.h for
// what is counted and where it differs from upstream. Per-inode records use
// the image's inode number (Filesystem::ino_of), as upstream does.
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "fs/filesystem.h"
#include "fs/fs_metrics.h"

namespace nydus::daemon {

struct FuseContext {
  fs::Filesystem* fs = nullptr;
  fs::FsMetrics* metrics = nullptr;  // nullptr = no metrics; must outlive the session
  double entry_timeout = 86400;  // the image is immutable: cache for long
  double attr_timeout = 86400;
};

const fuse_lowlevel_ops& fuse_operations();

}  // namespace nydus::daemon
