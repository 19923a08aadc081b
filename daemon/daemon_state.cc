#include "daemon/daemon_state.h"

#include <unistd.h>

#include <string>

#include "common/log.h"

namespace nydus::daemon {
namespace {

using Action = std::function<Status()> DaemonStateMachine::Actions::*;

struct Transition {
  DaemonState from;
  DaemonEvent event;
  DaemonState next;
  Action action;  // null: the transition has no action
};

// The transition table of the header (upstream's `state_machine!` block).
constexpr Transition kTransitions[] = {
    {DaemonState::kInit, DaemonEvent::kMount, DaemonState::kReady, nullptr},
    {DaemonState::kInit, DaemonEvent::kTakeover, DaemonState::kReady, &DaemonStateMachine::Actions::restore},
    {DaemonState::kInit, DaemonEvent::kStop, DaemonState::kStopped, nullptr},
    {DaemonState::kReady, DaemonEvent::kStart, DaemonState::kRunning, &DaemonStateMachine::Actions::start_service},
    {DaemonState::kReady, DaemonEvent::kStop, DaemonState::kStopped, &DaemonStateMachine::Actions::umount},
    {DaemonState::kReady, DaemonEvent::kExit, DaemonState::kStopped, nullptr},
    {DaemonState::kRunning, DaemonEvent::kStop, DaemonState::kReady,
     &DaemonStateMachine::Actions::terminate_service},
};

const Transition* lookup(DaemonState from, DaemonEvent event) {
  for (const Transition& t : kTransitions)
    if (t.from == from && t.event == event) return &t;
  return nullptr;
}

Status unexpected_event(DaemonEvent event) {
  return Status::invalid(std::string("UnexpectedEvent(\"") + daemon_event_name(event) + "\")");
}

}  // namespace

const char* daemon_state_name(DaemonState state) {
  switch (state) {
    case DaemonState::kInit: return "INIT";
    case DaemonState::kRunning: return "RUNNING";
    case DaemonState::kReady: return "READY";
    case DaemonState::kStopped: return "STOPPED";
    case DaemonState::kUnknown: return "UNKNOWN";
  }
  return "UNKNOWN";
}

const char* daemon_event_name(DaemonEvent event) {
  switch (event) {
    case DaemonEvent::kMount: return "Mount";
    case DaemonEvent::kTakeover: return "Takeover";
    case DaemonEvent::kStart: return "Start";
    case DaemonEvent::kStop: return "Stop";
    case DaemonEvent::kExit: return "Exit";
  }
  return "Unknown";
}

Status DaemonStateMachine::fire_locked(DaemonEvent event) {
  DaemonState from = state();
  const Transition* t = lookup(from, event);
  if (t == nullptr) {
    LOG_ERROR("Wrong event input. Event=%s, CurrentState=%s", daemon_event_name(event), daemon_state_name(from));
    return unexpected_event(event);
  }
  if (t->action != nullptr && actions_.*t->action) {
    Status s = (actions_.*t->action)();
    if (!s.ok()) {
      LOG_ERROR("state machine: %s in %s failed: %s", daemon_event_name(event), daemon_state_name(from),
                s.message().c_str());
      // kInvalidInput means "no such transition" to callers (see header).
      if (s.code() == Code::kInvalidInput) return Status::io(s.message());
      return s;
    }
  }
  {
    // Publish under wait_mu_ so a waiter cannot miss the notification.
    std::lock_guard<std::mutex> lock(wait_mu_);
    state_.store(t->next, std::memory_order_release);
  }
  wait_cv_.notify_all();
  LOG_INFO("State machine(pid=%d): from %s to %s, input [%s]", static_cast<int>(getpid()),
           daemon_state_name(from), daemon_state_name(t->next), daemon_event_name(event));
  return Status::Ok();
}

namespace {

// Holds fire_mu_ and records the owner, so an action that calls back into
// the state machine is rejected instead of deadlocking.
class FireGuard {
 public:
  FireGuard(std::mutex& mu, std::atomic<std::thread::id>& owner) : owner_(owner) {
    if (owner.load(std::memory_order_acquire) == std::this_thread::get_id()) return;  // re-entrant
    lock_ = std::unique_lock<std::mutex>(mu);
    owner.store(std::this_thread::get_id(), std::memory_order_release);
  }
  ~FireGuard() {
    if (lock_.owns_lock()) owner_.store(std::thread::id(), std::memory_order_release);
  }
  bool reentrant() const { return !lock_.owns_lock(); }

 private:
  std::atomic<std::thread::id>& owner_;
  std::unique_lock<std::mutex> lock_;
};

}  // namespace

Status DaemonStateMachine::fire(DaemonEvent event) {
  FireGuard guard(fire_mu_, firing_thread_);
  if (guard.reentrant()) {
    LOG_ERROR("state machine: event %s fired from inside a transition action", daemon_event_name(event));
    return unexpected_event(event);
  }
  return fire_locked(event);
}

Status DaemonStateMachine::trigger_stop() {
  FireGuard guard(fire_mu_, firing_thread_);
  if (guard.reentrant()) return unexpected_event(DaemonEvent::kStop);
  DaemonState s = state();
  if (s == DaemonState::kStopped) return Status::Ok();
  if (s == DaemonState::kRunning) NYDUS_TRY(fire_locked(DaemonEvent::kStop));
  return fire_locked(DaemonEvent::kStop);
}

Status DaemonStateMachine::trigger_exit() {
  FireGuard guard(fire_mu_, firing_thread_);
  if (guard.reentrant()) return unexpected_event(DaemonEvent::kExit);
  DaemonState s = state();
  if (s == DaemonState::kStopped) return Status::Ok();
  if (s == DaemonState::kInit) return fire_locked(DaemonEvent::kStop);
  if (s == DaemonState::kRunning) NYDUS_TRY(fire_locked(DaemonEvent::kStop));
  return fire_locked(DaemonEvent::kExit);
}

bool DaemonStateMachine::wait_for(DaemonState target, std::chrono::steady_clock::time_point deadline) const {
  std::unique_lock<std::mutex> lock(wait_mu_);
  return wait_cv_.wait_until(lock, deadline, [&] { return state() == target; });
}

}  // namespace nydus::daemon
