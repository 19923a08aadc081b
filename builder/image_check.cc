#include "builder/image_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "backend/chunk_reader.h"
#include "backend/compress.h"
#include "backend/localfs_backend.h"
#include "bootstrap/blob_meta.h"
#include "builder/tree.h"
#include "common/digest.h"
#include "common/unique_fd.h"
#include "common/text.h"

namespace nydus::builder {

namespace {

using bootstrap::BlobInfo;
using bootstrap::ChunkRef;
using bootstrap::Digest;
using bootstrap::Ino;

constexpr uint32_t kFeatureHasToc = 0x2000'0000;
constexpr uint64_t kMaxTocBytes = 1 << 20;
constexpr uint64_t kMaxSectionBytes = 512ull << 20;

bool is_zero(const Digest& d) {
  return std::all_of(d.begin(), d.end(), [](uint8_t b) { return b == 0; });
}

bool is_hex_id(const std::string& id) {
  return id.size() == 64 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

std::string json_safe(std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c < 0x80) len = 1;
    else if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) { len = 3; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      ok = k == 1 ? (cc >= lo && cc <= hi) : (cc >= 0x80 && cc <= 0xbf);
    }
    if (ok && c != '\\') {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      ++i;
    }
  }
  return out;
}

namespace {

const char* type_name(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFDIR: return "dir";
    case S_IFREG: return "file";
    case S_IFLNK: return "symlink";
    case S_IFCHR: return "char";
    case S_IFBLK: return "block";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
  }
  return "unknown";
}

uint32_t dev_major(uint32_t rdev) { return (rdev >> 8) & 0xfff; }
uint32_t dev_minor(uint32_t rdev) { return (rdev & 0xff) | ((rdev >> 12) & 0xfff00); }

// Counts entries as a walk passes them.
class StatsCollector {
 public:
  explicit StatsCollector(const bootstrap::Image& image) : image_(image) {}

  // Also decodes the inode's xattrs and, for a first name, chunk list.
  Status add(const ImageEntry& e, std::vector<ChunkRef>* chunks_out) {
    ImageStats& s = stats_;
    ++s.entries;
    const uint32_t type = e.attr.mode & S_IFMT;
    if (type == S_IFREG && !e.first_name) {
      ++s.files;
      ++s.hardlinks;
      return Status::Ok();
    }
    ++s.inodes;
    auto xattrs = image_.xattrs(e.ino);
    if (!xattrs.ok()) return xattrs.status().with_context("'" + escape_bytes(e.path) + "'");
    s.xattrs += xattrs->size();
    switch (type) {
      case S_IFDIR: ++s.dirs; break;
      case S_IFLNK: {
        ++s.symlinks;
        auto target = image_.read_link(e.ino);
        if (!target.ok()) return target.status().with_context("'" + escape_bytes(e.path) + "'");
        break;
      }
      case S_IFCHR: ++s.char_devices; break;
      case S_IFBLK: ++s.block_devices; break;
      case S_IFIFO: ++s.fifos; break;
      case S_IFSOCK: ++s.sockets; break;
      case S_IFREG: {
        ++s.files;
        s.file_bytes += e.attr.size;
        auto chunks = image_.chunks(e.ino, 0, e.attr.size);
        if (!chunks.ok()) return chunks.status().with_context("'" + escape_bytes(e.path) + "'");
        s.chunk_refs += chunks->size();
        for (const ChunkRef& c : *chunks) {
          if (seen_.insert({c.blob_index, c.chunk_index, c.uncompressed_offset}).second) ++s.unique_chunks;
        }
        if (chunks_out) *chunks_out = std::move(chunks).value();
        break;
      }
    }
    return Status::Ok();
  }

  const ImageStats& stats() const { return stats_; }

 private:
  const bootstrap::Image& image_;
  ImageStats stats_;
  std::set<std::tuple<uint32_t, uint32_t, uint64_t>> seen_;
};

