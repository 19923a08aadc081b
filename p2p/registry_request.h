// The registry blob protocol's requests, parsed strictly: the path, the
// Range header and the origin a dfdaemon-style mirror request names. Every
// input is untrusted (peers, stock clients); the fuzz target
// test/fuzz/fuzz_peer_request.cc holds these to their invariants.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace nydus::p2p {

// A request target parsed.
struct BlobTarget {
  std::string repo;
  std::string digest;  // 64 hex digits
};
// "/v2/<repo>/blobs/sha256:<hex>" -> target; kNotFound when the path is not
// a blob path at all, kInvalidInput when it is one but malformed.
Result<BlobTarget> parse_blob_path(const std::string& path);

// "bytes=A-B" / "bytes=A-" / "bytes=-N" against a blob of `size` bytes ->
// [first, last]. kInvalidInput for a malformed or multi-range header,
// kNotFound (answered 416) when it is unsatisfiable.
struct ByteSpan {
  uint64_t first = 0, last = 0;
};
Result<ByteSpan> parse_range_header(const std::string& value, uint64_t size);

// Origin base URL from X-Dragonfly-Registry or ?ns=; "" when neither.
// kInvalidInput when present but not an http(s)://host[:port] URL.
Result<std::string> origin_from(const char* dragonfly_registry, const char* ns);

// A decimal of 1..19 digits, nothing else.
bool parse_dec(const std::string& s, uint64_t* out);

}  // namespace nydus::p2p
