#include "p2p/access_check.h"

#include "common/digest.h"
#include "p2p/p2p_node.h"

namespace nydus::p2p {
namespace {
constexpr size_t kMaxEntries = 65536;
}

AccessCheck::Verdict AccessCheck::check(const BlobLocation& loc) {
  // The credentials are part of the key only as a digest, so the cache
  // holds no secrets.
  const std::string text = loc.registry + "\n" + loc.repo + "\n" + loc.digest + "\n" + loc.authorization;
  const std::string key = to_hex(digest(bootstrap::Digester::kSha256,
                                        {reinterpret_cast<const uint8_t*>(text.data()), text.size()}));
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> g(mu_);
    if (auto it = cache_.find(key); it != cache_.end() && now < it->second.until) return it->second.verdict;
  }
  Verdict v;
  long status = 0;
  auto size = node_.client().origin_size(loc, &status);
  if (!size.ok() && status == 0 && size.status().code() != Code::kNotFound) {
    // Unreachable from here: a member asks, with this client's credentials.
    std::vector<std::string> headers;
    if (!loc.authorization.empty()) headers.push_back("Authorization: " + loc.authorization);
    auto via = node_.origin_via_peers("HEAD", loc.registry, loc.path(), headers);
    if (via.ok()) {
      status = via->status;
      if (status >= 200 && status < 400) size = uint64_t{0};  // a redirect to storage: readable
      else size = Status::io("the origin, asked through a peer, answered " + std::to_string(status));
    }
  }
  if (size.ok()) {
    v.allowed = true;
  } else if (status == 401 || status == 403 || status == 404 || size.status().code() == Code::kNotFound) {
    v.status = status ? static_cast<unsigned>(status) : 404;
    v.reason = "the origin refuses this client the blob (" + std::to_string(v.status) + ")";
  } else {
    v.status = 502;
    v.reason = "cannot ask the origin whether this client may read the blob: " + size.status().message();
    return v;  // not cached: the next request asks again
  }
  std::lock_guard<std::mutex> g(mu_);
  if (cache_.size() >= kMaxEntries) std::erase_if(cache_, [&](const auto& e) { return e.second.until <= now; });
  if (cache_.size() < kMaxEntries) cache_[key] = {v, now + (v.allowed ? kAllowedFor : kRefusedFor)};
  return v;
}

}  // namespace nydus::p2p