// A blob file read with pread.
class BlobFile {
 public:
  static Result<BlobFile> open(const std::string& path) {
    BlobFile f;
    f.path_ = path;
    f.fd_.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!f.fd_.valid()) return Status(errno == ENOENT ? Code::kNotFound : Code::kIo,
                                      "cannot open " + path + ": " + std::strerror(errno));
    struct stat st;
    if (::fstat(f.fd_.get(), &st) != 0) return Status::io("stat " + path + ": " + std::strerror(errno));
    f.size_ = static_cast<uint64_t>(st.st_size);
    return f;
  }
  uint64_t size() const { return size_; }
  Status read(uint64_t offset, std::span<uint8_t> dst) const {
    if (offset > size_ || dst.size() > size_ - offset)
      return Status::corrupt("range " + hex(offset) + "+" + std::to_string(dst.size()) + " is past the end (" +
                             std::to_string(size_) + " bytes)");
    size_t done = 0;
    while (done < dst.size()) {
      ssize_t n = ::pread(fd_.get(), dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::io("read " + path_ + ": " + (n < 0 ? std::strerror(errno) : "unexpected end"));
      done += static_cast<size_t>(n);
    }
    return Status::Ok();
  }
  int fd() const { return fd_.get(); }

 private:
  std::string path_;
  UniqueFd fd_;
  uint64_t size_ = 0;
};

// Decompresses a ToC section by its flags (§1.8).
Result<std::vector<uint8_t>> toc_payload(const BlobFile& f, const bootstrap::TocEntry& e) {
  if (e.compressed_size > kMaxSectionBytes || e.uncompressed_size > kMaxSectionBytes)
    return Status::corrupt("ToC entry " + e.name + ": sizes out of range");
  std::vector<uint8_t> raw(e.compressed_size);
  NYDUS_TRY(f.read(e.compressed_offset, raw).with_context("ToC entry " + e.name));
  bootstrap::Compressor algo;
  switch (e.flags & 0xF) {
    case 0:
    case 0x1: algo = bootstrap::Compressor::kNone; break;
    case 0x2: algo = bootstrap::Compressor::kZstd; break;
    case 0x4: algo = bootstrap::Compressor::kLz4Block; break;
    default: return Status::unsupported("ToC entry " + e.name + ": flags " + hex(e.flags));
  }
  if (algo == bootstrap::Compressor::kNone) {
    if (raw.size() != e.uncompressed_size)
      return Status::corrupt("ToC entry " + e.name + ": plain section with different sizes");
    return raw;
  }
  std::vector<uint8_t> out(e.uncompressed_size);
  NYDUS_TRY(backend::decompress(algo, raw, out).with_context("ToC entry " + e.name));
  return out;
}

// Chunks of one blob the bootstrap locates, by chunk index.
using BlobChunks = std::map<uint32_t, ChunkRef>;

class BlobTailChecker {
 public:
  BlobTailChecker(const BlobInfo& blob, const BlobFile& file, const BlobChunks& chunks)
      : blob_(blob), file_(file), chunks_(chunks) {}

  Status run() {
    if (blob_.features & kFeatureHasToc) NYDUS_TRY(check_toc());
    if (blob_.meta_ci_uncompressed_size > 0) NYDUS_TRY(check_meta());
    if (!digests_.empty()) NYDUS_TRY(check_digest_array());
    return check_id();
  }

