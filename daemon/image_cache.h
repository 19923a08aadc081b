// ImageCache: opens bootstraps for RAFS instances, sharing one parsed
// bootstrap::Image among every instance that mounts the same file.
//
// Shared mode may attach one image many times (a snapshotter re-mounting an
// image, benchmarks mounting one image at 20 paths); each instance has its
// own backend, cache handles and counters, but the parsed metadata (the
// bootstrap bytes and their indexes, tens of MiB for a large image) is
// immutable and needs to exist once.
//
// "The same file" means the same (st_dev, st_ino, st_size, st_mtim,
// st_ctim) before and after the open: a file rewritten in place or replaced
// by rename gets a new key, so a changed bootstrap is parsed again and never
// served from a stale parse. Entries are weak: an Image goes away with the
// last instance that uses it.
//
// Thread-safety: open() may be called from any thread; concurrent opens of
// one new file may parse it twice (the second result is dropped), never
// block each other on a parse.
#pragma once

#include <memory>
#include <string>

#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::daemon {

class ImageCache {
 public:
  // The parsed bootstrap at `path`: a live shared one if the file is
  // unchanged since it was parsed, else freshly opened (errors as
  // bootstrap::Image::open).
  static Result<std::shared_ptr<const bootstrap::Image>> open(const std::string& path);
  // How many parsed images are alive (for tests and logs).
  static size_t live_images();
};

}  // namespace nydus::daemon
