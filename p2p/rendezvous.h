// Rendezvous (highest-random-weight) placement: which peer owns a placement
// unit of a blob. Every node that knows the same member list computes the
// same order with no communication, and when a member joins or leaves only
// the units whose top choice was (or becomes) that member move.
//
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace nydus::p2p {

// The weight of `member` for unit `unit` of blob `digest`: a 64-bit mix of
// the three (FNV-1a of the strings through the splitmix64 finalizer).
uint64_t rendezvous_weight(std::string_view member, std::string_view digest, uint64_t unit);

// Indexes of `members`, highest weight first (ties broken by the member
// string, so the order is total and the same everywhere).
std::vector<size_t> rendezvous_order(std::span<const std::string> members, std::string_view digest, uint64_t unit);

}  // namespace nydus::p2p
