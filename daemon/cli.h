// The nydusd command line (nydusd-contract.md §1), parsed with CLI11.
//
// Accepted shapes: `nydusd [GLOBAL] [FUSE flags]`, `nydusd fuse ...` (global
// flags may follow the subcommand) and `nydusd singleton ...`. Values may
// be given as `--flag value` or `--flag=value`. `--backend-source` (which
// the snapshotter may append although upstream lacks it) is accepted and
// ignored.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace nydus::daemon {

struct CommandLine {
  std::string subcommand = "fuse";  // "fuse" or "singleton"
  // global
  std::string apisock;
  std::string config;
  std::string p2p_config;  // --p2p-config: the daemon-level P2P file (daemon/p2p_runtime.h)
  std::string id;
  std::string supervisor;
  bool upgrade = false;
  std::string log_level = "info";
  std::string log_file;
  uint64_t log_rotation_size_mib = 0;
  uint64_t rlimit_nofile = 1000000;
  // fuse
  std::string mountpoint;
  std::string bootstrap;
  std::string localfs_dir;
  std::string shared_dir;
  std::string prefetch_files;
  std::string virtual_mountpoint = "/";
  std::string failover_policy = "resend";
  uint32_t threads = 4;
  bool writable = false;
  std::string dedup_db;
  std::string backend_source;
  // singleton
  std::string fscache;
  std::string fscache_tag;
  uint32_t fscache_threads = 4;
};

// Parses argv. Returns the exit code when the process should stop now
// (0 after --help/--version, 2 after a usage error, with the message
// already printed); std::nullopt when `out` is ready to run.
std::optional<int> parse_command_line(int argc, char** argv, CommandLine* out);

// The --version text; its "Git Commit:" line equals the API's git_commit.
std::string version_text();
std::string git_commit();
std::string package_version();
// The other --version lines, also reported by GET /api/v1/daemon.
std::string build_time();
std::string build_profile();
std::string compiler_version();

}  // namespace nydus::daemon
