#include "p2p/peer_auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <array>
#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "common/digest.h"
#include "common/log.h"

namespace nydus::p2p {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMinSecret = 16;
constexpr size_t kMaxSecret = 4096;
constexpr size_t kNonceBytes = 16;
// Nonces remembered at most (one window's worth of requests): past this the
// server refuses rather than forgets, so a replay can never slip through.
constexpr size_t kMaxNonces = 1u << 20;
constexpr auto kRecheckFile = std::chrono::seconds(1);

struct FileStamp {
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileStamp&) const = default;
};

Result<FileStamp> stamp_of(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return Status::io("p2p.secret_file " + path + ": cannot stat");
  return FileStamp{st.st_ino, st.st_size, st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec};
}

Result<std::string> read_secret(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::invalid("p2p.secret_file " + path + ": cannot be read");
  std::stringstream buf;
  buf << in.rdbuf();
  std::string s = buf.str();
  if (s.size() > kMaxSecret) return Status::invalid("p2p.secret_file " + path + ": longer than 4096 bytes");
  // `echo secret > file` and Kubernetes Secrets made from literals end in a newline.
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  if (s.size() < kMinSecret)
    return Status::invalid("p2p.secret_file " + path + ": the secret has " + std::to_string(s.size()) +
                           " bytes, at least 16 are needed (e.g. `openssl rand -hex 32`)");
  return s;
}

std::string signed_text(std::string_view method, std::string_view path, std::string_view range, int64_t t,
                        std::string_view nonce) {
  std::string text = "nydus-p2p-v1\n";
  text.append(method).append("\n").append(path).append("\n").append(range).append("\n");
  text.append(std::to_string(t)).append("\n").append(nonce);
  return text;
}

std::array<uint8_t, 32> mac(const std::string& secret, const std::string& text) {
  std::array<uint8_t, 32> out{};
  unsigned len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(text.data()), text.size(), out.data(), &len) ||
      len != out.size()) {
    // Only a broken OpenSSL gets here; a zero MAC then matches nothing a
    // peer sends (its own HMAC failed the same way or not at all).
    out.fill(0);
  }
  return out;
}

