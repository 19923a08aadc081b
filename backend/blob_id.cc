#include "backend/blob_id.h"

#include <string>

namespace nydus::backend {
namespace {

// The id may hold bytes that would garble a log line or a terminal.
std::string printable(std::string_view id) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : id.substr(0, 128)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    }
  }
  if (id.size() > 128) out += "...";
  return out;
}

}  // namespace

Status check_blob_id(std::string_view id) {
  const char* why = nullptr;
  if (id.empty()) why = "is empty";
  else if (id.size() > 255) why = "is longer than 255 bytes";
  else if (id.find('/') != std::string_view::npos) why = "contains '/'";
  else if (id.find('\0') != std::string_view::npos) why = "contains a NUL byte";
  else if (id.find("..") != std::string_view::npos) why = "contains \"..\"";
  else if (id == ".") why = "is \".\"";
  if (why == nullptr) return Status::Ok();
  return Status::invalid("blob id \"" + printable(id) + "\" " + why + "; refusing to use it as a file name");
}

}  // namespace nydus::backend
