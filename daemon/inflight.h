// InflightOps: which FUSE requests the workers are handling right now, for
// GET /api/v1/metrics/inflight (nydusd-contract.md §3.2, §4.4 D). The
// snapshotter polls it every hung_io_interval and calls a request hung when
// now - timestamp_secs >= that interval, so timestamp_secs is the wall-clock
// second the handler started.
//
// One slot per worker thread, created the first time that thread handles a
// request and kept for the life of the tracker (a few dozen at most: the
// worker pool is bounded by --thread-num). A request marks its thread's
// slot busy for the duration of its handler (InflightOps::Scope).
//
// `unique` is the kernel's request id. libfuse does not hand it to the
// handlers, so the worker loop that reads requests itself (FuseSession with
// clone_fd = false, what nydusd always runs) records it from the request
// header with note_unique() before dispatching; under libfuse's own loop
// (clone_fd = true) it is reported as 0.
//
// Thread-safety: begin/end only touch the calling thread's slot (lock-free
// stores); snapshot() may run on any thread at any time. A slot is
// published under a sequence counter, so snapshot() never reports a mix of
// two requests.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace nydus::daemon {

struct InflightOp {
  uint64_t inode = 0;   // the FUSE node id of the request
  uint32_t opcode = 0;  // FUSE opcode (FUSE_LOOKUP = 1, FUSE_READ = 15, ...)
  uint64_t unique = 0;  // the kernel's request id (0: unknown, see above)
  uint64_t timestamp_secs = 0;  // wall clock at the start of the handler

  bool operator==(const InflightOp&) const = default;
};

// One worker's slot. Fields are written only by its thread, between two
// increments of `seq` (odd while writing).
struct InflightSlot {
  std::atomic<uint64_t> seq{0};
  std::atomic<bool> busy{false};
  std::atomic<uint64_t> inode{0};
  std::atomic<uint32_t> opcode{0};
  std::atomic<uint64_t> unique{0};
  std::atomic<uint64_t> timestamp_secs{0};
};

class InflightOps {
 public:
  InflightOps();
  InflightOps(const InflightOps&) = delete;
  InflightOps& operator=(const InflightOps&) = delete;

  // Marks the calling thread busy with one request until destroyed. Scopes
  // do not nest on one thread (a FUSE handler handles one request).
  class Scope {
   public:
    Scope(InflightOps* ops, uint32_t opcode, uint64_t inode) noexcept;
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    InflightSlot* slot_ = nullptr;
  };

  // The worker loop: the unique id of the request the calling thread is
  // about to dispatch (read from its fuse_in_header).
  static void note_unique(uint64_t unique) noexcept;

  // The requests in flight now, in slot order.
  std::vector<InflightOp> snapshot() const;

  // [{"inode":…,"opcode":…,"unique":…,"timestamp_secs":…},…]
  static std::string to_json(const std::vector<InflightOp>& ops);

 private:
  InflightSlot* slot_for_this_thread() noexcept;

  const uint64_t serial_;
  mutable std::mutex mu_;       // guards slots_ growth (not the slots' contents)
  std::deque<InflightSlot> slots_;  // stable addresses
};

}  // namespace nydus::daemon
