// A stand-in nydusd for the FUSE takeover tests (test_failover.cc): serves a
// fixture image through daemon::FuseSession and plays either side of a
// failover through a supervisor socket.
//
//   failover_harness serve <mountpoint> <supervisor> <bootstrap> <blob_dir> [options]
//       mount, start, send state + fd to the supervisor, print "READY <conn>",
//       serve; SIGTERM: stop and unmount (or, with --keep-mount, stop and
//       exit without unmounting, as PUT /daemon/exit does).
//   failover_harness takeover <mountpoint> <supervisor> <bootstrap> <blob_dir> [options]
//       receive state + fd from the supervisor, take over, start, print
//       "READY <conn>", serve; SIGTERM: stop and unmount.
//   failover_harness raw-no-init <mountpoint> <supervisor> <bootstrap> <blob_dir>
//       experiment: adopt the fd in a plain libfuse session WITHOUT
//       replaying FUSE_INIT and serve it (libfuse then answers EIO).
// Options: --clone-fd, --policy none|flush|resend, --read-delay-ms N (every
// blob read sleeps N ms, so requests are in flight when a test kills us),
// --start-after-file F (takeover: print "TAKEN <conn>", start once F exists).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backend/chunk_reader.h"
#include "backend/localfs_backend.h"
#include "bootstrap/image.h"
#include "common/log.h"
#include "daemon/fuse_ops.h"
#include "daemon/fuse_server.h"
#include "fs/vfs.h"
#include "daemon/saved_state.h"
#include "daemon/supervisor.h"
#include "fs/filesystem.h"

using namespace nydus;
using namespace nydus::daemon;

namespace {

class SlowReader : public backend::BlobReader {
 public:
  SlowReader(std::shared_ptr<backend::BlobReader> inner, int delay_ms) : inner_(std::move(inner)), delay_ms_(delay_ms) {}
  Result<size_t> try_read(uint64_t offset, std::span<uint8_t> dst) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    return inner_->try_read(offset, dst);
  }
  Result<uint64_t> size() override { return inner_->size(); }

 private:
  std::shared_ptr<backend::BlobReader> inner_;
  int delay_ms_;
};

class SlowBackend : public backend::BlobBackend {
 public:
  SlowBackend(std::unique_ptr<backend::BlobBackend> inner, int delay_ms) : inner_(std::move(inner)), delay_ms_(delay_ms) {}
  Result<std::shared_ptr<backend::BlobReader>> reader(const std::string& blob_id) override {
    auto r = inner_->reader(blob_id);
    if (!r.ok() || delay_ms_ <= 0) return r;
    return std::shared_ptr<backend::BlobReader>(std::make_shared<SlowReader>(std::move(r).value(), delay_ms_));
  }
  std::string type() const override { return inner_->type(); }

 private:
  std::unique_ptr<backend::BlobBackend> inner_;
  int delay_ms_;
};

struct Args {
  std::string mode, mountpoint, supervisor, bootstrap, blob_dir;
  bool clone_fd = false;
  bool keep_mount = false;
  FailoverPolicy policy = FailoverPolicy::kResend;
  int read_delay_ms = 0;
  std::string start_after_file;  // takeover: start only once this file exists
};

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "failover_harness: %s\n", message.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  if (argc < 6) die("usage: failover_harness serve|takeover|raw-no-init <mnt> <supervisor> <boot> <blob_dir> [...]");
  Args a{argv[1], argv[2], argv[3], argv[4], argv[5]};
  for (int i = 6; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--clone-fd") a.clone_fd = true;
    else if (arg == "--keep-mount") a.keep_mount = true;
    else if (arg == "--policy" && i + 1 < argc) {
      auto p = parse_failover_policy(argv[++i]);
      if (!p.ok()) die(p.status().message());
      a.policy = *p;
    } else if (arg == "--start-after-file" && i + 1 < argc) {
      a.start_after_file = argv[++i];
    } else if (arg == "--read-delay-ms" && i + 1 < argc) {
      a.read_delay_ms = std::atoi(argv[++i]);
    } else {
      die("unknown argument " + arg);
    }
  }
  return a;
}

std::unique_ptr<fs::Filesystem> open_fs(const Args& a) {
  auto image = bootstrap::Image::open(a.bootstrap);
  if (!image.ok()) die(image.status().message());
  backend::LocalFsConfig local;
  local.dir = a.blob_dir;
  auto slow = std::make_unique<SlowBackend>(backend::make_localfs_backend(local), a.read_delay_ms);
  backend::ChunkReaderOptions options;
  auto reader = std::make_unique<backend::ChunkReader>((*image)->blobs(), std::move(slow), options);
  fs::FsOptions fs_options;
  fs_options.default_uid = getuid();
  fs_options.default_gid = getgid();
  return std::make_unique<fs::Filesystem>(std::move(image).value(), std::move(reader), fs_options);
}

