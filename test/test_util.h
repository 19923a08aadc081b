// Helpers shared by the Catch2 unit tests.
#pragma once

#include <cstdlib>
#include <string>

namespace nydus::test {

// Root of the upstream-made images: $NYDUS_FIXTURES, else the
// ../shared/fixtures/nydus next to the source tree (set at build time).
inline std::string fixtures_dir() {
  if (const char* env = std::getenv("NYDUS_FIXTURES"); env && *env) return env;
  return NYDUS_DEFAULT_FIXTURES;
}

inline std::string fixture(const std::string& relative) { return fixtures_dir() + "/" + relative; }

}  // namespace nydus::test