 private:
  Status check_toc() {
    const uint64_t size = file_.size();
    if (size < bootstrap::kTarHeaderSize) return Status::corrupt("too small for its ToC");
    std::vector<uint8_t> hdr(bootstrap::kTarHeaderSize);
    NYDUS_TRY(file_.read(size - hdr.size(), hdr));
    auto parsed = bootstrap::parse_tar_header(hdr);
    if (!parsed.ok()) return Status::corrupt("the last 512 bytes are not a tar header: " + parsed.status().message());
    const bootstrap::TarSection& section = *parsed;
    if (section.name != "rafs.blob.toc")
      return Status::corrupt("the last tar header names '" + section.name + "', expected rafs.blob.toc");
    if (section.size % 128 != 0 || section.size > kMaxTocBytes || section.size > size - hdr.size())
      return Status::corrupt("ToC of " + std::to_string(section.size) + " bytes");
    std::vector<uint8_t> toc(section.size + hdr.size());
    NYDUS_TRY(file_.read(size - toc.size(), toc));
    if (blob_.toc_size != 0 && blob_.toc_size != toc.size())
      return Status::corrupt("ToC takes " + std::to_string(toc.size()) + " bytes, the bootstrap says " +
                             std::to_string(blob_.toc_size));
    if (!is_zero(blob_.toc_digest)) {
      Digest d = digest(bootstrap::Digester::kSha256, toc);
      if (d != blob_.toc_digest)
        return Status::corrupt("ToC sha256 is " + to_hex(d) + ", the bootstrap says " + to_hex(blob_.toc_digest));
    }
    NYDUS_ASSIGN(auto entries, bootstrap::parse_toc(std::span<const uint8_t>(toc).first(section.size)));
    for (const auto& e : entries) {
      if (e.name == "image.blob") {
        // Its digest is the running blob hash right after the chunk data's
        // tar header (§5.5); its offset field is unreliable in 2.2 images.
        if (e.compressed_size > size - bootstrap::kTarHeaderSize)
          return Status::corrupt("ToC entry image.blob: size past the end");
        NYDUS_ASSIGN(Digest d, sha256_range(0, e.compressed_size + bootstrap::kTarHeaderSize));
        if (d != e.sha256)
          return Status::corrupt("chunk data (ToC entry image.blob) sha256 is " + to_hex(d) + ", the ToC says " +
                                 to_hex(e.sha256));
        continue;
      }
      NYDUS_ASSIGN(std::vector<uint8_t> payload, toc_payload(file_, e));
      Digest d = digest(bootstrap::Digester::kSha256, payload);
      if (d != e.sha256)
        return Status::corrupt("ToC entry " + e.name + ": sha256 is " + to_hex(d) + ", the ToC says " +
                               to_hex(e.sha256));
      if (e.name == "blob.digest") {
        digests_ = std::move(payload);
        digest_range_ = {e.compressed_offset, e.compressed_size};
        has_digest_range_ = true;
      }
    }
    return Status::Ok();
  }

