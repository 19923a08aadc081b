// HotUnits: spreading the load of a popular placement unit as a tree.
//
// A node uploading a unit that many nodes want at once would send it once
// per asker, one after another on its uplink. Instead it serves the unit's
// first `spread_uploads` askers itself (at once, at full speed) and
// remembers which bytes each of them received and verified (they keep them
// in their piece stores); later askers go to a holder of the bytes they ask
// for (round robin; never an asker to itself). When the unit is at
// capacity and nobody holds those bytes yet, the asker is told to wait and
// come back, so the first uploads finish fast and make holders. Holders
// run the same rule for the askers sent to them (held bytes only), sending
// askers on to the nodes they served in turn: a unit spreads like a tree
// whose holders grow about (spread_uploads + 1)x per upload time, and no
// node uploads a unit more than about spread_uploads times. When nobody
// can be sent to and there is spare capacity, the node serves beyond that.
//
// An asker that was sent back and forth too long asks as a last resort
// (X-Nydus-No-Redirect): that upload is always admitted.
//
// The effect at 10 to 10,000 nodes is measured by test/sim (p2p/README.md
// "At scale").
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>

namespace nydus::p2p {

// The asker's side (P2pNode::fetch_from_owner): a told-to-wait asker comes
// back after kWaitFirst, doubling up to kWaitMax, for at most
// p2p.peer_stall_ms in all, then asks as a last resort; it follows at most
// kMaxRedirectHops redirects from holder to holder before going back to
// the owner as a last resort.
inline constexpr std::chrono::milliseconds kWaitFirst{5};
inline constexpr std::chrono::milliseconds kWaitMax{20};
inline constexpr int kMaxRedirectHops = 16;

class HotUnits {
 public:
  explicit HotUnits(uint32_t spread_uploads) : spread_uploads_(spread_uploads) {}

  struct Admission {
    enum Kind {
      kServe,     // upload it; counted until end()
      kRedirect,  // send the asker to `holder`
      kWait,      // at capacity with no holder yet: the asker comes back later
    } kind = kServe;
    std::string holder;
  };
  // An asker wants bytes [first, end) of the unit; it is sent only to a
  // holder of all of them. `last_resort`: the asker may not be sent away
  // (always kServe).
  Admission admit(const std::string& digest, uint64_t unit, uint64_t first, uint64_t end, const std::string& asker,
                  bool last_resort);
  // An admitted upload ends; `holder` (on success, when the asker named its
  // peer address) now holds [first, end), the bytes it was sent.
  void end(const std::string& digest, uint64_t unit, uint64_t first, uint64_t end, const std::string& holder);

  uint64_t redirects() const;
  uint64_t waits() const;

 private:
  struct Holder {
    std::string address;
    uint64_t first = 0, end = 0;  // the bytes it was sent
  };
  struct Unit {
    uint32_t active = 0;
    uint64_t served = 0;         // uploads admitted in all
    std::deque<Holder> holders;  // most recent last, at most kMaxHolders
    size_t next = 0;             // round robin over holders
  };
  static constexpr size_t kMaxHolders = 32;
  static constexpr size_t kMaxUnits = 8192;
  static std::string key(const std::string& digest, uint64_t unit) { return digest + "/" + std::to_string(unit); }

  const uint32_t spread_uploads_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Unit> units_;
  uint64_t redirects_ = 0;
  uint64_t waits_ = 0;
};

}  // namespace nydus::p2p
