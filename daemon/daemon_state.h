// The nydusd daemon state machine (nydusd-contract.md §1, §3.2, §5).
//
// States and events are upstream's (service/src/daemon.rs, `DaemonState` and
// the `state_machine!` block). Transitions, with the action each one runs:
//
//   INIT    --Mount-->    READY                  (none: the caller mounted first)
//   INIT    --Takeover--> READY     [restore]    (pull state + /dev/fuse fd, §5)
//   INIT    --Stop-->     STOPPED                (none)
//   READY   --Start-->    RUNNING   [start_service]      (spawn FUSE workers)
//   READY   --Stop-->     STOPPED   [umount]             (unmount, then stop workers)
//   READY   --Exit-->     STOPPED                (none: does NOT unmount; hot upgrade)
//   RUNNING --Stop-->     READY     [terminate_service]  (stop + join FUSE workers)
//   STOPPED is final.
//
// Any other (state, event) pair is rejected with Code::kInvalidInput and the
// message `UnexpectedEvent("<Event>")`, which is the Rust Debug of upstream's
// DaemonErrorKind::UnexpectedEvent; the API answers it with 400 and wraps it,
// e.g. `Configure(DaemonAbnormal(UnexpectedEvent("Start")))`. kInvalidInput
// is reserved for that case: an action that fails with kInvalidInput is
// reported as kIo, so callers can tell "wrong state" from "action failed".
//
// Differences from upstream, on purpose:
// - The reported state follows the transition table: after Mount it is
//   READY. Upstream's reported state only changes when an action runs, so it
//   still says INIT between Mount and Start; nothing can observe that window
//   because the API socket is created after Start.
// - When an action fails the state does not move and the action's Status is
//   returned, so the event can be retried (e.g. a failed Takeover leaves
//   INIT). Upstream's internal FSM has already moved by then, so a retry gets
//   UnexpectedEvent while the reported state still shows the old one.
// - After STOPPED every event is UnexpectedEvent; upstream's state-machine
//   thread has exited by then and answers with a channel error (500).
//
// Thread-safety: every method may be called from any thread (API worker,
// FUSE threads, signal thread). fire(), trigger_stop() and trigger_exit() are
// serialized: one transition at a time, its action runs on the calling thread
// with an internal mutex held, so an action must not call back into fire()
// (that is detected and rejected, not a deadlock). state() never blocks, even
// while an action runs, and reports the state before the running transition.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "common/status.h"

namespace nydus::daemon {

// Numbering is upstream's (`DaemonState as i32`), should it ever be persisted.
enum class DaemonState { kInit = 1, kRunning = 2, kReady = 3, kStopped = 4, kUnknown = 5 };

enum class DaemonEvent { kMount, kTakeover, kStart, kStop, kExit };

// "INIT", "READY", "RUNNING", "STOPPED", "UNKNOWN": the strings of
// DaemonInfo.state that the snapshotter compares against.
const char* daemon_state_name(DaemonState state);
// "Mount", "Takeover", "Start", "Stop", "Exit" (upstream's Debug names).
const char* daemon_event_name(DaemonEvent event);

class DaemonStateMachine {
 public:
  // Work done on a transition. Each may be empty (then it succeeds). They
  // run on the thread that fires the event, one at a time.
  struct Actions {
    std::function<Status()> restore;            // INIT --Takeover--> READY
    std::function<Status()> start_service;      // READY --Start--> RUNNING
    std::function<Status()> terminate_service;  // RUNNING --Stop--> READY
    std::function<Status()> umount;             // READY --Stop--> STOPPED
  };

  DaemonStateMachine() = default;
  explicit DaemonStateMachine(Actions actions) : actions_(std::move(actions)) {}
  DaemonStateMachine(const DaemonStateMachine&) = delete;
  DaemonStateMachine& operator=(const DaemonStateMachine&) = delete;

  // Applies one event: runs the transition's action and, if it succeeds,
  // moves to the next state and wakes wait_for(). Errors: kInvalidInput
  // `UnexpectedEvent("<Event>")` for a transition the table lacks (also for
  // a re-entrant call from inside an action), else the action's Status.
  Status fire(DaemonEvent event);

  // Upstream's trigger_stop(): RUNNING fires Stop twice (→ READY → STOPPED,
  // unmounting); READY and INIT fire Stop once; STOPPED is a no-op. Used on
  // SIGTERM/SIGINT. Atomic with respect to other events.
  Status trigger_stop();
  // Upstream's trigger_exit() (PUT /daemon/exit): RUNNING fires Stop then
  // Exit (→ STOPPED without unmounting); READY fires Exit; INIT fires Stop;
  // STOPPED is a no-op. Atomic with respect to other events.
  Status trigger_exit();

  DaemonState state() const { return state_.load(std::memory_order_acquire); }
  const char* state_name() const { return daemon_state_name(state()); }

  // Blocks until the state equals `target` or `deadline` passes; returns
  // whether the target was reached. Returns at once if it already is.
  bool wait_for(DaemonState target, std::chrono::steady_clock::time_point deadline) const;

 private:
  // Requires fire_mu_.
  Status fire_locked(DaemonEvent event);

  const Actions actions_;
  std::mutex fire_mu_;                          // serializes transitions
  std::atomic<std::thread::id> firing_thread_{};  // who holds fire_mu_
  std::atomic<DaemonState> state_{DaemonState::kInit};
  mutable std::mutex wait_mu_;                  // pairs with wait_cv_
  mutable std::condition_variable wait_cv_;
};

}  // namespace nydus::daemon
