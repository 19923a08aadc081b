// The FUSE session of the daemon: mount or take over a /dev/fuse
// connection, serve it with a pool of worker threads, stop with or without
// unmounting (nydusd-contract.md §1, §5).
//
// Two layers:
// - FuseSession: the pieces the daemon state machine drives one by one
//   (mount or take_over → start → stop → unmount), plus what failover needs
//   (the session fd for sendfd, the FUSE connection id, the FUSE_INIT the
//   kernel sent).
//
// The session serves an fs::Vfs: the instances the daemon attached to it
// (one at "/" in dedicated mode, any number under "/<id>" in shared mode).
//
// Mount: source "rafs", type "fuse", options
// ro,nosuid,nodev,noatime,default_permissions,allow_other.
//
// Takeover (no mount; the kernel connection already exists and its fd came
// from the supervisor): the kernel sends FUSE_INIT only once per connection,
// and libfuse 3.14 answers every request with EIO until its session has
// processed an INIT (fuse_session_process_buf_int: `if (!se->got_init)`).
// take_over() therefore replays the INIT the kernel sent to the first daemon
// (recorded by start() and carried in the saved state) into the new session
// while the session's fd number still refers to /dev/null, so libfuse
// negotiates exactly as the first daemon did and its INIT reply goes
// nowhere; then it dup3()s the real /dev/fuse fd onto that number. The
// kernel never sees a second INIT reply.
//
// Request loops. clone_fd = false (what a daemon with a supervisor needs):
// our own fixed pool of max_threads workers, each blocking in
// fuse_session_receive_buf() on the session fd and answering what it read;
// stop() sets a flag and interrupts the reads with SIGUSR1, so a request is
// either answered or never read. clone_fd = true: libfuse's
// fuse_session_loop_mt; its stop goes through fuse_session_exit(), after
// which libfuse 3.14 silently drops a request a worker has just read
// (fuse_session_receive_buf_int: `if (fuse_session_exited(se)) return 0`):
// that request stays unanswered in the kernel, and fails with ECONNABORTED
// once the process closes the cloned fd it was read on.
//
// Failover-safe reading: with clone_fd every worker reads through its own
// cloned /dev/fuse file. When that file is closed (the daemon dies) the
// kernel ends the requests the worker had read but not answered with
// ECONNABORTED: the application sees an error and FUSE_NOTIFY_RESEND cannot
// save them. Only requests read through the session fd (the file the
// supervisor also holds) survive the crash. A daemon with a supervisor must
// therefore run with clone_fd = false (as upstream nydusd, whose workers all
// read one shared file).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"
#include "daemon/saved_state.h"
#include "daemon/inflight.h"
#include "fs/vfs.h"

struct fuse_session;

namespace nydus::daemon {

struct FuseServerOptions {
  std::string mountpoint;  // canonical, existing directory
  unsigned max_threads = 4;
  // All workers on the session fd (our own loop; nydusd always) or one
  // cloned /dev/fuse fd per worker (libfuse's loop; no measurable gain on
  // this machine, see daemon/main.cc, and kept for the experiments that
  // show why failover cannot use it). Must be false when a supervisor may
  // take the fd over after a crash (see above).
  bool clone_fd = false;
};

// --failover-policy (upstream FailoverPolicy): what happens to requests the
// previous daemon had read but not answered.
enum class FailoverPolicy { kNone, kFlush, kResend };
// "none" | "flush" | "resend" (exact, lower case, as upstream).
Result<FailoverPolicy> parse_failover_policy(std::string_view text);
const char* failover_policy_name(FailoverPolicy policy);

// What take_over() needs besides the fd: from DaemonSavedState.
struct TakeoverParams {
  uint64_t conn_id = 0;  // 0: unknown, derived from the mountpoint
  FuseInitParams init;
  FailoverPolicy policy = FailoverPolicy::kResend;
};

// Thread-safety: start(), stop() and unmount() serialize on an internal
// mutex and may be called from any thread (state-machine actions run on the
// API thread or the main thread). The accessors may be called concurrently
// with everything, and so may invalidate(). The Vfs must outlive the
// session.
class FuseSession {
 public:
  // Mounts `fs` at options.mountpoint. The kernel's FUSE_INIT stays queued
  // until start(). Errors: kIo (mount failed; reason logged by libfuse).
  static Result<std::unique_ptr<FuseSession>> mount(fs::Vfs& vfs, const FuseServerOptions& options);

  // Adopts an existing connection: `fuse_fd` must be a /dev/fuse fd of the
  // FUSE mount at options.mountpoint (received from the supervisor). Checks
  // (through /proc/self/mountinfo) that the mount at options.mountpoint is
  // connection params.conn_id, then replays params.init (see the file
  // comment). Nothing is read from or written to the connection here: the
  // predecessor may still be serving it (hot upgrade: takeover comes before
  // its exit). params.policy is applied by the first start(); a policy the
  // kernel cannot apply is logged, not fatal (as upstream). Errors:
  // kInvalidInput (not /dev/fuse, INIT params not 7.x, the mountpoint is
  // not that connection), kIo.
  static Result<std::unique_ptr<FuseSession>> take_over(fs::Vfs& vfs, const FuseServerOptions& options,
                                                         UniqueFd fuse_fd, const TakeoverParams& params);

  // Stops the workers and closes this process's fd of the connection. Never
  // unmounts: if nothing else (the supervisor) holds the connection, the
  // kernel aborts it and the mountpoint reports ENOTCONN until unmounted.
  ~FuseSession();
  FuseSession(const FuseSession&) = delete;
  FuseSession& operator=(const FuseSession&) = delete;

