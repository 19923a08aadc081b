#include "backend/blob_id.h"

#include <string>

#include "common/text.h"

namespace nydus::backend {
Status check_blob_id(std::string_view id) {
  const char* why = nullptr;
  if (id.empty()) why = "is empty";
  else if (id.size() > 255) why = "is longer than 255 bytes";
  else if (id.find('/') != std::string_view::npos) why = "contains '/'";
  else if (id.find('\0') != std::string_view::npos) why = "contains a NUL byte";
  else if (id.find("..") != std::string_view::npos) why = "contains \"..\"";
  else if (id == ".") why = "is \".\"";
  if (why == nullptr) return Status::Ok();
  return Status::invalid("blob id \"" + escape_bytes(id, 128) + "\" " + why + "; refusing to use it as a file name");
}

}  // namespace nydus::backend
