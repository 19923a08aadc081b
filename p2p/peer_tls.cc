#include "p2p/peer_tls.h"

#include <gnutls/abstract.h>
#include <gnutls/x509.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <array>
#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "common/log.h"

namespace nydus::p2p {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kRecheckFiles = std::chrono::seconds(1);
constexpr size_t kMaxPemBytes = 1 << 20;
constexpr unsigned kMaxChain = 16;

struct FileStamp {
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileStamp&) const = default;
};
using Stamps = std::array<FileStamp, 3>;  // cert, key, ca

FileStamp stamp_of(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return {};
  return FileStamp{st.st_ino, st.st_size, st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec};
}

Result<std::string> read_pem(const char* field, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::invalid(std::string(field) + " " + path + ": cannot be read");
  std::stringstream buf;
  buf << in.rdbuf();
  std::string s = buf.str();
  if (s.size() > kMaxPemBytes) return Status::invalid(std::string(field) + " " + path + ": larger than 1 MiB");
  return s;
}

// One loaded set of certificate, key and trust. The GnuTLS half serves
// handshakes, the OpenSSL half checks clients.
struct Generation {
  std::vector<gnutls_pcert_st> chain;
  gnutls_privkey_t key = nullptr;
  X509_STORE* trust = nullptr;

  Generation() = default;
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;
  ~Generation() {
    for (auto& c : chain) gnutls_pcert_deinit(&c);
    if (key) gnutls_privkey_deinit(key);
    if (trust) X509_STORE_free(trust);
  }
};

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

BioPtr memory_bio(const std::string& s) { return BioPtr(BIO_new_mem_buf(s.data(), static_cast<int>(s.size()))); }

// A chain and its trust store; true when `leaf` (with `intermediates`)
// chains to `trust` for `purpose`. *why: OpenSSL's reason otherwise.
bool chains_to(X509_STORE* trust, X509* leaf, STACK_OF(X509)* intermediates, int purpose, std::string* why) {
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  if (!ctx || X509_STORE_CTX_init(ctx, trust, leaf, intermediates) != 1) {
    X509_STORE_CTX_free(ctx);
    *why = "cannot set up a certificate check";
    return false;
  }
  X509_STORE_CTX_set_purpose(ctx, purpose);
  const bool ok = X509_verify_cert(ctx) == 1;
  if (!ok) *why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
  X509_STORE_CTX_free(ctx);
  return ok;
}

Result<std::shared_ptr<Generation>> load_generation(const std::string& cert_file, const std::string& key_file,
                                                    const std::string& ca_file, std::string* ca_pem_out) {
  NYDUS_ASSIGN(const std::string cert_pem, read_pem("p2p.tls_cert", cert_file));
  NYDUS_ASSIGN(const std::string key_pem, read_pem("p2p.tls_key", key_file));
  NYDUS_ASSIGN(const std::string ca_pem, read_pem("p2p.tls_ca", ca_file));
  auto gen = std::make_shared<Generation>();

  // OpenSSL: the certificate, the key that matches it, the CA bundle, and
  // that the certificate is the CA's (for both TLS roles a node plays).
  X509Ptr leaf(PEM_read_bio_X509(memory_bio(cert_pem).get(), nullptr, nullptr, nullptr));
  if (!leaf) return Status::invalid("p2p.tls_cert " + cert_file + ": no PEM certificate in it");
  std::unique_ptr<EVP_PKEY, PkeyFree> pkey(PEM_read_bio_PrivateKey(memory_bio(key_pem).get(), nullptr, nullptr,
                                                                   nullptr));
  if (!pkey) return Status::invalid("p2p.tls_key " + key_file + ": no unencrypted PEM private key in it");
  if (X509_check_private_key(leaf.get(), pkey.get()) != 1)
    return Status::invalid("p2p.tls_key " + key_file + ": does not match the certificate in " + cert_file);
  gen->trust = X509_STORE_new();
  if (!gen->trust) return Status::io("p2p.tls_ca: out of memory");
  {
    BioPtr bio = memory_bio(ca_pem);
    int added = 0;
    while (X509* ca = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      if (X509_STORE_add_cert(gen->trust, ca) == 1) ++added;
      X509_free(ca);
    }
    if (added == 0) return Status::invalid("p2p.tls_ca " + ca_file + ": no PEM certificate in it");
  }
  STACK_OF(X509)* intermediates = sk_X509_new_null();
  {
    BioPtr bio = memory_bio(cert_pem);
    X509Ptr skip(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));  // the leaf again
    while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) sk_X509_push(intermediates, x);
  }
  std::string why;
  const bool client_ok = chains_to(gen->trust, leaf.get(), intermediates, X509_PURPOSE_SSL_CLIENT, &why);
  const bool server_ok = client_ok && chains_to(gen->trust, leaf.get(), intermediates, X509_PURPOSE_SSL_SERVER, &why);
  sk_X509_pop_free(intermediates, X509_free);
  if (!server_ok)
    return Status::invalid("p2p.tls_cert " + cert_file + ": not a TLS client and server certificate of the CA in " +
                           ca_file + " (" + why + ")");

  // GnuTLS: the same certificate chain and key, for libmicrohttpd.
  std::array<gnutls_pcert_st, kMaxChain> pcerts{};
  unsigned count = kMaxChain;
  gnutls_datum_t datum{reinterpret_cast<unsigned char*>(const_cast<char*>(cert_pem.data())),
                       static_cast<unsigned>(cert_pem.size())};
  int rc = gnutls_pcert_list_import_x509_raw(pcerts.data(), &count, &datum, GNUTLS_X509_FMT_PEM, 0);
  if (rc < 0)
    return Status::invalid("p2p.tls_cert " + cert_file + ": GnuTLS cannot read it: " + gnutls_strerror(rc));
  gen->chain.assign(pcerts.begin(), pcerts.begin() + count);
  if ((rc = gnutls_privkey_init(&gen->key)) < 0) return Status::io(std::string("GnuTLS: ") + gnutls_strerror(rc));
  datum = {reinterpret_cast<unsigned char*>(const_cast<char*>(key_pem.data())), static_cast<unsigned>(key_pem.size())};
  rc = gnutls_privkey_import_x509_raw(gen->key, &datum, GNUTLS_X509_FMT_PEM, nullptr, 0);
  if (rc < 0) return Status::invalid("p2p.tls_key " + key_file + ": GnuTLS cannot read it: " + gnutls_strerror(rc));
  if (ca_pem_out) *ca_pem_out = ca_pem;
  return gen;
}

}  // namespace

