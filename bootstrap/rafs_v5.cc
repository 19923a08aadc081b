// PLACEHOLDER: replaced by the real reader.
#include "bootstrap/rafs_v5.h"

namespace nydus::bootstrap {

Result<std::unique_ptr<Image>> open_rafs_v5(FileBytes, const std::string& name) {
  return Status::unsupported("bootstrap " + name + ": RAFS v5 reader not built yet");
}

}  // namespace nydus::bootstrap
