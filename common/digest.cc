#include "common/digest.h"

#include <openssl/evp.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "blake3.h"

namespace nydus {
namespace {

// OpenSSL only fails here on allocation failure or a broken provider; there
// is no sane way to continue hashing, and returning a zero digest would make
// every chunk look corrupt (or worse, match a zeroed expectation). Abort
// loudly instead, like an allocation failure.
[[noreturn]] void openssl_fatal(const char* what) {
  std::fprintf(stderr, "fatal: OpenSSL %s failed\n", what);
  std::abort();
}

// The CRC-32C table for the reflected Castagnoli polynomial, built at
// compile time, for CPUs without SSE4.2 (every x86-64 CPU since 2008 has
// it, and it is what the daemon uses there).
constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr auto kCrc32cTable = make_crc32c_table();

}  // namespace

struct Hasher::State {
  blake3_hasher blake3;
  EVP_MD_CTX* sha256 = nullptr;
};

Hasher::Hasher(bootstrap::Digester algo) : algo_(algo), state_(new State) {
  if (algo_ == bootstrap::Digester::kSha256) {
    state_->sha256 = EVP_MD_CTX_new();
    if (state_->sha256 == nullptr) openssl_fatal("EVP_MD_CTX_new");
    if (EVP_DigestInit_ex(state_->sha256, EVP_sha256(), nullptr) != 1)
      openssl_fatal("EVP_DigestInit_ex(sha256)");
  } else {
    blake3_hasher_init(&state_->blake3);
  }
}

Hasher::~Hasher() {
  if (state_->sha256 != nullptr) EVP_MD_CTX_free(state_->sha256);
  delete state_;
}

void Hasher::update(std::span<const uint8_t> data) {
  if (algo_ == bootstrap::Digester::kSha256) {
    if (EVP_DigestUpdate(state_->sha256, data.data(), data.size()) != 1)
      openssl_fatal("EVP_DigestUpdate");
  } else {
    blake3_hasher_update(&state_->blake3, data.data(), data.size());
  }
}

bootstrap::Digest Hasher::finish() {
  bootstrap::Digest out{};
  if (algo_ == bootstrap::Digester::kSha256) {
    // Finalize a copy so finish() does not consume the state, as with
    // blake3: a caller may keep updating and finish again.
    EVP_MD_CTX* copy = EVP_MD_CTX_new();
    if (copy == nullptr || EVP_MD_CTX_copy_ex(copy, state_->sha256) != 1)
      openssl_fatal("EVP_MD_CTX_copy_ex");
    unsigned int len = 0;
    const int rc = EVP_DigestFinal_ex(copy, out.data(), &len);
    EVP_MD_CTX_free(copy);
    if (rc != 1 || len != out.size()) openssl_fatal("EVP_DigestFinal_ex");
  } else {
    blake3_hasher_finalize(&state_->blake3, out.data(), out.size());
  }
  return out;
}

bootstrap::Digest digest(bootstrap::Digester algo, std::span<const uint8_t> data) {
  if (algo == bootstrap::Digester::kSha256) {
    bootstrap::Digest out{};
    unsigned int len = 0;
    // EVP_Digest is the one-shot form: no context to manage on our side.
    if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
        len != out.size())
      openssl_fatal("EVP_Digest(sha256)");
    return out;
  }
  blake3_hasher h;
  blake3_hasher_init(&h);
  blake3_hasher_update(&h, data.data(), data.size());
  bootstrap::Digest out{};
  blake3_hasher_finalize(&h, out.data(), out.size());
  return out;
}

std::string to_hex(std::span<const uint8_t> bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 0xF];
  }
  return out;
}

uint32_t crc32c_portable(std::span<const uint8_t> data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (uint8_t b : data) crc = kCrc32cTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

#if defined(__x86_64__)
namespace {
// The crc32 instruction computes exactly this polynomial, 8 bytes per
// instruction. The byte table took 5.7 % of all CPU samples while 8 P2P
// nodes started python3 (every chunk from the network is CRC-checked).
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(std::span<const uint8_t> data) {
  const uint8_t* p = data.data();
  size_t n = data.size();
  uint64_t crc = 0xFFFFFFFFu;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t word;
    std::memcpy(&word, p, sizeof word);
    crc = __builtin_ia32_crc32di(crc, word);
  }
  auto c = static_cast<uint32_t>(crc);
  for (; n > 0; ++p, --n) c = __builtin_ia32_crc32qi(c, *p);
  return c ^ 0xFFFFFFFFu;
}
// __builtin_cpu_init: static initializers may run before libgcc's own.
const bool kHaveSse42 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2") != 0;
}();
}  // namespace
#endif

uint32_t crc32c(std::span<const uint8_t> data) {
#if defined(__x86_64__)
  if (kHaveSse42) return crc32c_sse42(data);
#endif
  return crc32c_portable(data);
}

}  // namespace nydus
