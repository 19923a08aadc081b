// PeerServer: the node's registry-protocol endpoint on its own TCP port
// (libmicrohttpd, one thread per connection, so a handler may block while
// the bytes it streams arrive from the origin).
//
// Routes:
//   GET/HEAD /v2/<repo>/blobs/sha256:<digest>
//       The origin is the X-Dragonfly-Registry header (a URL with scheme),
//       else ?ns=<host> (https), as a Dragonfly dfdaemon mirror takes it;
//       Authorization is passed on to the origin. HEAD answers the size.
//       GET without Range is the whole blob (200); `Range: bytes=A-B`,
//       `A-` or `-N` (one range) is 206 with Content-Range, 416 when it
//       starts past the end. Bytes already in the piece store go out with
//       sendfile; missing ones are fetched from the origin once (single-
//       flight with every other asker, on this node or another) by a fetch
//       worker and streamed to the asker as they arrive.
//   GET /server/ping, GET /healthy: 200.
//   Any other GET/HEAD under /v2/: passed to the origin unchanged (status,
//       body, content headers), not cached.
// Anything malformed (a digest that is not 64 hex digits, a repository
// name with '..' or odd characters, a bad Range or origin) is 400 with a
// one-line reason; other methods 405.
//
// Two roles, one handler: Role::kPeers listens on p2p.listen for the other
// nodes and, with p2p.secret_file, answers only signed requests
// (p2p/peer_auth.h; 401 naming the reason, counted by reason, logged once
// per client address and reason; /server/ping and /healthy stay open for
// probes). Role::kMirror listens on p2p.mirror_listen for stock clients on
// the node (nydusd's mirror, containerd's hosts.toml): no signature; a
// range this node does not hold goes through the P2P path (owners, then
// the origin; p2p/mirror_relay.h), not straight to the origin.
// Role::kHealth listens on p2p.health_listen and answers only the probes,
// as dfdaemon's health port does.
//
// Thread-safety: start() and the destructor from one thread.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "p2p/registry_request.h"

namespace nydus::p2p {

class P2pNode;

class PeerServer {
 public:
  enum class Role { kPeers, kMirror, kHealth };
  // Listens on config.listen (kPeers), config.mirror_listen (kMirror) or
  // config.health_listen (kHealth).
  // The node must outlive the server.
  static Result<std::unique_ptr<PeerServer>> start(P2pNode& node, Role role);
  ~PeerServer();
  uint16_t port() const;

 private:
  struct Impl;
  explicit PeerServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nydus::p2p
