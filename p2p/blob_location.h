// Where a blob lives at its origin, as a peer request names it: the
// registry (from X-Dragonfly-Registry or ?ns=), the repository and the
// digest from the path /v2/<repo>/blobs/sha256:<digest>, and the client's
// Authorization, which is passed on to the origin unchanged.
#pragma once

#include <string>
#include <string_view>

namespace nydus::p2p {

struct BlobLocation {
  std::string registry;       // origin base URL with scheme: "https://registry-1.docker.io"
  std::string repo;           // "library/python"
  std::string digest;         // 64 lowercase hex digits
  std::string authorization;  // the whole header value, "" = none

  std::string path() const { return "/v2/" + repo + "/blobs/sha256:" + digest; }
  std::string origin_url() const { return registry + path(); }
};

// True when `s` is 64 lowercase hex digits.
inline bool is_sha256_hex(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace nydus::p2p
