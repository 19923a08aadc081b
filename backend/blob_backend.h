// BlobBackend: where raw (compressed) blob bytes come from.
//
// A backend hands out one BlobReader per blob id. Readers are the unit the
// decorators (retry, metrics, mirrors, peers, cache) wrap; each decorator
// owns what it wraps through std::unique_ptr, composed once at start-up.
//
// Thread-safety: every method of BlobBackend and BlobReader may be called
// from any number of threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/status.h"

namespace nydus::backend {

// Why this thread reads now: a reader is waiting (on demand) or the bytes
// are wanted ahead of use (prefetch). Readers that share a link with other
// nodes (P2P) pass it on, so that an owner serves on-demand reads first.
// The prefetch path marks its reads with a PrefetchScope on its thread.
bool reading_ahead();
class PrefetchScope {
 public:
  PrefetchScope();
  ~PrefetchScope();
  PrefetchScope(const PrefetchScope&) = delete;
  PrefetchScope& operator=(const PrefetchScope&) = delete;

 private:
  bool outer_;
};

class BlobReader {
 public:
  virtual ~BlobReader() = default;

  // One attempt to read up to dst.size() bytes at `offset`. May return
  // fewer bytes (a short read) but returns 0 only at the end of the blob.
  // Errors: kNotFound (blob vanished), kIo (transport), kTimeout.
  virtual Result<size_t> try_read(uint64_t offset, std::span<uint8_t> dst) = 0;

  // Size of the blob in bytes.
  virtual Result<uint64_t> size() = 0;

  // The bytes [offset, offset + length) this reader returned failed
  // verification (the chunk reader found a wrong digest or undecodable
  // data). Readers that relay or keep untrusted bytes (peers, the piece
  // store) drop them and demote their source; the others ignore it.
  virtual void report_bad(uint64_t offset, uint64_t length) {
    (void)offset;
    (void)length;
  }

  // The bytes [offset, offset + length) this reader returned were verified
  // (digest matched). Readers that hold untrusted bytes back until they are
  // verified (peers) may keep them from now on; the others ignore it.
  virtual void report_good(uint64_t offset, uint64_t length) {
    (void)offset;
    (void)length;
  }

  // The Authorization header value this reader sends to its origin now
  // ("Bearer <token>", "Basic <base64>"), "" when it has none (yet). The
  // P2P backend passes it to the peer that fetches from the origin for
  // this node, so private repositories are shared too.
  virtual std::string origin_authorization() { return ""; }

  // Reads exactly dst.size() bytes, looping over short reads. Reaching the
  // end of the blob first is a kIo error naming the offset.
  Status read_exact(uint64_t offset, std::span<uint8_t> dst);
};

class BlobBackend {
 public:
  virtual ~BlobBackend() = default;

  // A reader for `blob_id`. kNotFound when the backend knows the blob does
  // not exist (localfs: no such file). Readers may be cached and shared.
  virtual Result<std::shared_ptr<BlobReader>> reader(const std::string& blob_id) = 0;

  // "localfs", "registry", ... as in the config and /metrics/backend.
  virtual std::string type() const = 0;

  // Replaces the credentials (base64 of user:password) used from the next
  // request on (PUT /api/v1/config registry_auth). kUnsupported for
  // backends without credentials.
  virtual Status update_auth(const std::string& auth) {
    (void)auth;
    return Status::unsupported("backend " + type() + " has no credentials");
  }
};

}  // namespace nydus::backend
