// HotUnits: spreading the load of a popular placement unit.
//
// The owner of a unit that many nodes want at once would upload it once per
// asker. Instead, it remembers which askers finished downloading from it
// (they keep verified copies in their piece stores), and once more than
// `spread_uploads` uploads of one unit run at the same time, it sends the
// next askers to those holders (round robin; never an asker to itself). A
// redirected asker asks the holder for held bytes only and comes back to
// the owner (with X-Nydus-No-Redirect) when the holder lacks them, so a
// redirect costs one LAN round trip at worst. Each holder then serves the
// next wave, and a unit's upload load fans out like a tree instead of
// converging on one node.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>

namespace nydus::p2p {

class HotUnits {
 public:
  explicit HotUnits(uint32_t spread_uploads) : spread_uploads_(spread_uploads) {}

  // A holder to send `asker` to, or "" (serve it here). A non-empty answer
  // counts as a redirect.
  std::string redirect_for(const std::string& digest, uint64_t unit, const std::string& asker);
  // An upload of the unit starts / ends; `holder` (on success, when the
  // asker named its peer address) now holds the bytes it was sent.
  void begin(const std::string& digest, uint64_t unit);
  void end(const std::string& digest, uint64_t unit, const std::string& holder);

  uint64_t redirects() const;

 private:
  struct Unit {
    uint32_t active = 0;
    std::deque<std::string> holders;  // most recent last, at most kMaxHolders
    size_t next = 0;                  // round robin over holders
  };
  static constexpr size_t kMaxHolders = 16;
  static constexpr size_t kMaxUnits = 8192;
  static std::string key(const std::string& digest, uint64_t unit) { return digest + "/" + std::to_string(unit); }

  const uint32_t spread_uploads_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Unit> units_;
  uint64_t redirects_ = 0;
};

}  // namespace nydus::p2p
