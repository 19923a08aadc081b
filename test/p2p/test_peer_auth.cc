// PeerAuth (p2p/peer_auth.h): the guarded peer port's request signatures.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "p2p/peer_auth.h"
#include "test_util.h"

using nydus::p2p::AuthVerdict;
using nydus::p2p::PeerAuth;
using nydus::test::TempDir;

namespace {

const std::string kPath = "/v2/lib/app/blobs/sha256:" + std::string(64, 'a');
constexpr int64_t kNow = 1700000000;

std::string write_secret(const TempDir& dir, const std::string& name, const std::string& secret) {
  const std::string path = dir.path() + "/" + name;
  std::ofstream(path, std::ios::binary) << secret;
  return path;
}

std::unique_ptr<PeerAuth> load(const std::string& path, int window_s = 30) {
  auto auth = PeerAuth::load(path, std::chrono::seconds(window_s));
  INFO((auth.ok() ? "" : auth.status().message()));
  REQUIRE(auth.ok());
  return std::move(auth).value();
}

}  // namespace

TEST_CASE("peer auth: a signature from another implementation is accepted once", "[p2p][auth]") {
  TempDir dir("peer-auth");
  // The newline is stripped, as `echo secret > file` and Secrets made from literals add one.
  auto auth = load(write_secret(dir, "secret", "0123456789abcdef0123\n"));
  // HMAC-SHA256 computed by Python's hmac module over the documented text.
  const std::string header =
      "v1 t=1700000000 n=00112233445566778899aabbccddeeff "
      "s=50744408667564eaf8784d64d2f32151bbeefec757e80bbbaaa644ebdc84e00d";
  CHECK(auth->verify("GET", kPath, "bytes=0-9", header.c_str(), kNow + 5) == AuthVerdict::kOk);
  CHECK(auth->verify("GET", kPath, "bytes=0-9", header.c_str(), kNow + 5) == AuthVerdict::kReplayed);
}

TEST_CASE("peer auth: what is refused and why", "[p2p][auth]") {
  TempDir dir("peer-auth");
  auto auth = load(write_secret(dir, "secret", "a-cluster-secret-of-32-bytes...."));
  auto other = load(write_secret(dir, "other", "another-secret-entirely-16+"));

  const std::string good = auth->sign("GET", kPath, "bytes=0-4095", kNow);
  CHECK(auth->verify("GET", kPath, "bytes=0-4095", nullptr, kNow) == AuthVerdict::kMissing);
  // Moved to another method, path or range: the signature no longer fits.
  CHECK(auth->verify("HEAD", kPath, "bytes=0-4095", good.c_str(), kNow) == AuthVerdict::kBadSignature);
  CHECK(auth->verify("GET", kPath + "x", "bytes=0-4095", good.c_str(), kNow) == AuthVerdict::kBadSignature);
  CHECK(auth->verify("GET", kPath, "bytes=0-8191", good.c_str(), kNow) == AuthVerdict::kBadSignature);
  CHECK(auth->verify("GET", kPath, "", good.c_str(), kNow) == AuthVerdict::kBadSignature);
  // Signed with another secret.
  const std::string foreign = other->sign("GET", kPath, "bytes=0-4095", kNow);
  CHECK(auth->verify("GET", kPath, "bytes=0-4095", foreign.c_str(), kNow) == AuthVerdict::kBadSignature);
  // Outside the window either way; right at its edge still fine.
  CHECK(auth->verify("GET", kPath, "bytes=0-4095", good.c_str(), kNow + 31) == AuthVerdict::kStale);
  CHECK(auth->verify("GET", kPath, "bytes=0-4095", good.c_str(), kNow - 31) == AuthVerdict::kStale);
  CHECK(auth->verify("GET", kPath, "bytes=0-4095", good.c_str(), kNow + 30) == AuthVerdict::kOk);
  CHECK(auth->verify("GET", kPath, "bytes=0-4095", good.c_str(), kNow + 30) == AuthVerdict::kReplayed);
  // A second signature of the same request has its own nonce.
  const std::string again = auth->sign("GET", kPath, "bytes=0-4095", kNow);
  CHECK(again != good);
  CHECK(auth->verify("GET", kPath, "bytes=0-4095", again.c_str(), kNow) == AuthVerdict::kOk);

  // Malformed headers of every kind (never a crash, never accepted).
  const std::string mac64(64, 'a'), nonce32(32, 'b');
  for (const std::string& bad :
       {std::string(""), std::string("v1"), std::string("v2 t=1 n=" + nonce32 + " s=" + mac64),
        "v1 t= n=" + nonce32 + " s=" + mac64, "v1 t=12x n=" + nonce32 + " s=" + mac64,
        "v1 t=1234567890123 n=" + nonce32 + " s=" + mac64, "v1 t=1 n=" + nonce32.substr(1) + " s=" + mac64,
        "v1 t=1 n=" + std::string(32, 'B') + " s=" + mac64, "v1 t=1 n=" + nonce32 + " s=" + mac64.substr(2),
        "v1 t=1 n=" + nonce32 + " s=" + mac64 + "aa", "v1 t=1 n=" + nonce32 + "  s=" + mac64,
        "v1 t=1 n=" + nonce32 + " x=" + mac64, std::string(300, 'v')}) {
    INFO(bad);
    const AuthVerdict v = auth->verify("GET", kPath, "", bad.c_str(), kNow);
    CHECK((v == AuthVerdict::kMalformed || v == AuthVerdict::kBadSignature));
  }
}

