// AccessCheck: data of a private repository goes to a stock client only if
// that client could read it from the origin itself (issue 12).
//
// Before the mirror endpoint serves any byte of a blob, the origin is asked
// (HEAD of the blob, with the client's own Authorization or none) whether
// this client may read it there. The answer is cached per (origin,
// repository, digest, credentials): a yes for 5 minutes, a no for 30
// seconds. A no passes the origin's status on (401, 403, 404). When this
// node cannot reach the origin, another member asks it with the same
// credentials (P2pNode::origin_via_peers); when nobody can, the client gets
// a 502, never cached bytes.
//
// Peers are not checked: they are cluster members that signed their
// request with the cluster secret, and they pass their own client's
// credentials on when the origin is asked.
//
// Thread-safety: any number of concurrent calls.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/status.h"
#include "p2p/blob_location.h"

namespace nydus::p2p {

class P2pNode;

class AccessCheck {
 public:
  explicit AccessCheck(P2pNode& node) : node_(node) {}

  struct Verdict {
    bool allowed = false;
    unsigned status = 0;  // when refused: the HTTP status to answer
    std::string reason;
  };
  Verdict check(const BlobLocation& loc);

  static constexpr auto kAllowedFor = std::chrono::minutes(5);
  static constexpr auto kRefusedFor = std::chrono::seconds(30);

 private:
  struct Entry {
    Verdict verdict;
    std::chrono::steady_clock::time_point until;
  };
  P2pNode& node_;
  std::mutex mu_;
  std::unordered_map<std::string, Entry> cache_;  // guarded by mu_; key: see check()
};

}  // namespace nydus::p2p
