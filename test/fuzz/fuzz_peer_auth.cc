// libFuzzer target: the X-Nydus-P2P-Auth header (p2p/peer_auth.h) is what
// an unauthenticated stranger controls on the peer port. The input is split
// at NUL bytes into a header value, a method, a path and a Range value.
// Invariants:
//   - a header the target did not sign is never accepted (forging the
//     HMAC is what would take), and verify never crashes or hangs;
//   - a signature made by PeerAuth::sign over the fuzzed method, path and
//     range is accepted once, then refused as replayed, and refused as a
//     bad signature for any other path.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "p2p/peer_auth.h"

namespace {

using nydus::p2p::AuthVerdict;
using nydus::p2p::PeerAuth;

PeerAuth& auth() {
  static std::unique_ptr<PeerAuth> instance = [] {
    char dir[] = "/tmp/fuzz-peer-auth-XXXXXX";
    if (!mkdtemp(dir)) std::abort();
    const std::string path = std::string(dir) + "/secret";
    std::ofstream(path) << "fuzzing-secret-of-the-cluster-0123456789\n";
    auto loaded = PeerAuth::load(path, std::chrono::seconds(30));
    if (!loaded.ok()) std::abort();
    return std::move(loaded).value();
  }();
  return *instance;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> fields(4);
  size_t field = 0;
  for (size_t i = 0; i < size && field < fields.size(); ++i) {
    if (data[i] == 0) {
      ++field;
      continue;
    }
    fields[field].push_back(static_cast<char>(data[i]));
  }
  const std::string& header = fields[0];
  const std::string& method = fields[1];
  const std::string& path = fields[2];
  const std::string& range = fields[3];
  // Each input a minute later than the one before: the nonces of earlier
  // inputs leave the window and are purged, as on a long-running server
  // (a fixed clock would fill the nonce table until it refuses everything).
  static int64_t now = 1700000000;
  now += 61;
  if (auth().verify(method, path, range, header.c_str(), now) == AuthVerdict::kOk) std::abort();

  const std::string signed_header = auth().sign(method, path, range, now);
  if (auth().verify(method, path + "/", range, signed_header.c_str(), now) != AuthVerdict::kBadSignature)
    std::abort();
  if (auth().verify(method, path, range, signed_header.c_str(), now) != AuthVerdict::kOk) std::abort();
  if (auth().verify(method, path, range, signed_header.c_str(), now) != AuthVerdict::kReplayed) std::abort();
  return 0;
}
