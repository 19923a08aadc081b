// Client side of the supervisor channel (nydusd-contract.md §5): how the
// daemon hands its opaque state and the /dev/fuse fd to the supervisor
// (nydus-snapshotter's pkg/supervisor) and how a successor pulls them back.
//
// The supervisor is a unix SOCK_STREAM server that always listens first;
// nydusd is always the client:
//   save    (PUT /daemon/fuse/sendfd):   connect, ONE sendmsg carrying the
//           first bytes of the state plus SCM_RIGHTS with exactly one fd,
//           the rest of the bytes with plain writes, close. The supervisor
//           reads to EOF and keeps the bytes and the first fd (overwriting
//           what it held before).
//   restore (PUT /daemon/fuse/takeover): connect, ONE recvmsg of up to
//           32 KiB of data and up to 16 fds, then read to EOF. At least one
//           fd is required; extra fds are closed.
// Upstream's side of the same protocol: nydus upgrade/src/backend/
// unix_domain_socket.rs (UdsStorageBackend::save/restore).
//
// Thread-safety: the functions share no state; call them from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"

namespace nydus::daemon {

// What the first recvmsg accepts (upstream's MAX_STATE_DATA_LENGTH and fd
// array); the rest of the data is read until EOF.
inline constexpr size_t kSupervisorFirstRecvBytes = 32 * 1024;
inline constexpr size_t kSupervisorMaxFds = 16;
// A state larger than this is refused on receive (untrusted peer).
inline constexpr size_t kSupervisorMaxStateBytes = 64u << 20;

// Sends `state` and a dup of `fuse_fd` to the supervisor at
// `supervisor_path`. Blocks until everything is written (at most `timeout`
// per blocking write, so a supervisor that accepts but never reads cannot
// hang the caller forever). Errors: kInvalidInput for a bad fd or an empty
// path or one longer than sun_path, kIo when connect/send fails (the
// message names the path and errno), kTimeout when a write timed out.
// `fuse_fd` itself stays open and owned by the caller.
Status send_state(const std::string& supervisor_path, std::span<const uint8_t> state, int fuse_fd,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10));

struct ReceivedState {
  std::vector<uint8_t> data;
  UniqueFd fd;  // the first fd received; O_CLOEXEC
};

// Connects to the supervisor at `path`, retrying until `deadline` while the
// socket does not exist yet or refuses connections (the supervisor is
// expected to be listening already; the retry covers a snapshotter that
// races us). Then receives as described above, every step bounded by
// `deadline`. Errors: kTimeout (no connection or no EOF before the
// deadline), kIo (socket errors), kInvalidInput (no fd received, or the
// state exceeds kSupervisorMaxStateBytes).
Result<ReceivedState> receive_state(const std::string& path, std::chrono::steady_clock::time_point deadline);

}  // namespace nydus::daemon
