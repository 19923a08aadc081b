#include "p2p/registry_request.h"

#include <cctype>

#include "p2p/blob_location.h"

namespace nydus::p2p {
namespace {

bool valid_repo(const std::string& repo) {
  if (repo.empty() || repo.size() > 255 || repo.front() == '/' || repo.back() == '/') return false;
  if (repo.find("..") != std::string::npos || repo.find("//") != std::string::npos) return false;
  for (char c : repo)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' || c == '/'))
      return false;
  return true;
}

}  // namespace

bool parse_dec(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos) return false;
  *out = std::stoull(s);
  return true;
}

Result<BlobTarget> parse_blob_path(const std::string& path) {
  static const std::string kPrefix = "/v2/";
  static const std::string kBlobs = "/blobs/";
  if (path.rfind(kPrefix, 0) != 0) return Status::not_found("not a registry path");
  const size_t blobs = path.rfind(kBlobs);
  if (blobs == std::string::npos || blobs < kPrefix.size()) return Status::not_found("not a blob path");
  BlobTarget t;
  t.repo = path.substr(kPrefix.size(), blobs - kPrefix.size());
  const std::string ref = path.substr(blobs + kBlobs.size());
  if (ref.rfind("uploads", 0) == 0) return Status::not_found("blob upload path");
  if (ref.rfind("sha256:", 0) != 0) return Status::invalid("blob reference '" + ref.substr(0, 80) + "' is not sha256:<hex>");
  t.digest = ref.substr(7);
  if (!is_sha256_hex(t.digest)) return Status::invalid("blob digest is not 64 lowercase hex digits");
  if (!valid_repo(t.repo)) return Status::invalid("repository name '" + t.repo.substr(0, 80) + "' is not valid");
  return t;
}

Result<ByteSpan> parse_range_header(const std::string& value, uint64_t size) {
  if (value.rfind("bytes=", 0) != 0) return Status::invalid("Range '" + value.substr(0, 80) + "' is not bytes=");
  const std::string spec = value.substr(6);
  if (spec.find(',') != std::string::npos) return Status::invalid("multiple ranges are not supported");
  const size_t dash = spec.find('-');
  if (dash == std::string::npos) return Status::invalid("Range '" + value.substr(0, 80) + "' has no '-'");
  const std::string a = spec.substr(0, dash), b = spec.substr(dash + 1);
  ByteSpan out;
  if (a.empty()) {  // suffix: the last N bytes
    uint64_t n = 0;
    if (!parse_dec(b, &n)) return Status::invalid("Range '" + value.substr(0, 80) + "' is malformed");
    if (n == 0 || size == 0) return Status::not_found("empty suffix range");
    out.first = n >= size ? 0 : size - n;
    out.last = size - 1;
    return out;
  }
  if (!parse_dec(a, &out.first)) return Status::invalid("Range '" + value.substr(0, 80) + "' is malformed");
  if (b.empty()) {
    out.last = size == 0 ? 0 : size - 1;
  } else if (!parse_dec(b, &out.last) || out.last < out.first) {
    return Status::invalid("Range '" + value.substr(0, 80) + "' is malformed");
  }
  if (out.first >= size) return Status::not_found("range starts past the end");
  out.last = std::min(out.last, size - 1);
  return out;
}

Result<std::string> origin_from(const char* dragonfly_registry, const char* ns) {
  std::string url;
  if (dragonfly_registry && *dragonfly_registry) {
    url = dragonfly_registry;
  } else if (ns && *ns) {
    url = std::string("https://") + ns;
  } else {
    return std::string();
  }
  while (!url.empty() && url.back() == '/') url.pop_back();
  const bool http = url.rfind("http://", 0) == 0, https = url.rfind("https://", 0) == 0;
  if (!http && !https) return Status::invalid("origin '" + url.substr(0, 80) + "' is not an http(s) URL");
  const std::string authority = url.substr(http ? 7 : 8);
  if (authority.empty() || authority.size() > 255) return Status::invalid("origin URL has no host");
  for (char c : authority)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']' ||
          c == '_'))
      return Status::invalid("origin '" + url.substr(0, 80) + "' must be scheme://host[:port]");
  return url;
}

}  // namespace nydus::p2p
