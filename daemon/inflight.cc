#include "daemon/inflight.h"

#include <ctime>

#include <nlohmann/json.hpp>

namespace nydus::daemon {
namespace {

// The calling thread's slot, cached per tracker (a thread serves one
// session at a time; a test may create several trackers in turn).
// Keyed by the tracker's serial number, not its address, which a later
// tracker may reuse.
thread_local uint64_t t_owner = 0;
thread_local InflightSlot* t_slot = nullptr;
thread_local uint64_t t_unique = 0;

uint64_t wall_clock_secs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec);
}

std::atomic<uint64_t> g_next_serial{1};

}  // namespace

InflightOps::InflightOps() : serial_(g_next_serial.fetch_add(1)) {}

void InflightOps::note_unique(uint64_t unique) noexcept { t_unique = unique; }

InflightSlot* InflightOps::slot_for_this_thread() noexcept {
  if (t_owner == serial_) return t_slot;
  try {
    std::lock_guard<std::mutex> lock(mu_);
    slots_.emplace_back();
    t_slot = &slots_.back();
    t_owner = serial_;
    return t_slot;
  } catch (...) {
    return nullptr;  // out of memory: this request goes untracked
  }
}

InflightOps::Scope::Scope(InflightOps* ops, uint32_t opcode, uint64_t inode) noexcept {
  if (!ops) return;
  slot_ = ops->slot_for_this_thread();
  if (!slot_) return;
  slot_->seq.fetch_add(1, std::memory_order_acq_rel);  // odd: being written
  slot_->inode.store(inode, std::memory_order_relaxed);
  slot_->opcode.store(opcode, std::memory_order_relaxed);
  slot_->unique.store(t_unique, std::memory_order_relaxed);
  slot_->timestamp_secs.store(wall_clock_secs(), std::memory_order_relaxed);
  slot_->busy.store(true, std::memory_order_relaxed);
  slot_->seq.fetch_add(1, std::memory_order_release);
  t_unique = 0;  // consumed: a later request without a noted id reports 0
}

InflightOps::Scope::~Scope() {
  if (!slot_) return;
  slot_->seq.fetch_add(1, std::memory_order_acq_rel);
  slot_->busy.store(false, std::memory_order_relaxed);
  slot_->seq.fetch_add(1, std::memory_order_release);
}

std::vector<InflightOp> InflightOps::snapshot() const {
  std::vector<InflightOp> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const InflightSlot& slot : slots_) {
    // Seqlock read: retry while the owner is writing; give up on a slot
    // that keeps changing (its request just ended or began: either answer
    // is as good as the other).
    for (int attempt = 0; attempt < 64; ++attempt) {
      const uint64_t before = slot.seq.load(std::memory_order_acquire);
      if (before & 1) continue;
      const bool busy = slot.busy.load(std::memory_order_relaxed);
      InflightOp op{slot.inode.load(std::memory_order_relaxed), slot.opcode.load(std::memory_order_relaxed),
                    slot.unique.load(std::memory_order_relaxed),
                    slot.timestamp_secs.load(std::memory_order_relaxed)};
      std::atomic_thread_fence(std::memory_order_acquire);
      if (slot.seq.load(std::memory_order_relaxed) != before) continue;
      if (busy) out.push_back(op);
      break;
    }
  }
  return out;
}

std::string InflightOps::to_json(const std::vector<InflightOp>& ops) {
  nlohmann::json out = nlohmann::json::array();
  for (const InflightOp& op : ops)
    out.push_back({{"inode", op.inode}, {"opcode", op.opcode}, {"unique", op.unique},
                   {"timestamp_secs", op.timestamp_secs}});
  return out.dump();
}

}  // namespace nydus::daemon
