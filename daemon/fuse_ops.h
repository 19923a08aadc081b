// The FUSE low-level adapter: translates requests into fs::Filesystem calls
// and Status into errno replies. Each op replies exactly once; no exception
// escapes into libfuse (a thrown bad_alloc becomes ENOMEM, anything else
// EIO). The session's userdata must be a FuseContext that outlives it.
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "fs/filesystem.h"

namespace nydus::daemon {

struct FuseContext {
  fs::Filesystem* fs = nullptr;
  double entry_timeout = 86400;  // the image is immutable: cache for long
  double attr_timeout = 86400;
};

const fuse_lowlevel_ops& fuse_operations();

}  // namespace nydus::daemon