TEST_CASE("peer auth: the secret file", "[p2p][auth]") {
  TempDir dir("peer-auth");
  auto short_secret = PeerAuth::load(write_secret(dir, "short", "too-short\n"), std::chrono::seconds(30));
  REQUIRE_FALSE(short_secret.ok());
  CHECK(short_secret.status().message().find("p2p.secret_file") != std::string::npos);
  CHECK(short_secret.status().message().find("16") != std::string::npos);
  auto missing = PeerAuth::load(dir.path() + "/none", std::chrono::seconds(30));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find("p2p.secret_file") != std::string::npos);

  // Rotation: the file is read again when it changes; the previous secret
  // is still accepted for one window so that nodes rotate one by one.
  const std::string path = write_secret(dir, "rotating", "the-first-secret-of-this-cluster");
  auto node_a = load(path, 2);
  auto node_b = load(path, 2);
  const auto now = [] {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const std::string old_signature = node_b->sign("GET", kPath, "", now());
  write_secret(dir, "rotating.new", "the-second-secret-of-this-cluster");
  REQUIRE(std::rename((path + ".new").c_str(), path.c_str()) == 0);  // as Kubernetes swaps a Secret's files
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));     // the file is checked once a second
  const std::string new_signature = node_a->sign("GET", kPath, "", now());
  CHECK(node_b->verify("GET", kPath, "", new_signature.c_str(), now()) == AuthVerdict::kOk);
  CHECK(node_a->verify("GET", kPath, "", old_signature.c_str(), now()) == AuthVerdict::kOk);
  // After the window the old secret is refused.
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  const std::string stale_secret_signature =
      PeerAuth::load(write_secret(dir, "old", "the-first-secret-of-this-cluster"), std::chrono::seconds(2))
          .value()
          ->sign("GET", kPath, "", now());
  CHECK(node_a->verify("GET", kPath, "", stale_secret_signature.c_str(), now()) == AuthVerdict::kBadSignature);
  // A rewrite with a secret too short keeps the one in use.
  write_secret(dir, "rotating", "short");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const std::string still = node_a->sign("GET", kPath, "", now());
  CHECK(node_b->verify("GET", kPath, "", still.c_str(), now()) == AuthVerdict::kOk);
}
