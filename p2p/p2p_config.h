// Settings of the embedded P2P backend: the top-level `p2p` object of the
// nydusd config (or of the daemon-level P2P file, see daemon/p2p_config.h
// for where it is read from and in which order). Plain values; the daemon's
// parser fills them in and checks types and ranges, naming the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nydus::p2p {

struct P2pConfig {
  // "ADDR:PORT" the peer server listens on ("0.0.0.0:65002", "[::]:65002").
  std::string listen = "0.0.0.0:65002";
  // "ADDR:PORT" peers use to reach this node; "" = taken from the peers_dns
  // answer that is an address of this host, else listen when it names a
  // concrete address.
  std::string advertise;
  std::vector<std::string> peers;  // static membership: "ADDR:PORT" (may include this node)
  std::string peers_dns;           // "NAME:PORT": every A/AAAA record of NAME is a peer
  uint32_t dns_refresh_ms = 5000;  // how often peers_dns is resolved again
  std::string store_dir;           // the piece store; "" = <cache work_dir>/p2p
  uint64_t store_size = 10ull << 30;  // bytes of raw blob data kept for peers
  // The stock-client endpoint (nydusd's mirror, containerd's hosts.toml):
  // no peer signature; "" = off.
  std::string mirror_listen = "127.0.0.1:65001";
  // Where /server/ping answers as on dfdaemon's health port, so the
  // Dragonfly guide's nydusd config (ping_url :40901) works unchanged; "" = off.
  std::string health_listen = "127.0.0.1:40901";
  // The cluster secret every peer request is signed with (p2p/peer_auth.h);
  // "" = peer requests are not signed nor checked; without TLS either,
  // allowed only when both listen addresses are loopback or `insecure` is true.
  std::string secret_file;
  // Mutual TLS on the peer port (p2p/peer_tls.h): this node's certificate
  // and key and the cluster CA, PEM files; all three or none.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_ca;
  bool insecure = false;            // listen on non-loopback addresses without a secret or TLS
  uint32_t auth_window_s = 30;      // a signature's timestamp may be this far off (and its nonce is kept as long)
  uint64_t unit_size = 1ull << 20;  // placement unit: aligned raw-blob range with one owner (p2p/README.md: why 1 MiB)
  uint32_t granule_size = 4096;     // readiness and origin-fetch alignment inside the store
  uint32_t peer_timeout_ms = 100;   // connect + response headers from a peer
  uint32_t peer_stall_ms = 2000;    // longest pause inside a peer's response body
  uint32_t failure_backoff_ms = 1000;   // a peer that failed a request is skipped this long
  uint32_t bad_data_backoff_ms = 30000; // ... and this long when its bytes failed verification
  uint32_t max_candidates = 3;      // peers asked for one unit before going to the origin
  uint32_t spread_uploads = 4;      // concurrent uploads of one unit before askers go to holders (0 = never)
  uint32_t upload_connections = 256;  // peer-server connection limit
  // Fair sharing (p2p/rate_limiter.h), for the peer port and the mirror
  // together: bytes per second in all and to any one client address
  // (0 = unlimited), and data responses in flight at once (0 = no cap;
  // beyond it 503, and a peer asks the next owner; on-demand requests are
  // refused only when on-demand ones alone fill it).
  uint64_t upload_rate = 0;
  uint64_t upload_rate_per_peer = 0;
  uint32_t max_uploads = 0;
  // On SIGTERM (or PUT /api/v1/p2p/drain) the node stops taking new peer
  // data requests (503, askers go to the next owner), answers /ready with
  // 503, and waits this long for uploads in flight before the daemon exits.
  uint32_t drain_timeout_ms = 10000;
};

}  // namespace nydus::p2p
