// libFuzzer target: the daemon state a successor receives from the
// supervisor (untrusted bytes). Decoding returns a state or a message; it
// never crashes or throws, and whatever it accepts survives a re-encode.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "daemon/saved_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto state = nydus::daemon::decode_saved_state(std::span<const uint8_t>(data, size));
  if (!state.ok()) {
    if (state.status().message().empty()) std::abort();
    return 0;
  }
  auto again = nydus::daemon::decode_saved_state(nydus::daemon::encode_saved_state(*state));
  if (!again.ok() || !(*again == *state)) std::abort();
  return 0;
}
