// libFuzzer target: config text in any shape (JSON v1/v2, TOML v2). Parsing
// returns a config or a message; it never crashes or throws.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "daemon/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto config = nydus::daemon::parse_config(text);
  if (!config.ok() && config.status().message().empty()) std::abort();
  return 0;
}
