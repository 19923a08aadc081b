// PeerTls: mutual TLS on the peer port (issue 12), instead of or beside
// signed requests (p2p/peer_auth.h).
//
// Every node holds a certificate and key issued by the cluster's own CA
// (p2p.tls_cert, p2p.tls_key, p2p.tls_ca, PEM; e.g. the Secret cert-manager
// writes). The peer port then speaks HTTPS only, and a request is served
// only when the client presented a certificate that chains to tls_ca for
// TLS client use (no extended key usage, or clientAuth); otherwise 401,
// counted as refused_no_certificate or refused_untrusted_certificate.
// Clients check the server's chain the same way (serverAuth). Host names are
// not checked on either side: peers are addressed by IP:port from
// membership, and the CA is the cluster's own, so every certificate it
// issued is a member.
//
// Files are checked for changes at most once a second (at handshakes and
// checks); when one changed and all three load and the key matches the
// certificate, the new set serves new handshakes and checks. A broken
// rewrite keeps the set in use (logged). The client side (libcurl, OpenSSL)
// reads the files at each new connection (backend::TlsOptions).
//
// Why GnuTLS appears here: the server's TLS is libmicrohttpd's, which
// Debian builds against GnuTLS. It gets the server certificate from
// server_callback() at every handshake; the client certificate is checked
// by verify_client() with OpenSSL against the CA file as it is now (so a
// rotated CA takes effect without a restart). The certificate sets handed
// to GnuTLS stay alive until this object is destroyed (a handshake may
// still use one after a reload); a reload adds a few KiB.
//
// One PeerTls serves the process's peer port: server_callback() has no
// user pointer, so install() makes this object the one it reads.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>

#include <memory>
#include <string>

#include "common/status.h"
#include "p2p/peer_auth.h"

namespace nydus::p2p {

class PeerTls {
 public:
  // Loads and checks the three files; errors name the field and file.
  static Result<std::unique_ptr<PeerTls>> load(const std::string& cert_file, const std::string& key_file,
                                               const std::string& ca_file);
  ~PeerTls();

  const std::string& cert_file() const;
  const std::string& key_file() const;
  const std::string& ca_file() const;
  // The CA bundle as first read: libmicrohttpd asks clients for a
  // certificate only when it has a trust list (MHD_OPTION_HTTPS_MEM_TRUST).
  const std::string& ca_pem_at_start() const;

  // Makes this object the process's server certificate source, and returns
  // the GnuTLS callback for MHD_OPTION_HTTPS_CERT_CALLBACK.
  gnutls_certificate_retrieve_function2* install();

  // Checks the client certificate of a TLS session: kOk,
  // kNoCertificate or kUntrustedCertificate; *why says what is wrong.
  AuthVerdict verify_client(gnutls_session_t session, std::string* why);

  struct Impl;  // opaque; public only so the GnuTLS callback in peer_tls.cc can name it

 private:
  explicit PeerTls(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nydus::p2p