bool is_lower_hex(std::string_view s, size_t n) {
  if (s.size() != n) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// `s` is lowercase hex (checked by the caller).
void from_hex(std::string_view s, uint8_t* out) {
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < s.size() / 2; ++i) out[i] = static_cast<uint8_t>(nibble(s[2 * i]) << 4 | nibble(s[2 * i + 1]));
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

const char* auth_verdict_name(AuthVerdict v) {
  switch (v) {
    case AuthVerdict::kOk: return "ok";
    case AuthVerdict::kMissing: return "no_credentials";
    case AuthVerdict::kMalformed: return "malformed_credentials";
    case AuthVerdict::kBadSignature: return "bad_signature";
    case AuthVerdict::kStale: return "stale_timestamp";
    case AuthVerdict::kReplayed: return "replayed";
    case AuthVerdict::kNoCertificate: return "no_client_certificate";
    case AuthVerdict::kUntrustedCertificate: return "untrusted_client_certificate";
  }
  return "?";
}

struct PeerAuth::Impl {
  std::string path;
  std::chrono::seconds window;

  mutable std::mutex mu;
  std::string current;                    // guarded by mu
  std::string previous;                   // guarded by mu; accepted until previous_until
  Clock::time_point previous_until{};     // guarded by mu
  FileStamp stamp;                        // guarded by mu
  Clock::time_point next_check{};         // guarded by mu
  std::unordered_map<std::string, int64_t> nonces;  // guarded by mu: nonce -> unix time it may be forgotten
  int64_t next_purge = 0;                 // guarded by mu

  // Rereads the file when it changed; a file that became unreadable or
  // too short keeps the secret in use (logged).
  void maybe_reload() {
    const auto now = Clock::now();
    if (now < next_check) return;
    next_check = now + kRecheckFile;
    auto st = stamp_of(path);
    if (!st.ok() || *st == stamp) return;
    stamp = *st;  // a bad rewrite is reported once, not every second
    auto secret = read_secret(path);
    if (!secret.ok()) {
      LOG_WARN("p2p: %s; keeping the secret read before", secret.status().message().c_str());
      return;
    }
    if (*secret == current) return;
    previous = std::move(current);
    previous_until = now + window;
    current = std::move(secret).value();
    LOG_INFO("p2p: the peer secret in %s changed; the previous one is accepted for %llds more", path.c_str(),
             static_cast<long long>(window.count()));
  }
};

PeerAuth::PeerAuth(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PeerAuth::~PeerAuth() = default;

Result<std::unique_ptr<PeerAuth>> PeerAuth::load(const std::string& secret_file, std::chrono::seconds window) {
  auto impl = std::make_unique<Impl>();
  impl->path = secret_file;
  impl->window = window;
  NYDUS_ASSIGN(impl->stamp, stamp_of(secret_file));
  NYDUS_ASSIGN(impl->current, read_secret(secret_file));
  impl->next_check = Clock::now() + kRecheckFile;
  return std::unique_ptr<PeerAuth>(new PeerAuth(std::move(impl)));
}

std::chrono::seconds PeerAuth::window() const { return impl_->window; }

std::string PeerAuth::sign(std::string_view method, std::string_view path, std::string_view range,
                           int64_t now) const {
  std::array<uint8_t, kNonceBytes> nonce_bytes{};
  if (RAND_bytes(nonce_bytes.data(), static_cast<int>(nonce_bytes.size())) != 1) {
    // No randomness: a counter and the time still never repeat within a
    // process; a collision would only get this one request refused.
    static std::atomic<uint64_t> counter{0};
    const uint64_t c = counter.fetch_add(1) ^ static_cast<uint64_t>(Clock::now().time_since_epoch().count());
    std::memcpy(nonce_bytes.data(), &c, sizeof c);
  }
  const std::string nonce = to_hex(nonce_bytes);
  std::string secret;
  {
    std::lock_guard<std::mutex> g(impl_->mu);
    impl_->maybe_reload();
    secret = impl_->current;
  }
  const auto m = mac(secret, signed_text(method, path, range, now, nonce));
  return "v1 t=" + std::to_string(now) + " n=" + nonce + " s=" + to_hex(m);
}

std::string PeerAuth::sign(std::string_view method, std::string_view path, std::string_view range) const {
  return sign(method, path, range, unix_now());
}

AuthVerdict PeerAuth::verify(std::string_view method, std::string_view path, std::string_view range,
                             const char* header, int64_t now) {
  if (!header) return AuthVerdict::kMissing;
  // "v1 t=<1..12 digits> n=<32 hex> s=<64 hex>", nothing else.
  std::string_view h(header);
  if (h.size() > 200 || h.substr(0, 5) != "v1 t=") return AuthVerdict::kMalformed;
  h.remove_prefix(5);
  const size_t sp = h.find(' ');
  if (sp == std::string_view::npos || sp == 0 || sp > 12) return AuthVerdict::kMalformed;
  int64_t t = 0;
  for (char c : h.substr(0, sp)) {
    if (c < '0' || c > '9') return AuthVerdict::kMalformed;
    t = t * 10 + (c - '0');
  }
  h.remove_prefix(sp + 1);
  if (h.substr(0, 2) != "n=") return AuthVerdict::kMalformed;
  const std::string_view nonce = h.substr(2, 2 * kNonceBytes);
  if (!is_lower_hex(nonce, 2 * kNonceBytes)) return AuthVerdict::kMalformed;
  h.remove_prefix(2 + 2 * kNonceBytes);
  if (h.substr(0, 3) != " s=" || !is_lower_hex(h.substr(3), 64)) return AuthVerdict::kMalformed;
  std::array<uint8_t, 32> got{};
  from_hex(h.substr(3), got.data());

  const std::string text = signed_text(method, path, range, t, nonce);
  std::string current, previous;
  {
    std::lock_guard<std::mutex> g(impl_->mu);
    impl_->maybe_reload();
    current = impl_->current;
    if (Clock::now() < impl_->previous_until) previous = impl_->previous;
  }
  bool good = CRYPTO_memcmp(mac(current, text).data(), got.data(), got.size()) == 0;
  if (!good && !previous.empty()) good = CRYPTO_memcmp(mac(previous, text).data(), got.data(), got.size()) == 0;
  if (!good) return AuthVerdict::kBadSignature;
  const int64_t window = impl_->window.count();
  if (t > now + window || t < now - window) return AuthVerdict::kStale;

  std::lock_guard<std::mutex> g(impl_->mu);
  if (now >= impl_->next_purge || impl_->nonces.size() >= kMaxNonces) {
    std::erase_if(impl_->nonces, [&](const auto& e) { return e.second < now; });
    impl_->next_purge = now + 1;
  }
  if (impl_->nonces.size() >= kMaxNonces) return AuthVerdict::kReplayed;
  // Remembered until its timestamp leaves the window: later it is stale anyway.
  if (!impl_->nonces.emplace(std::string(nonce), t + window).second) return AuthVerdict::kReplayed;
  return AuthVerdict::kOk;
}

AuthVerdict PeerAuth::verify(std::string_view method, std::string_view path, std::string_view range,
                             const char* header) {
  return verify(method, path, range, header, unix_now());
}

}  // namespace nydus::p2p