  Result<Digest> sha256_range(uint64_t offset, uint64_t len) const {
    Hasher h(bootstrap::Digester::kSha256);
    std::vector<uint8_t> buf(std::min<uint64_t>(len, 4 << 20));
    while (len > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(len, buf.size()));
      NYDUS_TRY(file_.read(offset, std::span<uint8_t>(buf.data(), n)));
      h.update(std::span<const uint8_t>(buf.data(), n));
      offset += n;
      len -= n;
    }
    return h.finish();
  }

  Status check_meta() {
    const uint64_t header_offset = blob_.meta_ci_offset + blob_.meta_ci_compressed_size;
    if (blob_.meta_ci_compressed_size > kMaxSectionBytes || blob_.meta_ci_uncompressed_size > kMaxSectionBytes)
      return Status::corrupt("blob.meta sizes out of range");
    std::vector<uint8_t> header(bootstrap::kBlobMetaHeaderSize);
    NYDUS_TRY(file_.read(header_offset, header).with_context("blob.meta header"));
    NYDUS_ASSIGN(auto h, bootstrap::parse_blob_meta_header(header, blob_));
    std::vector<uint8_t> raw(blob_.meta_ci_compressed_size);
    NYDUS_TRY(file_.read(blob_.meta_ci_offset, raw).with_context("blob.meta"));
    std::vector<uint8_t> payload(blob_.meta_ci_uncompressed_size);
    NYDUS_TRY(backend::decompress(blob_.meta_ci_compressor, raw, payload).with_context("blob.meta"));
    NYDUS_ASSIGN(auto infos, bootstrap::parse_chunk_infos(payload, h, blob_, digests_));
    if (blob_.chunk_count != 0 && infos.size() != blob_.chunk_count)
      return Status::corrupt("blob.meta lists " + std::to_string(infos.size()) + " chunks, the bootstrap " +
                             std::to_string(blob_.chunk_count));
    for (const auto& [index, c] : chunks_) {
      const std::string where = "blob.meta entry of chunk " + std::to_string(index) + ": ";
      if (index >= infos.size()) return Status::corrupt(where + "missing (" + std::to_string(infos.size()) + " entries)");
      const ChunkRef& m = infos[index];
      if (m.uncompressed_offset != c.uncompressed_offset || m.uncompressed_size != c.uncompressed_size)
        return Status::corrupt(where + "uncompressed " + hex(m.uncompressed_offset) + "+" +
                               std::to_string(m.uncompressed_size) + ", the bootstrap " +
                               hex(c.uncompressed_offset) + "+" + std::to_string(c.uncompressed_size));
      if (!c.located) continue;
      if (m.compressed_offset != c.compressed_offset || m.compressed_size != c.compressed_size)
        return Status::corrupt(where + "compressed " + hex(m.compressed_offset) + "+" +
                               std::to_string(m.compressed_size) + ", the bootstrap " +
                               hex(c.compressed_offset) + "+" + std::to_string(c.compressed_size));
      if (!digests_.empty() && m.digest != c.digest)
        return Status::corrupt(where + "digest " + to_hex(m.digest) + ", the bootstrap " + to_hex(c.digest));
    }
    return Status::Ok();
  }

  Status check_digest_array() {
    if (digests_.size() % 32 != 0) return Status::corrupt("blob.digest is not a multiple of 32 bytes");
    for (const auto& [index, c] : chunks_) {
      if (!c.located) continue;
      if (uint64_t{index} * 32 + 32 > digests_.size())
        return Status::corrupt("blob.digest has no entry for chunk " + std::to_string(index));
      if (std::memcmp(digests_.data() + uint64_t{index} * 32, c.digest.data(), 32) != 0)
        return Status::corrupt("blob.digest entry of chunk " + std::to_string(index) + " differs from the bootstrap's");
    }
    return Status::Ok();
  }

  Status check_id() {
    if (!is_hex_id(blob_.id)) return Status::Ok();
    Hasher whole(bootstrap::Digester::kSha256);
    Hasher without_digests(bootstrap::Digester::kSha256);
    std::vector<uint8_t> buf(4 << 20);
    const uint64_t skip_begin = has_digest_range_ ? digest_range_.first : UINT64_MAX;
    const uint64_t skip_end = has_digest_range_ ? digest_range_.first + digest_range_.second : UINT64_MAX;
    for (uint64_t off = 0; off < file_.size();) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), file_.size() - off));
      NYDUS_TRY(file_.read(off, std::span<uint8_t>(buf.data(), n)));
      whole.update(std::span<const uint8_t>(buf.data(), n));
      // The part of [off, off+n) outside [skip_begin, skip_end).
      const uint64_t end = off + n;
      if (end <= skip_begin || off >= skip_end) {
        without_digests.update(std::span<const uint8_t>(buf.data(), n));
      } else {
        if (off < skip_begin) without_digests.update(std::span<const uint8_t>(buf.data(), skip_begin - off));
        if (end > skip_end)
          without_digests.update(std::span<const uint8_t>(buf.data() + (skip_end - off), end - skip_end));
      }
      off = end;
    }
    const std::string a = to_hex(whole.finish());
    const std::string b = to_hex(without_digests.finish());
    if (a == blob_.id || (has_digest_range_ && b == blob_.id)) return Status::Ok();
    return Status::corrupt("content does not match the blob id: sha256 of the file is " + a +
                           (has_digest_range_ ? ", without its blob.digest " + b : std::string()));
  }

  const BlobInfo& blob_;
  const BlobFile& file_;
  const BlobChunks& chunks_;
  std::vector<uint8_t> digests_;
  std::pair<uint64_t, uint64_t> digest_range_{0, 0};
  bool has_digest_range_ = false;
};

std::string mtime_text(uint64_t sec, uint32_t nsec) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%" PRIu64 ".%09u", sec, nsec);
  return buf;
}

std::string entry_line(const ImageEntry& e, const std::string& target, size_t chunks) {
  const auto& a = e.attr;
  std::string line = mode_string(a.mode) + " " + std::to_string(a.nlink) + " " + std::to_string(a.uid) + ":" +
                     std::to_string(a.gid) + " ";
  const uint32_t type = a.mode & S_IFMT;
  if (type == S_IFCHR || type == S_IFBLK)
    line += std::to_string(dev_major(a.rdev)) + "," + std::to_string(dev_minor(a.rdev));
  else
    line += std::to_string(a.size);
  line += " " + mtime_text(a.mtime, a.mtime_nsec) + " " + escape_bytes(e.path);
  if (type == S_IFLNK) line += " -> " + escape_bytes(target);
  if (type == S_IFREG) line += " chunks=" + std::to_string(chunks);
  if (type == S_IFREG && !e.first_name) line += " (hardlink, inode " + std::to_string(e.ino) + ")";
  return line;
}

