#include "p2p/rendezvous.h"

#include <algorithm>
#include <numeric>

namespace nydus::p2p {
namespace {

uint64_t fnv1a(std::string_view s, uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t rendezvous_weight(std::string_view member, std::string_view digest, uint64_t unit) {
  const uint64_t key = splitmix64(fnv1a(digest) ^ splitmix64(unit));
  return splitmix64(fnv1a(member) ^ key);
}

std::vector<size_t> rendezvous_order(std::span<const std::string> members, std::string_view digest, uint64_t unit) {
  std::vector<std::pair<uint64_t, size_t>> weighted;
  weighted.reserve(members.size());
  for (size_t i = 0; i < members.size(); ++i) weighted.emplace_back(rendezvous_weight(members[i], digest, unit), i);
  std::sort(weighted.begin(), weighted.end(), [&](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first > b.first;
    return members[a.second] < members[b.second];
  });
  std::vector<size_t> order;
  order.reserve(weighted.size());
  for (const auto& [w, i] : weighted) order.push_back(i);
  return order;
}

}  // namespace nydus::p2p
