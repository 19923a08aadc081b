// BlobWriter: one nydus data blob, laid out as nydus-image 2.2+ writes it
// (rafs-format.md §5.1-§5.6):
//
//   [chunk data][tar image.blob]                                   (v5: chunk data only)
//   [ci v1 array (zstd if smaller)][4096-B ci header][tar blob.meta]
//   [chunk digests][tar blob.digest][ToC entries][tar rafs.blob.toc]
//
// The blob id is the sha256 of every byte written except the raw
// blob.digest payload (upstream hashes through BlobContext::write_data and
// writes that array around it), so it is known only at the very end: the
// file is written under a temporary name and renamed by finish().
#include "builder/blob_writer.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>
#include <unordered_map>
#include <vector>

#include "backend/compress.h"
#include "builder/blob_writer_format.h"
#include "builder/temp_files.h"
#include "common/digest.h"
#include "common/unique_fd.h"

namespace nydus::builder {

namespace blobfmt {
namespace {

void put_le(uint8_t* p, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Right-aligned, zero-filled octal digits followed by one NUL, like the tar
// crate's octal_into().
void put_octal(uint8_t* field, size_t len, uint64_t v) {
  field[len - 1] = 0;
  for (size_t i = len - 1; i-- > 0;) {
    field[i] = static_cast<uint8_t>('0' + (v & 7));
    v >>= 3;
  }
}

}  // namespace

std::array<uint8_t, kTarHeaderSize> tar_header(std::string_view name, uint64_t size) {
  std::array<uint8_t, kTarHeaderSize> h{};
  std::memcpy(h.data(), name.data(), std::min<size_t>(name.size(), 99));
  // mode (100), uid (108), gid (116) stay NUL: new_gnu() never sets them.
  if (size < (uint64_t{1} << 33)) {
    put_octal(h.data() + 124, 12, size);
  } else {
    // GNU base-256: high bit of the first byte set, big-endian value.
    h[124] = 0x80;
    for (size_t i = 0; i < 8; ++i) h[135 - i] = static_cast<uint8_t>(size >> (8 * i));
  }
  put_octal(h.data() + 136, 12, 0);  // mtime
  h[156] = '0';                      // regular file
  std::memcpy(h.data() + 257, "ustar  ", 8);  // GNU magic "ustar " + version " \0"
  uint64_t sum = 0;
  for (size_t i = 0; i < h.size(); ++i) sum += (i >= 148 && i < 156) ? ' ' : h[i];
  put_octal(h.data() + 148, 8, sum);
  return h;
}

std::array<uint8_t, kCiV1EntrySize> ci_v1_entry(uint64_t compressed_offset, uint32_t compressed_size,
                                                uint64_t uncompressed_offset, uint32_t uncompressed_size) {
  const uint64_t d = uint64_t{uncompressed_size} - 1, c = uint64_t{compressed_size} - 1;
  uint64_t uncomp = (uncompressed_offset & 0x0000'0FFF'FFFF'F000ull) | ((d & 0xF'FFFF) << 44) |
                    ((d & 0xF0'0000) >> 12);
  uint64_t comp = (compressed_offset & 0xFF'FFFF'FFFFull) | ((c & 0xF'FFFF) << 44) | ((c & 0xF0'0000) << 20);
  std::array<uint8_t, kCiV1EntrySize> e{};
  put_le(e.data(), uncomp, 8);
  put_le(e.data() + 8, comp, 8);
  return e;
}

std::array<uint8_t, kMetaHeaderSize> meta_header(uint32_t features, bootstrap::Compressor ci_compressor,
                                                 uint32_t entries, uint64_t ci_offset,
                                                 uint64_t ci_compressed_size, uint64_t ci_uncompressed_size) {
  std::array<uint8_t, kMetaHeaderSize> h{};
  put_le(h.data(), 0xB10BB10B, 4);
  put_le(h.data() + 4, features, 4);
  put_le(h.data() + 8, static_cast<uint32_t>(ci_compressor), 4);
  put_le(h.data() + 12, entries, 4);
  put_le(h.data() + 16, ci_offset, 8);
  put_le(h.data() + 24, ci_compressed_size, 8);
  put_le(h.data() + 32, ci_uncompressed_size, 8);
  // zran/batch table offset, size and count (40..59) stay 0.
  put_le(h.data() + kMetaHeaderSize - 4, 0xB10BB10B, 4);
  return h;
}

std::array<uint8_t, kTocEntrySize> toc_entry(std::string_view name, uint32_t flags,
                                             const bootstrap::Digest& sha256, uint64_t compressed_offset,
                                             uint64_t compressed_size, uint64_t uncompressed_size) {
  std::array<uint8_t, kTocEntrySize> e{};
  put_le(e.data(), flags, 4);
  std::memcpy(e.data() + 8, name.data(), std::min<size_t>(name.size(), 16));
  std::memcpy(e.data() + 24, sha256.data(), sha256.size());
  put_le(e.data() + 56, compressed_offset, 8);
  put_le(e.data() + 64, compressed_size, 8);
  put_le(e.data() + 72, uncompressed_size, 8);
  return e;
}

}  // namespace blobfmt

namespace {

using bootstrap::ChunkRef;
using bootstrap::Compressor;
using bootstrap::Digest;

constexpr uint64_t kAlign = 4096;
constexpr size_t kWriteBuffer = 4 << 20;
// The v6 chunk index keeps 24 bits of chunk index (rafs-format.md §4.9);
// upstream stops at 0xff_ffff chunks per blob.
constexpr uint64_t kMaxChunks = 0xFF'FFFF;
// blob.meta v1 field widths (§5.2).
constexpr uint64_t kMaxCompressedEnd = uint64_t{1} << 40;
constexpr uint64_t kMaxUncompressedEnd = uint64_t{1} << 44;

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

std::string errno_text(int err) { return std::strerror(err); }

// sha256 whose intermediate state can be read (the image.blob ToC digest is
// the running blob hash right after that section's tar header).
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (ctx_ && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
      EVP_MD_CTX_free(ctx_);
      ctx_ = nullptr;
    }
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  bool ok() const { return ctx_ != nullptr; }
  void update(std::span<const uint8_t> data) {
    if (ctx_ && !data.empty()) EVP_DigestUpdate(ctx_, data.data(), data.size());
  }
  // Digest of everything so far; the running state is left untouched.
  Digest peek() const {
    Digest out{};
    EVP_MD_CTX* copy = EVP_MD_CTX_new();
    if (copy && EVP_MD_CTX_copy_ex(copy, ctx_) == 1) {
      unsigned int len = 0;
      EVP_DigestFinal_ex(copy, out.data(), &len);
    }
    EVP_MD_CTX_free(copy);
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

Digest sha256_of(std::span<const uint8_t> data) { return digest(bootstrap::Digester::kSha256, data); }

struct DigestHash {
  size_t operator()(const Digest& d) const {
    size_t h;
    std::memcpy(&h, d.data(), sizeof h);
    return h;
  }
};

uint32_t toc_flags(Compressor c) {
  switch (c) {
    case Compressor::kZstd: return blobfmt::kTocZstd;
    case Compressor::kLz4Block: return blobfmt::kTocLz4Block;
    default: return blobfmt::kTocNone;
  }
}

class FileBlobWriter final : public BlobWriter {
 public:
  FileBlobWriter(std::string dir, std::string tmp_path, UniqueFd fd, BlobWriterOptions options)
      : dir_(std::move(dir)), tmp_path_(std::move(tmp_path)), fd_(std::move(fd)), options_(options) {
    buf_.reserve(kWriteBuffer);
  }
  ~FileBlobWriter() override {
    if (!done_) ::unlink(tmp_path_.c_str());
    unregister_temp_file(tmp_path_);
  }

  Result<ChunkRef> add_chunk(std::span<const uint8_t> data) override;
  Result<ChunkRef> add_prepared_chunk(std::span<const uint8_t> data, PreparedChunk chunk) override;
  Result<bootstrap::BlobInfo> finish() override;
  Result<bootstrap::BlobInfo> seal() override;
  Status commit() override;

  uint64_t chunks_added() const override { return added_; }
  uint64_t chunks_stored() const override { return chunks_.size(); }
  uint64_t bytes_in() const override { return bytes_in_; }
  uint64_t bytes_out() const override { return pos_; }

  bool hash_ok() const { return id_hash_.ok(); }

 private:
  // Appends to the file; `hashed` bytes go into the blob id.
  Status write(std::span<const uint8_t> data, bool hashed);
  Status write_zeros(uint64_t n);
  Status flush();
  Status fail(Status s) {
    failed_ = s;
    return s;
  }
  Status finish_v6(bootstrap::BlobInfo* info);
  std::string where() const { return "blob writer " + tmp_path_; }

  const std::string dir_;
  const std::string tmp_path_;
  UniqueFd fd_;
  const BlobWriterOptions options_;
  std::vector<uint8_t> buf_;
  uint64_t pos_ = 0;               // bytes written so far (file offset of the next byte)
  uint64_t uncompressed_end_ = 0;  // next 4 KiB aligned uncompressed offset
  uint64_t added_ = 0;
  uint64_t bytes_in_ = 0;
  std::vector<ChunkRef> chunks_;   // stored chunks, by chunk index
  std::unordered_map<Digest, uint32_t, DigestHash> by_digest_;
  Sha256 id_hash_;
  Status failed_;                  // sticky: a failed write poisons the blob
  bool sealed_ = false;             // tail written, file synced, not yet renamed
  bool done_ = false;               // renamed (or nothing to store)
  std::string id_;
};

Status FileBlobWriter::flush() {
  size_t off = 0;
  while (off < buf_.size()) {
    ssize_t n = ::write(fd_.get(), buf_.data() + off, buf_.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::io(where() + ": write: " + errno_text(errno));
    }
    off += static_cast<size_t>(n);
  }
  buf_.clear();
  return Status::Ok();
}

Status FileBlobWriter::write(std::span<const uint8_t> data, bool hashed) {
  if (hashed) id_hash_.update(data);
  pos_ += data.size();
  while (!data.empty()) {
    size_t n = std::min(data.size(), kWriteBuffer - buf_.size());
    buf_.insert(buf_.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
    data = data.subspan(n);
    if (buf_.size() == kWriteBuffer) NYDUS_TRY(flush());
  }
  return Status::Ok();
}

Status FileBlobWriter::write_zeros(uint64_t n) {
  static const uint8_t kZeros[kAlign] = {};
  while (n > 0) {
    size_t k = static_cast<size_t>(std::min<uint64_t>(n, kAlign));
    NYDUS_TRY(write({kZeros, k}, true));
    n -= k;
  }
  return Status::Ok();
}

Result<ChunkRef> FileBlobWriter::add_chunk(std::span<const uint8_t> data) {
  if (data.empty() || data.size() > options_.chunk_size) return add_prepared_chunk(data, {});
  PreparedChunk p;
  p.digest = digest(options_.digester, data);
  return add_prepared_chunk(data, std::move(p));
}

Result<ChunkRef> FileBlobWriter::add_prepared_chunk(std::span<const uint8_t> data, PreparedChunk p) {
  if (!failed_.ok()) return failed_;
  if (done_ || sealed_) return Status::invalid(where() + ": add_chunk after finish");
  if (data.empty() || data.size() > options_.chunk_size)
    return Status::invalid(where() + ": chunk of " + std::to_string(data.size()) +
                           " bytes (must be 1.." + std::to_string(options_.chunk_size) + ")");
  ++added_;
  bytes_in_ += data.size();
  const Digest& d = p.digest;
  if (auto it = by_digest_.find(d); it != by_digest_.end()) return chunks_[it->second];

  if (chunks_.size() >= kMaxChunks)
    return Status::unsupported(where() + ": more than " + std::to_string(kMaxChunks) + " chunks in one blob");
  if (!p.packed_ready) {
    if (Status s = pack_chunk(options_, data, &p); !s.ok()) return fail(s.with_context(where()));
  }
  std::span<const uint8_t> payload = p.compressed ? std::span<const uint8_t>(p.packed) : data;

  ChunkRef r;
  r.blob_index = options_.blob_index;
  r.chunk_index = static_cast<uint32_t>(chunks_.size());
  r.compressed_offset = pos_;
  r.compressed_size = static_cast<uint32_t>(payload.size());
  r.uncompressed_offset = uncompressed_end_;
  r.uncompressed_size = static_cast<uint32_t>(data.size());
  r.compressed = p.compressed;
  r.digest = d;
  r.has_crc32 = true;
  r.crc32 = p.crc32;
  const uint64_t next_uncompressed = uncompressed_end_ + align_up(data.size(), kAlign);
  if (r.compressed_offset + payload.size() > kMaxCompressedEnd || next_uncompressed > kMaxUncompressedEnd)
    return Status::unsupported(where() + ": blob exceeds the blob.meta offset range (1 TiB stored, 16 TiB uncompressed)");

  if (Status s = write(payload, true); !s.ok()) return fail(s);
  // An uncompressed blob padded like this is byte for byte the blob cache
  // file, so the kernel can use it directly as the EROFS extra device.
  if (options_.compressor == Compressor::kNone && options_.align_uncompressed_data) {
    if (Status s = write_zeros(next_uncompressed - pos_); !s.ok()) return fail(s);
  }
  uncompressed_end_ = next_uncompressed;
  by_digest_.emplace(d, r.chunk_index);
  chunks_.push_back(r);
  return r;
}

Status FileBlobWriter::finish_v6(bootstrap::BlobInfo* info) {
  const uint32_t features = blobfmt::kV6BlobFeatures;
  std::vector<std::array<uint8_t, blobfmt::kTocEntrySize>> toc;

  // image.blob: its ToC digest is the blob hash so far, header included
  // (upstream's quirk, §5.5); the offset is the real one (0).
  const uint64_t data_size = pos_;
  auto hdr = blobfmt::tar_header("image.blob", data_size);
  NYDUS_TRY(write(hdr, true));
  toc.push_back(blobfmt::toc_entry("image.blob", blobfmt::kTocNone, id_hash_.peek(), 0, data_size,
                                   uncompressed_end_));

  // blob.meta: ci v1 array, zstd-compressed only when that is smaller.
  std::vector<uint8_t> ci;
  ci.reserve(chunks_.size() * blobfmt::kCiV1EntrySize);
  for (const auto& c : chunks_) {
    auto e = blobfmt::ci_v1_entry(c.compressed_offset, c.compressed_size, c.uncompressed_offset,
                                  c.uncompressed_size);
    ci.insert(ci.end(), e.begin(), e.end());
  }
  Compressor ci_compressor = Compressor::kNone;
  std::vector<uint8_t> ci_stored;
  if (auto z = backend::compress(Compressor::kZstd, ci); z.ok() && z->size() < ci.size()) {
    ci_stored = std::move(z).value();
    ci_compressor = Compressor::kZstd;
  }
  std::span<const uint8_t> ci_payload = ci_compressor == Compressor::kZstd ? std::span<const uint8_t>(ci_stored)
                                                                           : std::span<const uint8_t>(ci);
  const uint64_t ci_offset = pos_;
  auto meta_hdr = blobfmt::meta_header(features, ci_compressor, static_cast<uint32_t>(chunks_.size()), ci_offset,
                                       ci_payload.size(), ci.size());
  NYDUS_TRY(write(ci_payload, true));
  NYDUS_TRY(write(meta_hdr, true));
  NYDUS_TRY(write(blobfmt::tar_header("blob.meta", ci_payload.size() + meta_hdr.size()), true));
  toc.push_back(blobfmt::toc_entry("blob.meta", toc_flags(ci_compressor), sha256_of(ci), ci_offset,
                                   ci_payload.size(), ci.size()));
  toc.push_back(blobfmt::toc_entry("blob.meta.header", blobfmt::kTocNone, sha256_of(meta_hdr),
                                   ci_offset + ci_payload.size(), meta_hdr.size(), meta_hdr.size()));

  // blob.digest: not part of the blob id (upstream writes it around its
  // hasher), its tar header is.
  std::vector<uint8_t> digests;
  digests.reserve(chunks_.size() * 32);
  for (const auto& c : chunks_) digests.insert(digests.end(), c.digest.begin(), c.digest.end());
  const uint64_t digest_offset = pos_;
  NYDUS_TRY(write(digests, false));
  NYDUS_TRY(write(blobfmt::tar_header("blob.digest", digests.size()), true));
  toc.push_back(blobfmt::toc_entry("blob.digest", blobfmt::kTocNone, sha256_of(digests), digest_offset,
                                   digests.size(), digests.size()));

  // ToC, then its header; the bootstrap's blob entry records
  // sha256(entries || header) and their total size.
  std::vector<uint8_t> toc_bytes;
  for (const auto& e : toc) toc_bytes.insert(toc_bytes.end(), e.begin(), e.end());
  auto toc_hdr = blobfmt::tar_header("rafs.blob.toc", toc_bytes.size());
  NYDUS_TRY(write(toc_bytes, true));
  NYDUS_TRY(write(toc_hdr, true));
  std::vector<uint8_t> toc_all(toc_bytes);
  toc_all.insert(toc_all.end(), toc_hdr.begin(), toc_hdr.end());

  info->features = features;
  info->meta_ci_compressor = ci_compressor;
  info->meta_ci_offset = ci_offset;
  info->meta_ci_compressed_size = ci_payload.size();
  info->meta_ci_uncompressed_size = ci.size();
  info->toc_size = static_cast<uint32_t>(toc_all.size());
  info->toc_digest = sha256_of(toc_all);
  return Status::Ok();
}

Result<bootstrap::BlobInfo> FileBlobWriter::seal() {
  if (!failed_.ok()) return failed_;
  if (sealed_ || done_) return Status::invalid(where() + ": sealed twice");
  bootstrap::BlobInfo info;
  info.index = options_.blob_index;
  info.chunk_size = options_.chunk_size;
  info.compressor = options_.compressor;
  info.digester = options_.digester;
  if (chunks_.empty()) {
    // Nothing to store: no file at all (an empty layer has no data blob).
    ::unlink(tmp_path_.c_str());
    fd_.reset();
    done_ = true;
    sealed_ = true;
    return info;
  }
  if (options_.fs_version == 6) {
    if (Status s = finish_v6(&info); !s.ok()) return fail(s);
  } else {
    info.features = blobfmt::kFeatureAligned;
  }
  info.id = to_hex(id_hash_.peek());
  info.chunk_count = static_cast<uint32_t>(chunks_.size());
  info.compressed_size = pos_;
  info.uncompressed_size = uncompressed_end_;
  if (Status s = flush(); !s.ok()) return fail(s);
  if (::fsync(fd_.get()) != 0) return fail(Status::io(where() + ": fsync: " + errno_text(errno)));
  fd_.reset();
  sealed_ = true;
  id_ = info.id;
  return info;
}

Status FileBlobWriter::commit() {
  if (!failed_.ok()) return failed_;
  if (!sealed_) return Status::invalid(where() + ": commit before seal");
  if (done_) return Status::Ok();  // nothing was stored, or committed already
  const std::string final_path = options_.final_path.empty() ? dir_ + "/" + id_ : options_.final_path;
  if (::rename(tmp_path_.c_str(), final_path.c_str()) != 0)
    return fail(Status::io(where() + ": rename to " + final_path + ": " + errno_text(errno)));
  done_ = true;
  // Make the rename itself durable.
  UniqueFd dir_fd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.valid()) ::fsync(dir_fd.get());
  return Status::Ok();
}

Result<bootstrap::BlobInfo> FileBlobWriter::finish() {
  NYDUS_ASSIGN(bootstrap::BlobInfo info, seal());
  NYDUS_TRY(commit());
  return info;
}

}  // namespace

Status pack_chunk(const BlobWriterOptions& options, std::span<const uint8_t> data, PreparedChunk* p) {
  p->crc32 = crc32c(data);
  p->compressed = false;
  p->packed.clear();
  if (options.compressor != Compressor::kNone) {
    auto out = backend::compress(options.compressor, data);
    if (!out.ok()) return out.status();
    // Keep-if-smaller (rafs-format.md §2): a chunk that does not shrink is
    // stored raw and not flagged COMPRESSED.
    if (out->size() < data.size()) {
      p->packed = std::move(out).value();
      p->compressed = true;
    }
  }
  p->packed_ready = true;
  return Status::Ok();
}

Result<PreparedChunk> prepare_chunk(const BlobWriterOptions& options, std::span<const uint8_t> data, bool pack) {
  PreparedChunk p;
  p.digest = digest(options.digester, data);
  if (pack) NYDUS_TRY(pack_chunk(options, data, &p));
  return p;
}

Result<std::unique_ptr<BlobWriter>> BlobWriter::create(const std::string& dir, BlobWriterOptions options) {
  const uint32_t cs = options.chunk_size;
  if (cs < 4096 || cs > (16u << 20) || (cs & (cs - 1)) != 0)
    return Status::invalid("blob writer: chunk size " + std::to_string(cs) +
                           " is not a power of two in 4 KiB..16 MiB");
  if (options.compressor != Compressor::kNone && options.compressor != Compressor::kLz4Block &&
      options.compressor != Compressor::kZstd)
    return Status::unsupported(std::string("blob writer: compressor ") + bootstrap::compressor_name(options.compressor) +
                               " cannot be written");
  if (options.digester != bootstrap::Digester::kBlake3 && options.digester != bootstrap::Digester::kSha256)
    return Status::invalid("blob writer: unknown digester");
  if (options.fs_version != 5 && options.fs_version != 6)
    return Status::invalid("blob writer: fs_version " + std::to_string(options.fs_version) + " (expected 5 or 6)");
  if (options.blob_index >= 255)
    return Status::invalid("blob writer: blob index " + std::to_string(options.blob_index) + " (at most 254)");

  // A unique hidden name next to the final one, so the rename stays inside
  // one file system.
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string tmp = dir + "/.blob-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
                      std::to_string(rd()) + ".tmp";
    // Registered before it exists: a signal between open() and the
    // registration would otherwise leave the file behind.
    register_temp_file(tmp);
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      const int err = errno;
      unregister_temp_file(tmp);
      if (err == EEXIST) continue;
      return Status::io("blob writer: cannot create " + tmp + ": " + errno_text(err));
    }
    auto w = std::make_unique<FileBlobWriter>(dir, tmp, UniqueFd(fd), options);
    if (!w->hash_ok()) return Status::io("blob writer: cannot initialize sha256");
    return std::unique_ptr<BlobWriter>(std::move(w));
  }
  return Status::io("blob writer: cannot find a free temporary name in " + dir);
}

}  // namespace nydus::builder