nlohmann::json super_json(const bootstrap::SuperInfo& s) {
  return {{"version", s.version},
          {"flags", hex(s.flags)},
          {"chunk_size", s.chunk_size},
          {"inodes_count", s.inodes_count},
          {"compressor", bootstrap::compressor_name(s.compressor)},
          {"digester", bootstrap::digester_name(s.digester)},
          {"explicit_uid_gid", s.explicit_uid_gid},
          {"has_xattr", s.has_xattr},
          {"root_nid", s.root_nid},
          {"meta_blkaddr", s.meta_blkaddr}};
}

nlohmann::json blob_json(const BlobInfo& b) {
  return {{"index", b.index},
          {"id", json_safe(b.id)},
          {"chunk_count", b.chunk_count},
          {"chunk_size", b.chunk_size},
          {"features", hex(b.features)},
          {"compressor", bootstrap::compressor_name(b.compressor)},
          {"digester", bootstrap::digester_name(b.digester)},
          {"compressed_size", b.compressed_size},
          {"uncompressed_size", b.uncompressed_size},
          {"meta_ci_compressor", bootstrap::compressor_name(b.meta_ci_compressor)},
          {"meta_ci_offset", b.meta_ci_offset},
          {"meta_ci_compressed_size", b.meta_ci_compressed_size},
          {"meta_ci_uncompressed_size", b.meta_ci_uncompressed_size},
          {"toc_size", b.toc_size},
          {"toc_digest", to_hex(b.toc_digest)}};
}

nlohmann::json stats_json(const ImageStats& s) {
  return {{"entries", s.entries},       {"inodes", s.inodes},
          {"dirs", s.dirs},             {"files", s.files},
          {"hardlinks", s.hardlinks},   {"symlinks", s.symlinks},
          {"char_devices", s.char_devices}, {"block_devices", s.block_devices},
          {"fifos", s.fifos},           {"sockets", s.sockets},
          {"xattrs", s.xattrs},         {"file_bytes", s.file_bytes},
          {"chunk_refs", s.chunk_refs}, {"unique_chunks", s.unique_chunks}};
}

// Everything inspect shows, gathered in one walk.
struct Inspection {
  ImageStats stats;
  std::vector<std::string> prefetch_paths;
  nlohmann::json tree = nlohmann::json::array();
  std::string tree_text;
};

Result<Inspection> inspect(const bootstrap::Image& image, bool want_json, bool want_text) {
  Inspection out;
  StatsCollector stats(image);
  std::unordered_map<Ino, std::string> first_path;
  std::unordered_set<Ino> prefetch(image.prefetch_table().begin(), image.prefetch_table().end());
  Status walked = walk_image(image, [&](const ImageEntry& e) -> Status {
    std::vector<ChunkRef> chunks;
    NYDUS_TRY(stats.add(e, &chunks));
    if (prefetch.count(e.ino) && e.first_name) first_path.emplace(e.ino, e.path);
    std::string target;
    if ((e.attr.mode & S_IFMT) == S_IFLNK) {
      NYDUS_ASSIGN(target, image.read_link(e.ino));
    }
    size_t nchunks = chunks.size();
    if ((e.attr.mode & S_IFMT) == S_IFREG && !e.first_name) {
      NYDUS_ASSIGN(auto again, image.chunks(e.ino, 0, e.attr.size));
      nchunks = again.size();
    }
    if (want_text) out.tree_text += "  " + entry_line(e, target, nchunks) + "\n";
    if (want_json) {
      nlohmann::json j = {{"path", json_safe(e.path)},
                          {"ino", e.ino},
                          {"type", type_name(e.attr.mode)},
                          {"mode", e.attr.mode},
                          {"mode_text", mode_string(e.attr.mode)},
                          {"nlink", e.attr.nlink},
                          {"uid", e.attr.uid},
                          {"gid", e.attr.gid},
                          {"size", e.attr.size},
                          {"rdev", e.attr.rdev},
                          {"mtime", e.attr.mtime},
                          {"mtime_nsec", e.attr.mtime_nsec}};
      if ((e.attr.mode & S_IFMT) == S_IFREG) j["chunks"] = nchunks;
      if ((e.attr.mode & S_IFMT) == S_IFLNK) j["target"] = json_safe(target);
      NYDUS_ASSIGN(auto xattrs, image.xattrs(e.ino));
      if (!xattrs.empty()) {
        nlohmann::json names = nlohmann::json::array();
        for (const auto& x : xattrs) names.push_back(json_safe(x.name));
        j["xattrs"] = std::move(names);
      }
      out.tree.push_back(std::move(j));
    }
    return Status::Ok();
  });
  NYDUS_TRY(walked);
  for (Ino ino : image.prefetch_table()) {
    auto it = first_path.find(ino);
    out.prefetch_paths.push_back(it == first_path.end() ? "<inode " + std::to_string(ino) + ">" : it->second);
  }
  out.stats = stats.stats();
  return out;
}

}  // namespace

