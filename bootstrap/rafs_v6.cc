// PLACEHOLDER: replaced by the real reader.
#include "bootstrap/rafs_v6.h"

namespace nydus::bootstrap {

Result<std::unique_ptr<Image>> open_rafs_v6(FileBytes, const std::string& name) {
  return Status::unsupported("bootstrap " + name + ": RAFS v6 reader not built yet");
}

}  // namespace nydus::bootstrap
