// Formatting helpers for error and log messages. Names in images are raw
// bytes and ids come from untrusted files, so anything put into a one-line
// message goes through escape_bytes(). Pure functions, thread-safe.
#pragma once

#include <algorithm>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace nydus {

// "0x1f"
inline std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

// `s` with control bytes, DEL, '\\' and '"' written as \xNN, cut after
// `max_bytes` input bytes (then "..." is appended). Other bytes, UTF-8
// included, are kept so that real names stay readable.
inline std::string escape_bytes(std::string_view s, size_t max_bytes = 4096) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(std::min(s.size(), max_bytes));
  for (unsigned char c : s.substr(0, max_bytes)) {
    if (c < 0x20 || c == 0x7f || c == '\\' || c == '"') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max_bytes) out += "...";
  return out;
}

// escape_bytes() of at most 64 bytes, in double quotes: for names in messages.
inline std::string quoted(std::string_view s) { return "\"" + escape_bytes(s, 64) + "\""; }

}  // namespace nydus
