// LocalFsBackend: blobs are plain files. Either `dir` (+ `alt_dirs`), where
// blob <id> is the file `<dir>/<id>`, or one `blob_file` that serves every
// blob id. Files are opened on first use and kept open; reads use pread.
// Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend_metrics.h"
#include "backend/blob_backend.h"

namespace nydus::backend {

struct LocalFsConfig {
  std::string dir;
  std::string blob_file;
  std::vector<std::string> alt_dirs;
  BackendMetrics* metrics = nullptr;  // optional; must outlive the backend
};

std::unique_ptr<BlobBackend> make_localfs_backend(LocalFsConfig config);

}  // namespace nydus::backend