std::string mode_string(uint32_t mode) {
  std::string s(10, '-');
  switch (mode & S_IFMT) {
    case S_IFDIR: s[0] = 'd'; break;
    case S_IFLNK: s[0] = 'l'; break;
    case S_IFCHR: s[0] = 'c'; break;
    case S_IFBLK: s[0] = 'b'; break;
    case S_IFIFO: s[0] = 'p'; break;
    case S_IFSOCK: s[0] = 's'; break;
  }
  const char* rwx = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i) {
    if (mode & (0400u >> i)) s[1 + i] = rwx[i];
  }
  if (mode & S_ISUID) s[3] = (mode & 0100) ? 's' : 'S';
  if (mode & S_ISGID) s[6] = (mode & 0010) ? 's' : 'S';
  if (mode & S_ISVTX) s[9] = (mode & 0001) ? 't' : 'T';
  return s;
}

Status walk_image(const bootstrap::Image& image, const std::function<Status(const ImageEntry&)>& fn) {
  std::unordered_set<Ino> regular_seen;
  struct Pending {
    Ino ino;
    std::string path;
  };
  std::vector<Pending> stack{{image.root(), "/"}};
  std::unordered_set<Ino> dirs_seen;
  while (!stack.empty()) {
    Pending p = std::move(stack.back());
    stack.pop_back();
    ImageEntry e;
    e.path = std::move(p.path);
    e.ino = p.ino;
    auto attr = image.inode(p.ino);
    if (!attr.ok()) return attr.status().with_context("'" + escape_bytes(e.path) + "'");
    e.attr = *attr;
    if ((e.attr.mode & S_IFMT) == S_IFREG) e.first_name = regular_seen.insert(p.ino).second;
    NYDUS_TRY(fn(e));
    if ((e.attr.mode & S_IFMT) != S_IFDIR) continue;
    if (!dirs_seen.insert(p.ino).second)
      return Status::corrupt("'" + escape_bytes(e.path) + "': directory inode " + std::to_string(p.ino) +
                             " appears twice");
    std::vector<bootstrap::DirEntry> entries;
    Status s = image.read_dir(p.ino, 0, [&entries](const bootstrap::DirEntry& d, uint64_t) {
      if (d.name != "." && d.name != "..") entries.push_back(d);
      return true;
    });
    if (!s.ok()) return s.with_context("'" + escape_bytes(e.path) + "'");
    const std::string prefix = e.path == "/" ? "/" : e.path + "/";
    for (auto it = entries.rbegin(); it != entries.rend(); ++it) stack.push_back({it->ino, prefix + it->name});
  }
  return Status::Ok();
}

Result<ImageStats> image_stats(const bootstrap::Image& image) {
  StatsCollector stats(image);
  NYDUS_TRY(walk_image(image, [&](const ImageEntry& e) { return stats.add(e, nullptr); }));
  return stats.stats();
}

