#include "p2p/hot_units.h"

#include <algorithm>

namespace nydus::p2p {

HotUnits::Admission HotUnits::admit(const std::string& digest, uint64_t unit, uint64_t first, uint64_t end,
                                    const std::string& asker, bool last_resort) {
  std::lock_guard<std::mutex> g(mu_);
  if (units_.size() >= kMaxUnits) {
    // Forget idle units; a unit in use keeps its entry.
    std::erase_if(units_, [](const auto& kv) { return kv.second.active == 0; });
  }
  Unit& u = units_[key(digest, unit)];
  auto serve = [&u]() {
    ++u.active;
    ++u.served;
    return Admission{Admission::kServe, ""};
  };
  // A node serves a unit's first spread_uploads askers (at once, at full
  // speed); later ones go to the nodes it served, so that no node uploads
  // much more than it downloaded.
  if (spread_uploads_ == 0 || last_resort || (u.active < spread_uploads_ && u.served < spread_uploads_))
    return serve();
  for (size_t tries = 0; tries < u.holders.size(); ++tries) {
    const Holder& h = u.holders[u.next++ % u.holders.size()];
    if (h.address != asker && h.first <= first && end <= h.end) {
      ++redirects_;
      return {Admission::kRedirect, h.address};
    }
  }
  if (u.active < spread_uploads_) return serve();  // no holder of these bytes to send the asker to
  ++waits_;
  return {Admission::kWait, ""};
}

void HotUnits::end(const std::string& digest, uint64_t unit, uint64_t first, uint64_t end, const std::string& holder) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = units_.find(key(digest, unit));
  if (it == units_.end()) return;
  Unit& u = it->second;
  if (u.active > 0) --u.active;
  if (holder.empty()) return;
  std::erase_if(u.holders, [&](const Holder& h) { return h.address == holder && h.first == first && h.end == end; });
  u.holders.push_back({holder, first, end});
  if (u.holders.size() > kMaxHolders) u.holders.pop_front();
}

uint64_t HotUnits::redirects() const {
  std::lock_guard<std::mutex> g(mu_);
  return redirects_;
}

uint64_t HotUnits::waits() const {
  std::lock_guard<std::mutex> g(mu_);
  return waits_;
}

}  // namespace nydus::p2p
