// Bounded little-endian reads over untrusted byte spans (RAFS v5/v6,
// blob.meta). Every on-disk integer is little-endian (rafs-format.md).
//
// Contract
// - in_bounds(size, offset, len) is overflow-safe: true iff
//   [offset, offset+len) lies inside [0, size).
// - read_u8/u16/u32/u64 return false (and leave *out untouched) when the
//   field does not fit; they never read outside the span.
// - load_u16/u32/u64 do NOT check: call them only on a range already checked
//   with in_bounds (hot paths that validated a whole record once).
// All functions are pure and thread-safe.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>

namespace nydus::bootstrap::le {

inline constexpr bool in_bounds(uint64_t size, uint64_t offset, uint64_t len) {
  return offset <= size && len <= size - offset;
}

template <typename T>
inline T load(std::span<const uint8_t> bytes, uint64_t offset) {
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  if constexpr (std::endian::native == std::endian::big) {
    T r = 0;
    for (size_t i = 0; i < sizeof v; ++i) r = static_cast<T>((r << 8) | ((v >> (8 * i)) & 0xff));
    v = r;
  }
  return v;
}

inline uint8_t load_u8(std::span<const uint8_t> b, uint64_t off) { return b[off]; }
inline uint16_t load_u16(std::span<const uint8_t> b, uint64_t off) { return load<uint16_t>(b, off); }
inline uint32_t load_u32(std::span<const uint8_t> b, uint64_t off) { return load<uint32_t>(b, off); }
inline uint64_t load_u64(std::span<const uint8_t> b, uint64_t off) { return load<uint64_t>(b, off); }

template <typename T>
inline bool read(std::span<const uint8_t> bytes, uint64_t offset, T* out) {
  if (!in_bounds(bytes.size(), offset, sizeof(T))) return false;
  *out = load<T>(bytes, offset);
  return true;
}

inline bool read_u8(std::span<const uint8_t> b, uint64_t off, uint8_t* out) { return read(b, off, out); }
inline bool read_u16(std::span<const uint8_t> b, uint64_t off, uint16_t* out) { return read(b, off, out); }
inline bool read_u32(std::span<const uint8_t> b, uint64_t off, uint32_t* out) { return read(b, off, out); }
inline bool read_u64(std::span<const uint8_t> b, uint64_t off, uint64_t* out) { return read(b, off, out); }

// The sub-span [offset, offset+len), or an empty span with *ok = false when
// it does not fit.
inline std::span<const uint8_t> slice(std::span<const uint8_t> b, uint64_t offset, uint64_t len,
                                      bool* ok) {
  *ok = in_bounds(b.size(), offset, len);
  if (!*ok) return {};
  return b.subspan(static_cast<size_t>(offset), static_cast<size_t>(len));
}

}  // namespace nydus::bootstrap::le