  // READY → RUNNING: starts the worker threads. After mount(), first reads
  // and answers the kernel's FUSE_INIT on the calling thread (waiting up to
  // 10 s for it) and records it (init_params()). After take_over(), first
  // applies the failover policy (once). No-op when running.
  Status start();
  // RUNNING → READY: stops and joins the workers. Requests already being
  // handled are answered first; queued ones stay in the kernel for the next
  // start() or a successor. The mount stays. No-op when not running.
  void stop();
  // Removes the mount (lazily, as libfuse does), stopping first if needed.
  // Only the mount of this connection is removed. No-op when already
  // unmounted.
  Status unmount();

  bool running() const { return running_.load(); }
  // FUSE_INIT has been processed (sendfd answers 503 before that).
  bool initialized() const { return initialized_.load(); }
  // The loop ended on its own: the kernel closed the connection (external
  // umount, abort through fusectl).
  bool connection_lost() const { return lost_.load(); }
  // Waits until connection_lost() or the deadline; returns connection_lost().
  bool wait_connection_lost(std::chrono::steady_clock::time_point deadline);

  // The session's /dev/fuse fd (what sendfd sends a dup of); -1 after
  // unmount(). Valid as long as the session lives.
  int fd() const;
  // /sys/fs/fuse/connections/<conn_id>: major<<20 | minor of the mount's
  // st_dev, from /proc/self/mountinfo (never stats the mount).
  uint64_t conn_id() const { return conn_id_; }
  // The kernel's FUSE_INIT (set once initialized()).
  std::optional<FuseInitParams> init_params() const;
  const std::string& mountpoint() const { return options_.mountpoint; }

  // Applies a failover policy to the connection now (the first start()
  // after take_over() does it). kResend: FUSE_NOTIFY_RESEND through /dev/fuse (kernel ≥ 6.9),
  // else "1" into /proc/sys/fs/fuse/connections/<id>/resend or
  // /sys/fs/fuse/connections/<id>/resend; kFlush: "1" into …/<id>/flush.
  // Returns what was done ("FUSE_NOTIFY_RESEND", a sysfs path, "none"), or
  // kUnsupported when the kernel offers no way.
  Result<std::string> apply_failover_policy(FailoverPolicy policy);

  // Tells the kernel that the tree changed under a mount or umount of the
  // Vfs (fs::VfsChange): drops the cached dentry of change.entry_name, the
  // cached attributes and listing of its parent, and on umount the
  // instance root. Only while running (otherwise the kernel holds nothing
  // newer than what a later lookup returns, and a notification could wait
  // for a worker that is not there); never from a request handler.
  void invalidate(const fs::VfsChange& change, bool umount);

  // The requests the workers are handling now (GET /metrics/inflight).
  std::vector<InflightOp> inflight() const;

 private:
  FuseSession(fs::Vfs& vfs, const FuseServerOptions& options);
  Status create_session();
  Status process_kernel_init();
  void run_libfuse_loop();   // clone_fd: libfuse's multithreaded loop
  void run_worker();         // shared fd: one of our own workers
  void loop_ended();         // a loop thread is about to return
  void forget_mountpoint();  // drop libfuse's mountpoint without unmounting

  FuseServerOptions options_;
  struct Context;
  std::unique_ptr<Context> context_;  // the session userdata (FuseContext)
  fuse_session* se_ = nullptr;
  bool adopted_ = false;   // take_over(): libfuse does not know the mountpoint
  std::atomic<bool> unmounted_{false};
  uint64_t conn_id_ = 0;

  std::mutex mu_;  // serializes start/stop/unmount
  std::vector<std::thread> threads_;  // the libfuse loop thread, or our workers
  std::atomic<int> live_threads_{0};
  std::atomic<bool> running_{false};
  std::atomic<bool> initialized_{false};
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> lost_{false};
  mutable std::mutex state_mu_;
  std::condition_variable lost_cv_;
  std::optional<FuseInitParams> init_;  // GUARDED_BY(state_mu_)
  std::optional<FailoverPolicy> pending_policy_;  // GUARDED_BY(mu_); set by take_over()
};

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and so in every
// thread created after it), so that wait_for_shutdown() can take them
// synchronously. Call in main() before starting any thread.
void block_shutdown_signals();

enum class ShutdownCause { kSignal, kConnectionLost };
// Waits for SIGTERM/SIGINT (SIGHUP is ignored) or for the session's
// connection to end, whichever comes first. Neither stops nor unmounts.
ShutdownCause wait_for_shutdown(FuseSession& session);
// The same for a daemon whose session may not exist yet (waiting in INIT
// for a takeover): `connection_lost` is polled every 100 ms.
ShutdownCause wait_for_shutdown(const std::function<bool()>& connection_lost);

// nydusd-contract.md §1 start-up crash check, without touching the mount:
// true when `mountpoint` is (per /proc/self/mountinfo) a FUSE mount with
// source "rafs" and `apisock` exists but nothing accepts connections on it.
// The daemon then does not mount and waits in INIT for a takeover.
bool previous_daemon_crashed(const std::string& mountpoint, const std::string& apisock);

// The FUSE connection id of the topmost mount at `mountpoint` from
// /proc/self/mountinfo (major<<20|minor), if it is a FUSE mount.
std::optional<uint64_t> fuse_conn_id_of(const std::string& mountpoint);

}  // namespace nydus::daemon
