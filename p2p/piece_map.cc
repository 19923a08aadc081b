// The piece store's map file codec (`<hex>.piece.map`).
//
// Layout, little-endian:
//   [0, 8)    magic "NYP2PMAP"
//   [8, 12)   u32 version (1)
//   [12, 16)  u32 granule size (power of two, 512 .. 1 MiB)
//   [16, 24)  u64 blob size
//   [24, 28)  u32 reserved, 0
//   [28, 32)  u32 CRC-32C of bytes [0, 28)
//   [32, ..)  bitmap, ceil(granules / 8) bytes: granule i is bit 1 << (i & 7)
//             of byte i >> 3 (LSB first); padding bits past the last granule
//             are 0
// The file is exactly 32 + ceil(granules / 8) bytes. The parser accepts
// only this canonical form, so serialize(parse(bytes)) == bytes.
#include <bit>
#include <cstring>
#include <string>

#include "common/bits.h"
#include "common/digest.h"
#include "p2p/piece_store.h"

namespace nydus::p2p {
namespace {

constexpr char kMagic[8] = {'N', 'Y', 'P', '2', 'P', 'M', 'A', 'P'};
constexpr uint32_t kVersion = 1;

uint32_t load_u32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
uint64_t load_u64(const uint8_t* p) { return uint64_t{load_u32(p)} | uint64_t{load_u32(p + 4)} << 32; }
void store_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void store_u64(uint8_t* p, uint64_t v) {
  store_u32(p, static_cast<uint32_t>(v));
  store_u32(p + 4, static_cast<uint32_t>(v >> 32));
}

}  // namespace

bool valid_granule_size(uint64_t granule_size) {
  return granule_size >= kMinGranuleSize && granule_size <= kMaxGranuleSize && std::has_single_bit(granule_size);
}

uint64_t piece_map_bitmap_bytes(uint64_t blob_size, uint32_t granule_size) {
  return div_round_up(div_round_up(blob_size, granule_size), 8);
}

Result<PieceMap> parse_piece_map(std::span<const uint8_t> bytes) {
  if (bytes.size() < kPieceMapHeaderSize)
    return Status::invalid("piece map is " + std::to_string(bytes.size()) + " bytes, shorter than its " +
                           std::to_string(kPieceMapHeaderSize) + "-byte header");
  const uint8_t* h = bytes.data();
  if (std::memcmp(h, kMagic, sizeof kMagic) != 0) return Status::invalid("piece map has a bad magic");
  const uint32_t crc = crc32c(bytes.first(28));
  if (load_u32(h + 28) != crc) return Status::invalid("piece map header checksum mismatch");
  const uint32_t version = load_u32(h + 8);
  if (version != kVersion) return Status::invalid("piece map has unsupported version " + std::to_string(version));
  if (load_u32(h + 24) != 0) return Status::invalid("piece map reserved field is not zero");
  PieceMap map;
  map.granule_size = load_u32(h + 12);
  map.blob_size = load_u64(h + 16);
  if (!valid_granule_size(map.granule_size))
    return Status::invalid("piece map granule size " + std::to_string(map.granule_size) + " is invalid");
  const uint64_t granules = div_round_up(map.blob_size, map.granule_size);
  if (granules > kMaxGranules)
    return Status::invalid("piece map blob size " + std::to_string(map.blob_size) + " has too many granules");
  const uint64_t bitmap_bytes = div_round_up(granules, 8);
  if (bytes.size() - kPieceMapHeaderSize != bitmap_bytes)
    return Status::invalid("piece map is " + std::to_string(bytes.size()) + " bytes, expected " +
                           std::to_string(kPieceMapHeaderSize + bitmap_bytes) + " for blob size " +
                           std::to_string(map.blob_size));
  map.bitmap.assign(bytes.begin() + kPieceMapHeaderSize, bytes.end());
  if (granules % 8 != 0 && (map.bitmap.back() >> (granules % 8)) != 0)
    return Status::invalid("piece map has a bit set beyond the blob's " + std::to_string(granules) + " granules");
  return map;
}

std::vector<uint8_t> serialize_piece_map(const PieceMap& map) {
  std::vector<uint8_t> out(kPieceMapHeaderSize + map.bitmap.size(), 0);
  std::memcpy(out.data(), kMagic, sizeof kMagic);
  store_u32(out.data() + 8, kVersion);
  store_u32(out.data() + 12, map.granule_size);
  store_u64(out.data() + 16, map.blob_size);
  store_u32(out.data() + 24, 0);
  store_u32(out.data() + 28, crc32c(std::span<const uint8_t>(out).first(28)));
  if (!map.bitmap.empty()) std::memcpy(out.data() + kPieceMapHeaderSize, map.bitmap.data(), map.bitmap.size());
  return out;
}

}  // namespace nydus::p2p
