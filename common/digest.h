// Digests used by nydus: blake3 (the official C implementation, compiled
// from Debian's librust-blake3-dev sources) and sha256 (OpenSSL), plus
// CRC-32C. Shared by the readers (chunk and inode digests) and the image
// builder. Pure functions, thread-safe; a Hasher is a single-thread value.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "bootstrap/image.h"

namespace nydus {

bootstrap::Digest digest(bootstrap::Digester algo, std::span<const uint8_t> data);
std::string to_hex(std::span<const uint8_t> bytes);

// Incremental hashing, for digests over many pieces (inode digests, blob id).
class Hasher {
 public:
  explicit Hasher(bootstrap::Digester algo);
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void update(std::span<const uint8_t> data);
  bootstrap::Digest finish();

 private:
  struct State;
  bootstrap::Digester algo_;
  State* state_;
};

// CRC-32C (Castagnoli), as nydus stores per chunk. Uses the SSE4.2 crc32
// instruction when the CPU has it (~20x the table), the table otherwise.
uint32_t crc32c(std::span<const uint8_t> data);
// The table-driven CRC-32C, always; exposed so tests can hold the two
// implementations against each other.
uint32_t crc32c_portable(std::span<const uint8_t> data);

}  // namespace nydus
