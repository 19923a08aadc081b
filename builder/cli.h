// The `nydus-image` command line: upstream's subcommands `create`, `merge`,
// `check` and `inspect` with their flag names (src/bin/nydus-image/main.rs
// of dragonflyoss/nydus), parsed with CLI11, run on the builder library.
//
// Exit codes: 0 success, 1 failure (one "nydus-image: error: ..." line on
// stderr naming what failed), 2 usage error (CLI11's message).
// Reads stdin only for `--prefetch-policy fs` (a list of absolute paths).
#pragma once

namespace nydus::builder {

int run_nydus_image(int argc, char** argv);

}  // namespace nydus::builder
