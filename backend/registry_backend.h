// RegistryBackend: blobs from an OCI distribution registry, fetched with
// ranged GETs of /v2/<repo>/blobs/sha256:<id> (nydusd-contract.md §2.3).
//
// Per request, in order:
//   1. the P2P proxy (`proxy.url`), when configured and healthy, as a
//      forward proxy; on >=500 or a transport error, fall through when
//      `proxy.fallback` (the default), else fail;
//   2. each healthy mirror in order (`mirrors[]`, §2.4), with its extra
//      headers; a mirror is skipped for unauthenticated requests unless
//      `auth_through`; an answer below 500 is final; transport errors
//      count towards `failure_limit`, which sets the mirror aside until a
//      GET of its `ping_url` answers below 500;
//   3. the origin registry.
// Authentication: a cached Authorization header is sent; a 401 drops it and
// retries once, then follows WWW-Authenticate: Basic with `auth`, or Bearer
// with a token from the realm (form POST of service/scope/client_id with
// Basic `auth`; GET with the same query when POST fails). Tokens are cached,
// refreshed shortly before `expires_in`, and refreshed after any 401.
// Token requests go straight to the realm (never via proxy or mirror).
// Redirects (3xx) are followed by hand without the Authorization header,
// the target cached per blob and dropped on a 401/403.
// With `skip_verify` and https, a TLS handshake failure switches the
// backend to plain http for good, as upstream does.
//
// Readers retry failed attempts up to `retry_limit` times with backoff
// (100 ms doubling, capped at 2 s); missing blobs (404) are not retried.
//
// Thread-safety: the backend and its readers may be used from any number of
// threads; one background thread probes unhealthy mirrors and the proxy.
#pragma once

#include <memory>
#include <string>

#include "backend/backend_metrics.h"
#include "backend/blob_backend.h"
#include "backend/registry_config.h"
#include "common/status.h"

namespace nydus::backend {

// Validates the config (host and repo required, URLs parse) and returns the
// backend. `metrics` (optional) receives per-source counters; it must
// outlive the backend.
Result<std::unique_ptr<BlobBackend>> make_registry_backend(RegistryConfig config,
                                                           BackendMetrics* metrics);

// Parsed `WWW-Authenticate` challenge. Exposed for tests.
struct AuthChallenge {
  std::string scheme;  // "Basic" or "Bearer"
  std::string realm, service, scope;
};
Result<AuthChallenge> parse_www_authenticate(const std::string& header);

}  // namespace nydus::backend
