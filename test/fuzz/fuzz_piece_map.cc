// libFuzzer target: a piece store map file (`<hex>.piece.map`) is untrusted
// on open. parse_piece_map either refuses it with a message or returns a
// map that serializes back to the same bytes and parses equal again. Each
// input is tried as it is and with its header checksum made right, so the
// fuzzer reaches the checks behind the checksum without a seed corpus.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "common/digest.h"
#include "p2p/piece_store.h"

namespace {

void check(std::span<const uint8_t> bytes) {
  auto map = nydus::p2p::parse_piece_map(bytes);
  if (!map.ok()) {
    if (map.status().message().empty()) std::abort();
    return;
  }
  if (!nydus::p2p::valid_granule_size(map->granule_size)) std::abort();
  if (map->bitmap.size() != nydus::p2p::piece_map_bitmap_bytes(map->blob_size, map->granule_size)) std::abort();
  const auto again = nydus::p2p::serialize_piece_map(*map);
  if (!std::equal(again.begin(), again.end(), bytes.begin(), bytes.end())) std::abort();
  auto reparsed = nydus::p2p::parse_piece_map(again);
  if (!reparsed.ok() || !(*reparsed == *map)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check({data, size});
  if (size >= nydus::p2p::kPieceMapHeaderSize) {
    std::vector<uint8_t> fixed(data, data + size);
    const uint32_t crc = nydus::crc32c(std::span<const uint8_t>(fixed).first(28));
    for (int i = 0; i < 4; ++i) fixed[28 + i] = static_cast<uint8_t>(crc >> (8 * i));
    check(fixed);
  }
  return 0;
}
