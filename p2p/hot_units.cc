#include "p2p/hot_units.h"

#include <algorithm>

namespace nydus::p2p {

std::string HotUnits::redirect_for(const std::string& digest, uint64_t unit, const std::string& asker) {
  if (spread_uploads_ == 0) return "";
  std::lock_guard<std::mutex> g(mu_);
  auto it = units_.find(key(digest, unit));
  if (it == units_.end() || it->second.active < spread_uploads_ || it->second.holders.empty()) return "";
  Unit& u = it->second;
  for (size_t tries = 0; tries < u.holders.size(); ++tries) {
    const std::string& h = u.holders[u.next++ % u.holders.size()];
    if (h != asker) {
      ++redirects_;
      return h;
    }
  }
  return "";
}

void HotUnits::begin(const std::string& digest, uint64_t unit) {
  std::lock_guard<std::mutex> g(mu_);
  if (units_.size() >= kMaxUnits) {
    // Forget idle units; a unit in use keeps its entry.
    std::erase_if(units_, [](const auto& kv) { return kv.second.active == 0; });
  }
  ++units_[key(digest, unit)].active;
}

void HotUnits::end(const std::string& digest, uint64_t unit, const std::string& holder) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = units_.find(key(digest, unit));
  if (it == units_.end()) return;
  Unit& u = it->second;
  if (u.active > 0) --u.active;
  if (holder.empty()) return;
  std::erase(u.holders, holder);
  u.holders.push_back(holder);
  if (u.holders.size() > kMaxHolders) u.holders.pop_front();
}

uint64_t HotUnits::redirects() const {
  std::lock_guard<std::mutex> g(mu_);
  return redirects_;
}

}  // namespace nydus::p2p