Result<CheckReport> check_image(const CheckOptions& options) {
  NYDUS_ASSIGN(std::unique_ptr<bootstrap::Image> image, bootstrap::Image::open(options.bootstrap));
  CheckReport report;
  report.super = image->super();
  report.blobs = image->blobs();
  const bool check_blobs = !options.blob_dir.empty();
  report.blobs_checked = check_blobs;

  // Every blob must be there, and at least as large as the bootstrap says,
  // before any chunk is read: a missing blob is one clear message.
  std::vector<BlobFile> files;
  if (check_blobs) {
    for (const BlobInfo& b : report.blobs) {
      const std::string path = options.blob_dir + "/" + b.id;
      auto f = BlobFile::open(path);
      if (!f.ok()) return f.status().with_context("blob " + json_safe(b.id));
      if (f->size() < b.compressed_size)
        return Status::corrupt("blob " + b.id + ": " + std::to_string(f->size()) +
                               " bytes, the bootstrap says " + std::to_string(b.compressed_size) + " (truncated?)");
      files.push_back(std::move(f).value());
    }
  }
  std::unique_ptr<backend::ChunkReader> reader;
  if (check_blobs) {
    backend::LocalFsConfig lc;
    lc.dir = options.blob_dir;
    backend::ChunkReaderOptions ro;
    ro.validate_digest = true;
    reader = std::make_unique<backend::ChunkReader>(report.blobs, backend::make_localfs_backend(lc), ro);
  }

  StatsCollector stats(*image);
  std::vector<BlobChunks> blob_chunks(report.blobs.size());
  std::set<std::tuple<uint32_t, uint32_t, uint64_t>> verified;
  std::vector<uint8_t> buf;
  Status walked = walk_image(*image, [&](const ImageEntry& e) -> Status {
    std::vector<ChunkRef> chunks;
    NYDUS_TRY(stats.add(e, &chunks));
    if (options.verbose) {
      std::string target;
      if ((e.attr.mode & S_IFMT) == S_IFLNK) {
        NYDUS_ASSIGN(target, image->read_link(e.ino));
      }
      options.verbose(entry_line(e, target, chunks.size()));
    }
    if (!check_blobs) return Status::Ok();
    for (const ChunkRef& c : chunks) {
      blob_chunks[c.blob_index].emplace(c.chunk_index, c);
      if (!verified.insert({c.blob_index, c.chunk_index, c.uncompressed_offset}).second) continue;
      buf.resize(c.uncompressed_size);
      Status s = reader->read_chunk(c, buf);
      if (!s.ok())
        return Status(s.code(), "file '" + escape_bytes(e.path) + "', chunk at file offset " +
                                    hex(c.file_offset) + ": " + s.message());
      ++report.chunks_verified;
      report.bytes_verified += c.uncompressed_size;
    }
    return Status::Ok();
  });
  NYDUS_TRY(walked);
  report.stats = stats.stats();

  for (size_t i = 0; check_blobs && i < report.blobs.size(); ++i) {
    BlobTailChecker tail(report.blobs[i], files[i], blob_chunks[i]);
    if (Status s = tail.run(); !s.ok()) return s.with_context("blob " + report.blobs[i].id);
  }
  return report;
}

