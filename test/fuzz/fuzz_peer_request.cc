// libFuzzer target: what a peer or an asker sends the P2P node is
// untrusted. The input is split at NUL bytes into a request path, a Range
// header, an X-Dragonfly-Registry header, an ns argument and a Content-
// Range header; the first 8 bytes (when present) are the blob size the
// Range is taken against. Every parser either refuses with a message or
// returns a value that holds its invariants:
//   parse_blob_path: a 64-lowercase-hex digest and a repository name that
//     rebuilds the path exactly, with no "..", "//", or outer '/';
//   parse_range_header: first <= last < size;
//   origin_from: "" or http(s)://authority with no path, user info, query,
//     space or trailing '/';
//   parse_content_range: first <= last < total, and the value formatted
//     back parses to the same numbers.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "p2p/peer_client.h"
#include "p2p/peer_server.h"

namespace {

using nydus::Code;

bool lower_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

void check_blob_path(const std::string& path) {
  auto t = nydus::p2p::parse_blob_path(path);
  if (!t.ok()) {
    if (t.status().message().empty()) std::abort();
    if (t.status().code() != Code::kNotFound && t.status().code() != Code::kInvalidInput) std::abort();
    return;
  }
  if (!lower_hex64(t->digest)) std::abort();
  const std::string& r = t->repo;
  if (r.empty() || r.front() == '/' || r.back() == '/') std::abort();
  if (r.find("..") != std::string::npos || r.find("//") != std::string::npos) std::abort();
  for (char c : r)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' || c == '/'))
      std::abort();
  if ("/v2/" + r + "/blobs/sha256:" + t->digest != path) std::abort();
}

void check_range(const std::string& value, uint64_t size) {
  auto span = nydus::p2p::parse_range_header(value, size);
  if (!span.ok()) {
    if (span.status().message().empty()) std::abort();
    if (span.status().code() != Code::kNotFound && span.status().code() != Code::kInvalidInput) std::abort();
    return;
  }
  if (!(span->first <= span->last && span->last < size)) std::abort();
  if (value.rfind("bytes=", 0) != 0 || value.find(',') != std::string::npos) std::abort();
}

void check_origin(const char* registry, const char* ns) {
  auto origin = nydus::p2p::origin_from(registry, ns);
  const bool given = (registry && *registry) || (ns && *ns);
  if (!origin.ok()) {
    if (!given || origin.status().code() != Code::kInvalidInput || origin.status().message().empty()) std::abort();
    return;
  }
  const std::string& url = *origin;
  if (url.empty()) {
    if (given) std::abort();
    return;
  }
  size_t scheme = 0;
  if (url.rfind("http://", 0) == 0)
    scheme = 7;
  else if (url.rfind("https://", 0) == 0)
    scheme = 8;
  else
    std::abort();
  const std::string authority = url.substr(scheme);
  if (authority.empty() || url.back() == '/') std::abort();
  for (char c : authority)
    if (c == '/' || c == '@' || c == '?' || c == '#' || c == ' ' || c == '\r' || c == '\n' || c == '\0')
      std::abort();
  // The header wins over ns.
  if (registry && *registry && std::string(registry).rfind(url, 0) != 0) std::abort();
}

void check_content_range(const std::string& value) {
  nydus::p2p::ContentRange cr{1, 2, 3};
  if (!nydus::p2p::parse_content_range(value, &cr)) {
    if (cr.first != 1 || cr.last != 2 || cr.total != 3) std::abort();  // untouched on failure
    return;
  }
  if (!(cr.first <= cr.last && cr.last < cr.total)) std::abort();
  nydus::p2p::ContentRange again;
  const std::string formatted =
      "bytes " + std::to_string(cr.first) + "-" + std::to_string(cr.last) + "/" + std::to_string(cr.total);
  if (!nydus::p2p::parse_content_range(formatted, &again)) std::abort();
  if (again.first != cr.first || again.last != cr.last || again.total != cr.total) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint64_t blob_size = 0;
  if (size >= 8) {
    std::memcpy(&blob_size, data, 8);
    // Small sizes too, where the clipping cases live.
    if (data[0] & 1) blob_size >>= (data[1] & 63);
    data += 8;
    size -= 8;
  }
  std::vector<std::string> fields(5);
  size_t field = 0;
  for (size_t i = 0; i < size && field < fields.size(); ++i) {
    if (data[i] == 0) {
      ++field;
      continue;
    }
    fields[field].push_back(static_cast<char>(data[i]));
  }
  check_blob_path(fields[0]);
  check_range(fields[1], blob_size);
  check_range("bytes=" + fields[1], blob_size);
  check_origin(fields[2].c_str(), fields[3].c_str());
  check_origin(nullptr, fields[3].c_str());
  check_origin(fields[2].c_str(), nullptr);
  check_content_range(fields[4]);
  check_content_range("bytes " + fields[4]);
  // Every field through every parser, so one input reaches them all.
  for (const std::string& f : fields) {
    check_blob_path("/v2/" + f);
    check_range(f, blob_size);
    check_content_range(f);
  }
  return 0;
}
