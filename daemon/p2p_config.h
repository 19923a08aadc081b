// Parsing the `p2p` config object (p2p/p2p_config.h has the fields) and
// finding the daemon-level P2P file (daemon/p2p_runtime.h says which source
// wins).
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "p2p/p2p_config.h"

namespace nydus::daemon {

// The `p2p` object -> settings; errors name the field ("config: p2p.listen
// ..."). Unknown keys are ignored, as elsewhere in the config. Sizes
// (store_size, unit_size) are integers of bytes or strings with a binary
// suffix ("10GiB", "4MiB", "512KiB").
Result<p2p::P2pConfig> parse_p2p_object(const nlohmann::json& object);

// The daemon-level file: `flag_path` (--p2p-config) when not empty, else
// $NYDUS_P2P_CONFIG, else /etc/nydus/p2p.json when it exists; nullopt when
// none applies. A named file that is missing or malformed is an error.
Result<std::optional<p2p::P2pConfig>> load_daemon_p2p_config(const std::string& flag_path);

}  // namespace nydus::daemon
