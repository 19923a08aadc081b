// PeerBackend: the BlobBackend decorator that puts the P2P node in front of
// a registry backend (ARCHITECTURE.md "Data flow of one read").
//
// A read of raw blob bytes is served, for the placement unit it falls in:
//   1. from the local piece store when the bytes are there;
//   2. else from the unit's owners in rendezvous order (at most
//      `max_candidates`, skipping peers out of rendezvous): the range is
//      widened to the store's granules and asked of the peer with the
//      peer deadlines; the first good answer is kept in the local store
//      (so this node can serve it too) and returned;
//   3. when this node is the next owner, or every peer asked failed, by
//      the wrapped registry backend (auth, mirrors, proxy, retries as
//      configured), through the store's single-flight, so a peer asking
//      this node for the same bytes at the same time shares the one fetch.
// A peer that fails is reported to membership (out of rendezvous at once);
// a read never fails because of a peer, only when the origin fails too.
// A read never crosses a unit boundary (short reads are allowed).
//
// Untrusted bytes: the chunk reader verifies every fetched chunk and calls
// report_bad() on a mismatch; the reader then drops those bytes from the
// store and demotes the peer that sent them (bad_data_backoff_ms), so the
// chunk reader's next attempt goes elsewhere. Until verification, bytes a
// peer sent sit in the store for at most the time one chunk takes to
// verify; another peer taking them in that window verifies them itself.
//
// Counters go into `metrics` as sources "p2p store" and "peer ADDR:PORT"
// (the wrapped backend keeps counting "origin").
//
// Thread-safety: as BlobBackend.
#pragma once

#include <memory>
#include <string>

#include "backend/backend_metrics.h"
#include "backend/blob_backend.h"
#include "common/status.h"

namespace nydus::p2p {

class P2pNode;

struct PeerBackendOptions {
  std::string registry_url;  // origin base URL peers fetch from: "http://10.0.0.1:5000"
  std::string repo;
};

// `node` and `metrics` must outlive the backend.
std::unique_ptr<backend::BlobBackend> make_peer_backend(std::unique_ptr<backend::BlobBackend> origin, P2pNode& node,
                                                        PeerBackendOptions options, backend::BackendMetrics* metrics);

}  // namespace nydus::p2p