Result<std::string> inspect_text(const bootstrap::Image& image) {
  NYDUS_ASSIGN(Inspection ins, inspect(image, false, true));
  const auto& s = image.super();
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line,
                "Superblock:\n  Version:          %u\n  Flags:            %s\n  Chunk size:       0x%x\n"
                "  Inodes:           %" PRIu64 "\n  Compressor:       %s\n  Digester:         %s\n"
                "  Explicit uid/gid: %s\n  Has xattrs:       %s\n",
                s.version, hex(s.flags).c_str(), s.chunk_size, s.inodes_count,
                bootstrap::compressor_name(s.compressor), bootstrap::digester_name(s.digester),
                s.explicit_uid_gid ? "yes" : "no", s.has_xattr ? "yes" : "no");
  out += line;
  if (s.version == 6) {
    std::snprintf(line, sizeof line, "  Root nid:         %" PRIu64 "\n  Meta blkaddr:     %u\n", s.root_nid,
                  s.meta_blkaddr);
    out += line;
  }
  out += "Blobs (" + std::to_string(image.blobs().size()) + "):\n";
  for (const auto& b : image.blobs()) {
    std::snprintf(line, sizeof line,
                  "  [%u] %s\n      chunks %u, compressed %" PRIu64 " B, uncompressed %" PRIu64
                  " B, %s/%s, features %s\n",
                  b.index, escape_bytes(b.id).c_str(), b.chunk_count, b.compressed_size, b.uncompressed_size,
                  bootstrap::compressor_name(b.compressor), bootstrap::digester_name(b.digester),
                  hex(b.features).c_str());
    out += line;
  }
  out += "Prefetch (" + std::to_string(ins.prefetch_paths.size()) + "):\n";
  for (const auto& p : ins.prefetch_paths) out += "  " + escape_bytes(p) + "\n";
  out += "Tree:\n" + ins.tree_text;
  const ImageStats& st = ins.stats;
  std::snprintf(line, sizeof line,
                "Statistics:\n  Entries %" PRIu64 " (inodes %" PRIu64 "): %" PRIu64 " dirs, %" PRIu64
                " files (%" PRIu64 " hardlinks), %" PRIu64 " symlinks, %" PRIu64 " char, %" PRIu64
                " block, %" PRIu64 " fifos, %" PRIu64 " sockets\n  File bytes %" PRIu64 ", chunk refs %" PRIu64
                ", unique chunks %" PRIu64 ", xattrs %" PRIu64 "\n",
                st.entries, st.inodes, st.dirs, st.files, st.hardlinks, st.symlinks, st.char_devices,
                st.block_devices, st.fifos, st.sockets, st.file_bytes, st.chunk_refs, st.unique_chunks, st.xattrs);
  out += line;
  return out;
}

std::string check_report_json(const CheckReport& report, const std::string& bootstrap_path,
                              const std::string& version) {
  nlohmann::json blobs = nlohmann::json::array();
  for (const auto& b : report.blobs) blobs.push_back(json_safe(b.id));
  nlohmann::json out = {{"version", version},
                        {"bootstrap", json_safe(bootstrap_path)},
                        {"blobs", std::move(blobs)},
                        {"fs_version", std::to_string(report.super.version)},
                        {"compressor", bootstrap::compressor_name(report.super.compressor)},
                        {"digester", bootstrap::digester_name(report.super.digester)},
                        {"blobs_checked", report.blobs_checked},
                        {"chunks_verified", report.chunks_verified},
                        {"bytes_verified", report.bytes_verified},
                        {"stats", stats_json(report.stats)}};
  return out.dump(2) + "\n";
}

Result<std::string> inspect_json(const bootstrap::Image& image, const std::string& bootstrap_path,
                                 std::string_view request) {
  if (request != "" && request != "stats" && request != "blobs" && request != "prefetch" && request != "tree")
    return Status::invalid("unknown inspect request '" + std::string(request) +
                           "' (expected stats, blobs, prefetch or tree)");
  const bool need_walk = request != "blobs";
  Inspection ins;
  if (need_walk) {
    NYDUS_ASSIGN(ins, inspect(image, request == "" || request == "tree", false));
  }
  nlohmann::json blobs = nlohmann::json::array();
  for (const auto& b : image.blobs()) blobs.push_back(blob_json(b));
  nlohmann::json prefetch = nlohmann::json::array();
  for (const auto& p : ins.prefetch_paths) prefetch.push_back(json_safe(p));
  nlohmann::json out;
  if (request == "stats") {
    out = {{"inodes_count", image.super().inodes_count}, {"stats", stats_json(ins.stats)}};
  } else if (request == "blobs") {
    out = std::move(blobs);
  } else if (request == "prefetch") {
    out = std::move(prefetch);
  } else if (request == "tree") {
    out = std::move(ins.tree);
  } else {
    out = {{"bootstrap", json_safe(bootstrap_path)},
           {"superblock", super_json(image.super())},
           {"blobs", std::move(blobs)},
           {"prefetch", std::move(prefetch)},
           {"tree", std::move(ins.tree)},
           {"stats", stats_json(ins.stats)}};
  }
  return out.dump(2) + "\n";
}

}  // namespace nydus::builder
