// Integer layout arithmetic shared by the RAFS readers and writers.
#pragma once

#include <cstdint>

namespace nydus {

// ceil(v / unit); unit > 0.
constexpr uint64_t div_round_up(uint64_t v, uint64_t unit) { return v / unit + (v % unit != 0 ? 1 : 0); }
// The smallest multiple of `unit` that is >= v; unit > 0.
constexpr uint64_t align_up(uint64_t v, uint64_t unit) { return div_round_up(v, unit) * unit; }
constexpr uint64_t align8(uint64_t v) { return align_up(v, 8); }
constexpr uint64_t round_up_4k(uint64_t v) { return align_up(v, 4096); }

}  // namespace nydus