struct PeerTls::Impl {
  std::string cert_file, key_file, ca_file, ca_pem_at_start;
  std::mutex mu;
  std::shared_ptr<Generation> current;                 // guarded by mu
  std::vector<std::shared_ptr<Generation>> handed_out;  // guarded by mu: every set GnuTLS may still use
  Stamps stamps{};                                     // guarded by mu
  Clock::time_point next_check{};                      // guarded by mu

  Stamps stamps_now() const { return {stamp_of(cert_file), stamp_of(key_file), stamp_of(ca_file)}; }

  std::shared_ptr<Generation> get() {
    std::lock_guard<std::mutex> g(mu);
    const auto now = Clock::now();
    if (now >= next_check) {
      next_check = now + kRecheckFiles;
      const Stamps seen = stamps_now();
      if (seen != stamps) {
        stamps = seen;  // a broken rewrite is reported once, not every second
        auto fresh = load_generation(cert_file, key_file, ca_file, nullptr);
        if (fresh.ok()) {
          current = *fresh;
          handed_out.push_back(current);
          LOG_INFO("p2p: TLS certificate, key or CA changed; new handshakes use %s", cert_file.c_str());
        } else {
          LOG_WARN("p2p: TLS files changed but cannot be used (%s); keeping the ones read before",
                   fresh.status().message().c_str());
        }
      }
    }
    return current;
  }
};

namespace {

std::atomic<PeerTls::Impl*> g_installed{nullptr};

int retrieve_server_certificate(gnutls_session_t, const gnutls_datum_t*, int, const gnutls_pk_algorithm_t*, int,
                                gnutls_pcert_st** pcert, unsigned int* pcert_length, gnutls_privkey_t* privkey) {
  PeerTls::Impl* impl = g_installed.load(std::memory_order_acquire);
  if (!impl) return -1;
  // Every generation stays in handed_out, so these pointers outlive the
  // handshake.
  std::shared_ptr<Generation> gen = impl->get();
  *pcert = gen->chain.data();
  *pcert_length = static_cast<unsigned>(gen->chain.size());
  *privkey = gen->key;
  return 0;
}

}  // namespace

PeerTls::PeerTls(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PeerTls::~PeerTls() {
  Impl* self = impl_.get();
  g_installed.compare_exchange_strong(self, nullptr);
}

Result<std::unique_ptr<PeerTls>> PeerTls::load(const std::string& cert_file, const std::string& key_file,
                                               const std::string& ca_file) {
  auto impl = std::make_unique<Impl>();
  impl->cert_file = cert_file;
  impl->key_file = key_file;
  impl->ca_file = ca_file;
  impl->stamps = impl->stamps_now();
  NYDUS_ASSIGN(impl->current, load_generation(cert_file, key_file, ca_file, &impl->ca_pem_at_start));
  impl->handed_out.push_back(impl->current);
  impl->next_check = Clock::now() + kRecheckFiles;
  return std::unique_ptr<PeerTls>(new PeerTls(std::move(impl)));
}

const std::string& PeerTls::cert_file() const { return impl_->cert_file; }
const std::string& PeerTls::key_file() const { return impl_->key_file; }
const std::string& PeerTls::ca_file() const { return impl_->ca_file; }
const std::string& PeerTls::ca_pem_at_start() const { return impl_->ca_pem_at_start; }

gnutls_certificate_retrieve_function2* PeerTls::install() {
  g_installed.store(impl_.get(), std::memory_order_release);
  return &retrieve_server_certificate;
}

AuthVerdict PeerTls::verify_client(gnutls_session_t session, std::string* why) {
  unsigned count = 0;
  const gnutls_datum_t* certs =
      gnutls_certificate_type_get(session) == GNUTLS_CRT_X509 ? gnutls_certificate_get_peers(session, &count) : nullptr;
  if (!certs || count == 0) {
    *why = "no client certificate";
    return AuthVerdict::kNoCertificate;
  }
  const unsigned char* p = certs[0].data;
  X509Ptr leaf(d2i_X509(nullptr, &p, certs[0].size));
  if (!leaf) {
    *why = "client certificate cannot be parsed";
    return AuthVerdict::kUntrustedCertificate;
  }
  STACK_OF(X509)* intermediates = sk_X509_new_null();
  for (unsigned i = 1; i < count && i < kMaxChain; ++i) {
    p = certs[i].data;
    if (X509* x = d2i_X509(nullptr, &p, certs[i].size)) sk_X509_push(intermediates, x);
  }
  std::shared_ptr<Generation> gen = impl_->get();
  const bool ok = chains_to(gen->trust, leaf.get(), intermediates, X509_PURPOSE_SSL_CLIENT, why);
  sk_X509_pop_free(intermediates, X509_free);
  return ok ? AuthVerdict::kOk : AuthVerdict::kUntrustedCertificate;
}

}  // namespace nydus::p2p
