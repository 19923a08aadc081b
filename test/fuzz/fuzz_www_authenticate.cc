// libFuzzer target: a registry's WWW-Authenticate header (untrusted: any
// registry or man in the middle can send one). Parsing returns a challenge
// or a message; it never crashes, and a Bearer challenge always has a realm
// and a service.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "backend/registry_backend.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string header(reinterpret_cast<const char*>(data), size);
  auto challenge = nydus::backend::parse_www_authenticate(header);
  if (!challenge.ok()) {
    if (challenge.status().message().empty()) std::abort();
    return 0;
  }
  if (challenge->scheme == "Bearer" && (challenge->realm.empty() || challenge->service.empty())) std::abort();
  return 0;
}
