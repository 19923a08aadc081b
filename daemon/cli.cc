#include "daemon/cli.h"

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "version.h"

namespace nydus::daemon {
namespace {

void add_global_flags(CLI::App& app, CommandLine* cl) {
  app.add_option("-A,--apisock", cl->apisock, "Path of the HTTP admin API unix socket");
  app.add_option("-C,--config", cl->config, "Config file (JSON v1/v2 or TOML v2)");
  app.add_option("--p2p-config", cl->p2p_config,
                 "Daemon-level P2P settings (JSON; default $NYDUS_P2P_CONFIG, else /etc/nydus/p2p.json if present)");
  auto* id = app.add_option("--id", cl->id, "Daemon instance id");
  auto* sup = app.add_option("--supervisor", cl->supervisor, "Supervisor socket for failover and upgrade");
  id->needs(sup);
  sup->needs(id);
  app.add_flag("--upgrade", cl->upgrade, "Start in takeover mode");
  app.add_option("-l,--log-level", cl->log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "warning", "error"}, CLI::ignore_case));
  app.add_option("-L,--log-file", cl->log_file, "Append logs to this file (.log added without extension)");
  app.add_option("--log-rotation-size", cl->log_rotation_size_mib, "Rotate the log file at this many MiB (0: never)");
  app.add_option("--rlimit-nofile", cl->rlimit_nofile, "Raise RLIMIT_NOFILE to this (0: unchanged)");
}

void add_fuse_flags(CLI::App& app, CommandLine* cl) {
  app.add_option("-M,--mountpoint", cl->mountpoint, "FUSE mountpoint (must exist)");
  auto* boot = app.add_option("-B,--bootstrap", cl->bootstrap, "RAFS bootstrap (metadata) file");
  auto* localfs = app.add_option("-D,--localfs-dir", cl->localfs_dir, "Blob directory (localfs backend + cache)");
  auto* shared = app.add_option("-s,--shared-dir", cl->shared_dir, "Passthrough source directory");
  boot->excludes(shared);
  (void)localfs;
  app.add_option("--prefetch-files", cl->prefetch_files, "File listing absolute paths to prefetch");
  app.add_option("-m,--virtual-mountpoint", cl->virtual_mountpoint, "Mountpoint inside the FUSE VFS");
  app.add_option("--failover-policy", cl->failover_policy, "none, resend or flush")
      ->check(CLI::IsMember({"none", "resend", "flush"}));
  app.add_option("--fuse-threads,--thread-num", cl->threads, "FUSE worker threads (1..1024)")
      ->check(CLI::Range(1, 1024));
  app.add_flag("--writable", cl->writable, "Mount read-write");
  app.add_option("--dedup-db", cl->dedup_db, "Chunk dedup database");
  app.add_option("--backend-source", cl->backend_source, "Accepted and ignored (snapshotter compatibility)");
}

}  // namespace

std::string git_commit() { return NYDUS_GIT_COMMIT; }
std::string package_version() { return "v0.1.0-nydus-p2p"; }

std::string build_time() { return std::string(__DATE__) + " " + __TIME__; }
std::string build_profile() { return "release"; }
std::string compiler_version() { return "none (C++20 nydus-p2p)"; }

std::string version_text() {
  return "nydusd \rVersion: \t" + package_version() + "\nGit Commit: \t" + git_commit() + "\nBuild Time: \t" +
         build_time() + "\nProfile: \t" + build_profile() + "\nRustc: \t\t" + compiler_version() + "\n";
}

std::optional<int> parse_command_line(int argc, char** argv, CommandLine* cl) {
  CLI::App app{"nydusd: serve nydus (RAFS) images over FUSE, with an embedded peer-to-peer backend",
               "nydusd"};
  bool show_version = false;
  app.add_flag("-V,--version", show_version, "Print version information");
  add_global_flags(app, cl);
  add_fuse_flags(app, cl);  // the bare form: `nydusd --mountpoint ...`

  CLI::App* fuse = app.add_subcommand("fuse", "Serve a RAFS image over FUSE (the default)");
  fuse->fallthrough();  // global flags may follow the subcommand
  add_fuse_flags(*fuse, cl);

  CLI::App* singleton = app.add_subcommand("singleton", "fscache/blobcache service");
  singleton->fallthrough();
  singleton->add_option("-F,--fscache", cl->fscache, "fscache cache directory");
  singleton->add_option("--fscache-tag", cl->fscache_tag, "fscache tag");
  singleton->add_option("--fscache-threads", cl->fscache_threads, "fscache worker threads")
      ->check(CLI::Range(1, 1024));
  app.require_subcommand(0, 1);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  if (show_version) {
    std::fputs(version_text().c_str(), stdout);
    return 0;
  }
  if (singleton->parsed()) cl->subcommand = "singleton";
  if (cl->subcommand == "fuse" && cl->mountpoint.empty()) {
    std::fprintf(stderr, "nydusd: error: the following required argument was not provided: --mountpoint\n");
    return 2;
  }
  if (!cl->localfs_dir.empty() && !cl->config.empty()) {
    std::fprintf(stderr, "nydusd: error: --localfs-dir cannot be used with --config\n");
    return 2;
  }
  return std::nullopt;
}

}  // namespace nydus::daemon
