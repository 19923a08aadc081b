// PeerAuth: the guarded peer port's request signatures (issue 12).
//
// Every node of a cluster reads the same secret (p2p.secret_file, e.g. a
// mounted Kubernetes Secret). A peer request carries
//
//   X-Nydus-P2P-Auth: v1 t=<unix seconds> n=<32 hex nonce> s=<64 hex>
//
// where s = HMAC-SHA256(secret, "nydus-p2p-v1\n" METHOD "\n" PATH "\n"
// RANGE "\n" t "\n" n): PATH is the request path without the query, RANGE
// the Range header's value ("" without one). The server accepts a request
// when the HMAC matches, t is within `window` seconds of its own clock, and
// the nonce was not seen within the window (so a captured request cannot be
// replayed, nor moved to another path or range). The secret file is read
// again when it changes (checked at most once a second); after a rotation
// the previous secret is still accepted for one window, so nodes that have
// not reread the file yet are not locked out.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace nydus::p2p {

inline constexpr const char* kPeerAuthHeader = "X-Nydus-P2P-Auth";

// Why a request was refused (or kOk). Names are metric and log words.
// kNoCertificate and kUntrustedCertificate come from mutual TLS (p2p/peer_tls.h).
enum class AuthVerdict { kOk, kMissing, kMalformed, kBadSignature, kStale, kReplayed, kNoCertificate, kUntrustedCertificate };
const char* auth_verdict_name(AuthVerdict v);

class PeerAuth {
 public:
  // Reads the secret (at least 16 bytes after trailing whitespace is
  // stripped). Errors name `secret_file`.
  static Result<std::unique_ptr<PeerAuth>> load(const std::string& secret_file, std::chrono::seconds window);
  ~PeerAuth();

  // The header value for a request; `now` is unix time (tests pass their own).
  std::string sign(std::string_view method, std::string_view path, std::string_view range, int64_t now) const;
  std::string sign(std::string_view method, std::string_view path, std::string_view range) const;

  // `header` is the X-Nydus-P2P-Auth value (nullptr when absent). A request
  // accepted once is refused as kReplayed afterwards.
  AuthVerdict verify(std::string_view method, std::string_view path, std::string_view range, const char* header,
                     int64_t now);
  AuthVerdict verify(std::string_view method, std::string_view path, std::string_view range, const char* header);

  std::chrono::seconds window() const;

 private:
  struct Impl;
  explicit PeerAuth(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nydus::p2p