// The filesystem attached at "/" of a Vfs, as a dedicated daemon serves it.
std::unique_ptr<fs::Vfs> open_vfs(const Args& a) {
  auto vfs = std::make_unique<fs::Vfs>();
  if (auto m = vfs->mount("/", std::shared_ptr<fs::Filesystem>(open_fs(a))); !m.ok()) die(m.status().message());
  return vfs;
}

void ready(uint64_t conn) {
  std::printf("READY %llu\n", static_cast<unsigned long long>(conn));
  std::fflush(stdout);
}

int serve(const Args& a) {
  auto vfs = open_vfs(a);
  FuseServerOptions options;
  options.mountpoint = a.mountpoint;
  options.clone_fd = a.clone_fd;
  auto session = FuseSession::mount(*vfs, options);
  if (!session.ok()) die(session.status().message());
  if (Status s = (*session)->start(); !s.ok()) die(s.message());

  DaemonSavedState state;
  state.fuse_conn_id = (*session)->conn_id();
  state.fuse_init = *(*session)->init_params();
  state.mounts.push_back(SavedMount{"/", "rafs", a.bootstrap, "{}", {}, 0, 0});
  const std::vector<uint8_t> bytes = encode_saved_state(state);
  if (Status s = send_state(a.supervisor, bytes, (*session)->fd()); !s.ok()) die(s.message());
  ready((*session)->conn_id());

  const ShutdownCause cause = wait_for_shutdown(**session);
  (*session)->stop();
  if (cause == ShutdownCause::kSignal && !a.keep_mount) {
    if (Status s = (*session)->unmount(); !s.ok()) die(s.message());
  }
  return 0;
}

int take_over(const Args& a) {
  auto received = receive_state(a.supervisor, std::chrono::steady_clock::now() + std::chrono::seconds(10));
  if (!received.ok()) die(received.status().message());
  auto state = decode_saved_state(received->data);
  if (!state.ok()) die(state.status().message());
  auto vfs = open_vfs(a);
  FuseServerOptions options;
  options.mountpoint = a.mountpoint;
  options.clone_fd = a.clone_fd;
  TakeoverParams params{state->fuse_conn_id, state->fuse_init, a.policy};
  auto session = FuseSession::take_over(*vfs, options, std::move(received->fd), params);
  if (!session.ok()) die(session.status().message());
  if (!a.start_after_file.empty()) {
    // The snapshotter's hot-upgrade order: takeover (READY) while the old
    // daemon still serves, its exit, then start.
    std::printf("TAKEN %llu\n", static_cast<unsigned long long>((*session)->conn_id()));
    std::fflush(stdout);
    while (access(a.start_after_file.c_str(), F_OK) != 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (Status s = (*session)->start(); !s.ok()) die(s.message());
  ready((*session)->conn_id());
  const ShutdownCause cause = wait_for_shutdown(**session);
  (*session)->stop();
  if (cause == ShutdownCause::kSignal && !a.keep_mount) {
    if (Status s = (*session)->unmount(); !s.ok()) die(s.message());
  }
  return 0;
}

// Evidence for why take_over() replays INIT: a libfuse 3.14 session that
// adopts the fd without it answers every request with EIO.
int raw_no_init(const Args& a) {
  auto received = receive_state(a.supervisor, std::chrono::steady_clock::now() + std::chrono::seconds(10));
  if (!received.ok()) die(received.status().message());
  auto vfs = open_vfs(a);
  FuseContext context;
  context.vfs = vfs.get();
  std::vector<std::string> storage = {"nydusd"};
  std::vector<char*> argv;
  for (auto& s : storage) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  const fuse_lowlevel_ops& ops = fuse_operations();
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &context);
  fuse_opt_free_args(&args);
  const int fd = received->fd.release();
  const std::string dev = "/dev/fd/" + std::to_string(fd);
  if (!se || fuse_session_mount(se, dev.c_str()) != 0) die("libfuse refused " + dev);
  ready(0);
  // Single-threaded; killed by the test.
  fuse_session_loop(se);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  block_shutdown_signals();
  Args a = parse(argc, argv);
  if (a.mode == "serve") return serve(a);
  if (a.mode == "takeover") return take_over(a);
  if (a.mode == "raw-no-init") return raw_no_init(a);
  die("unknown mode " + a.mode);
}
