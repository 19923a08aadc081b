// RAFS v6 bootstrap writer (rafs-format.md §4, §6): an EROFS image whose
// regular files are CHUNK_BASED and point into the data blobs, which the
// kernel sees as extra devices.
//
// Layout (block size 4096):
//   0        1024 zero bytes, EROFS superblock at 1024, extended superblock
//            at 1152, device slots at 1408 (devt_slotoff 11)
//   4K*k     blob table (256 B per blob), prefetch table right after it
//   meta     meta_blkaddr: first block left empty so the root gets nid 128
//            (nid 0 would hide the root from readdir on some systems)
//            inodes in 32-byte slots, in upstream's order: a directory,
//            then its non-directory children, then its subdirectories
//            recursively. Each inode is followed by its inline xattrs and
//            either its inline data tail (FLAT_INLINE) or its 8-byte chunk
//            indexes (CHUNK_BASED).
//   data     full directory blocks and FLAT_PLAIN symlink blocks, 4K aligned
//   chunks   chunk table: 80-byte records sorted by digest, blob, chunk index
//   padding to a multiple of 4096
//
// Kernel constraints honoured (fs/erofs): an inode with its xattrs and
// inline tail never crosses a block boundary (the kernel refuses inline data
// that does); directory blocks hold dirents then names, nameoff < 4096, a
// new block starts when the next dirent+name would not fit; chunk indexes
// are 8-byte aligned after inode+xattrs; the device id in a chunk index is
// blob_index+1 in its low bits, masked by the kernel to the device count.
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <map>
#include <string_view>
#include <tuple>
#include <unordered_map>

#include "bootstrap/rafs_v6.h"
#include "bootstrap/writer.h"
#include "bootstrap/writer_v6_internal.h"
#include "builder/tree.h"
#include "common/log.h"
#include "common/bits.h"
#include "common/text.h"
#include "bootstrap/rafs_super_flags.h"

namespace nydus::bootstrap {
namespace {

using builder::Node;

constexpr uint64_t kBlockSize = 4096;
constexpr uint32_t kBlkszBits = 12;
constexpr uint64_t kMaxMetaSize = 2ull << 30;  // §1.10

constexpr uint64_t kExtSuperOffset = 1152;
constexpr uint64_t kDeviceTableOffset = 1408;
constexpr uint64_t kDeviceSlotSize = 128;
constexpr uint64_t kBlobEntrySize = 256;
constexpr uint64_t kChunkRecordSize = 80;
constexpr uint32_t kMaxBlobs = 254;

constexpr uint32_t kFeatureCompatRafsV6 = 0x4000'0000;
constexpr uint32_t kFeatureIncompatChunkedFile = 0x4;
constexpr uint32_t kFeatureIncompatDeviceTable = 0x8;

constexpr uint32_t kBlobAligned = 0x1;
constexpr uint32_t kBlobChunkInfoV2 = 0x4;
constexpr uint32_t kBlobInlinedChunkDigest = 0x20;
constexpr uint32_t kChunkCompressed = 0x01;
constexpr uint32_t kChunkHasCrc32 = 0x10;

constexpr uint64_t kInodeSlotSize = 32;
constexpr uint64_t kInodeSize = 64;  // always extended, as nydus-image
constexpr uint16_t kLayoutFlatPlain = 0;
constexpr uint16_t kLayoutFlatInline = 2;
constexpr uint16_t kLayoutChunkBased = 4;
constexpr uint32_t kChunkFormatIndexes = 0x20;
constexpr uint64_t kChunkIndexSize = 8;
constexpr uint32_t kNullBlkaddr = 0xFFFF'FFFF;
constexpr uint32_t kMaxChunkIndex = 0xFF'FFFF;  // 24 bits in the chunk index
constexpr uint64_t kDirentSize = 12;
constexpr size_t kMaxNameLen = 255;
constexpr size_t kMaxSymlinkLen = 4095;  // PATH_MAX - 1: the kernel NUL-terminates in one page
constexpr uint64_t kXattrHeaderSize = 12;
constexpr uint64_t kMaxXattrIcount = 0xFFFF;

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
uint64_t div_up(uint64_t v, uint64_t a) { return v / a + (v % a != 0); }
uint32_t log2_ceil(uint64_t v) { return v <= 1 ? 0 : 64 - static_cast<uint32_t>(std::countl_zero(v - 1)); }

void put16(std::vector<uint8_t>& b, uint64_t off, uint16_t v) { std::memcpy(&b[off], &v, 2); }
void put32(std::vector<uint8_t>& b, uint64_t off, uint32_t v) { std::memcpy(&b[off], &v, 4); }
void put64(std::vector<uint8_t>& b, uint64_t off, uint64_t v) { std::memcpy(&b[off], &v, 8); }
void put_bytes(std::vector<uint8_t>& b, uint64_t off, std::string_view s) {
  if (!s.empty()) std::memcpy(&b[off], s.data(), s.size());
}
static_assert(std::endian::native == std::endian::little, "the writer stores integers in host order");

uint8_t dirent_type(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return 1;
    case S_IFDIR: return 2;
    case S_IFCHR: return 3;
    case S_IFBLK: return 4;
    case S_IFIFO: return 5;
    case S_IFSOCK: return 6;
    case S_IFLNK: return 7;
    default: return 0;
  }
}

struct XattrPrefix {
  std::string_view prefix;
  uint8_t index;
  bool exact;  // the ACL names are whole attribute names, not prefixes
};
constexpr XattrPrefix kXattrPrefixes[] = {
    {"user.", 1, false},
    {"system.posix_acl_access", 2, true},
    {"system.posix_acl_default", 3, true},
    {"trusted.", 4, false},
    {"security.", 6, false},
};

struct Dirent {
  std::string_view name;
  uint32_t rec = 0;  // target inode record
};

struct Rec {
  Node* node = nullptr;   // attribute source (first name of a hardlink group)
  uint32_t parent = 0;    // record of the parent directory (root: itself)
  uint64_t index = 0;     // i_ino: upstream's inode index, informational
  uint32_t nlink = 1;
  uint32_t mode = 0;
  uint64_t size = 0;
  uint16_t layout = kLayoutFlatPlain;
  std::vector<uint8_t> xattrs;  // whole inline xattr area, empty if none
  uint64_t offset = 0;          // abs offset of the inode
  // FLAT_*: data blocks in the data region (FLAT_INLINE: only full blocks).
  uint64_t blocks = 0;
  uint64_t blkaddr = 0;
  // Directories: sorted entries incl. "." and "..", and the first entry of
  // each dirent block.
  std::vector<Dirent> dirents;
  std::vector<uint32_t> block_starts;
  // Regular files.
  uint64_t chunk_count = 0;
  uint32_t chunk_format = 0;
  std::vector<const ChunkRef*> chunk_slots;  // by chunk position; nullptr = hole

  uint32_t type() const { return mode & S_IFMT; }
  uint64_t body_size() const { return kInodeSize + xattrs.size(); }
};

class V6Writer {
 public:
  V6Writer(Node& root, const std::vector<BlobInfo>& blobs, const WriterOptions& options)
      : root_(root), blobs_(blobs), options_(options) {}

  Result<std::vector<uint8_t>> write();

 private:
  Status check_options() const;
  Status collect();
  Status prepare(Rec& r, const std::string& path);
  Status encode_xattrs(Rec& r, const std::string& path);
  Status prepare_dir(Rec& r, const std::string& path);
  Status prepare_file(Rec& r, const std::string& path);
  Status layout();
  Status build_chunk_table();
  Status resolve_prefetch();
  std::vector<uint8_t> emit();
  void emit_inode(std::vector<uint8_t>& out, const Rec& r) const;
  void emit_dir(std::vector<uint8_t>& out, const Rec& r) const;

  uint64_t nid(uint32_t rec) const { return (recs_[rec].offset - meta_base_) / kInodeSlotSize; }
  const std::string& path_of(uint32_t rec) const { return paths_[rec]; }

  Node& root_;
  const std::vector<BlobInfo>& blobs_;
  const WriterOptions& options_;

  std::vector<Rec> recs_;
  std::vector<std::string> paths_;            // per record, for messages
  std::vector<uint32_t> order_;               // layout order of records
  std::unordered_map<const Node*, uint32_t> rec_of_;  // every name -> its record
  std::vector<std::pair<Node*, uint32_t>> names_;     // every name and its record, for Node::ino
  uint64_t next_index_ = 1;
  bool has_xattr_ = false;

  uint64_t blob_table_offset_ = 0;
  uint64_t prefetch_offset_ = 0;
  std::vector<uint32_t> prefetch_;            // records
  uint64_t meta_base_ = 0;
  uint64_t chunk_table_offset_ = 0;
  std::vector<const ChunkRef*> chunk_table_;  // sorted records to emit
  std::vector<uint64_t> chunk_table_file_offset_;
  uint64_t total_size_ = 0;
};

Status V6Writer::check_options() const {
  const uint32_t cs = options_.chunk_size;
  if (cs < 4096 || cs > (16u << 20) || (cs & (cs - 1)) != 0)
    return Status::invalid("rafs v6 writer: chunk size " + std::to_string(cs) +
                           " is not a power of two in 4 KiB..16 MiB");
  if (static_cast<uint32_t>(options_.compressor) > 3) return Status::invalid("rafs v6 writer: unknown compressor");
  if (static_cast<uint32_t>(options_.digester) > 1) return Status::invalid("rafs v6 writer: unknown digester");
  if (!root_.is_dir()) return Status::invalid("rafs v6 writer: the root is not a directory");
  if (blobs_.size() > kMaxBlobs)
    return Status::invalid("rafs v6 writer: " + std::to_string(blobs_.size()) + " blobs (at most 254)");
  for (size_t i = 0; i < blobs_.size(); ++i) {
    const BlobInfo& b = blobs_[i];
    const std::string where = "rafs v6 writer: blob " + std::to_string(i) + " '" + escape_bytes(b.id) + "': ";
    bool hex = b.id.size() == 64 && std::all_of(b.id.begin(), b.id.end(), [](char c) {
                 return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
               });
    bool placeholder = b.id == std::string(64, 'x');
    if (!hex && !placeholder) return Status::invalid(where + "id is not 64 lowercase hex characters");
    for (size_t j = 0; j < i; ++j)
      if (blobs_[j].id == b.id) return Status::invalid(where + "appears twice in the blob table");
    if (b.chunk_size != cs)
      return Status::invalid(where + "chunk size " + std::to_string(b.chunk_size) + " differs from the image's " +
                             std::to_string(cs));
    if (!(b.features & kBlobAligned)) return Status::invalid(where + "lacks the ALIGNED feature RAFS v6 requires");
    if (b.uncompressed_size % kBlockSize != 0)
      return Status::invalid(where + "uncompressed size " + std::to_string(b.uncompressed_size) +
                             " is not a multiple of 4096");
    if (b.uncompressed_size / kBlockSize > UINT32_MAX)
      return Status::unsupported(where + "more than 2^32 blocks of uncompressed data");
    if (b.chunk_count > kMaxChunkIndex + 1)
      return Status::invalid(where + std::to_string(b.chunk_count) + " chunks (at most 2^24)");
    // nydusd and our reader cross-check the blob.meta size against the
    // chunk count; a blob written for RAFS v5 has no blob.meta at all.
    if (!(b.features & kBlobChunkInfoV2) && b.meta_ci_uncompressed_size != 16ull * b.chunk_count)
      return Status::invalid(where + "blob.meta holds " + std::to_string(b.meta_ci_uncompressed_size) +
                             " bytes for " + std::to_string(b.chunk_count) +
                             " chunks (a blob written for RAFS v5 cannot serve RAFS v6)");
  }
  return Status::Ok();
}

// Numbers every name (upstream's order: a directory's children get
// consecutive indexes, then its subdirectories are numbered recursively)
// and creates one record per inode: hardlinked regular files share the
// record of the group's first name.
Status V6Writer::collect() {
  recs_.push_back(Rec{});
  recs_[0].node = &root_;
  recs_[0].index = next_index_++;
  paths_.push_back("/");
  rec_of_.emplace(&root_, 0);
  names_.emplace_back(&root_, 0);

  std::vector<std::pair<Node*, Node*>> links;  // (name, first name of its group)
  std::vector<uint32_t> stack{0};
  while (!stack.empty()) {
    const uint32_t d = stack.back();
    stack.pop_back();
    order_.push_back(d);
    Node& dir = *recs_[d].node;
    const std::string dir_path = paths_[d] == "/" ? "" : paths_[d];
    std::vector<uint32_t> subdirs;
    for (auto& child : dir.children) {
      Node& c = *child;
      const std::string path = dir_path + "/" + escape_bytes(c.name);
      if (c.name.empty() || c.name.size() > kMaxNameLen || c.name == "." || c.name == ".." ||
          c.name.find('/') != std::string::npos || c.name.find('\0') != std::string::npos)
        return Status::invalid("rafs v6 writer: " + path + ": invalid name (" + std::to_string(c.name.size()) +
                               " bytes; must be 1..255 bytes without '/' or NUL, not '.' or '..')");
      if (!c.is_dir() && !c.children.empty())
        return Status::invalid("rafs v6 writer: " + path + ": a non-directory has children");
      const uint64_t index = next_index_++;
      if (c.is_reg() && c.hardlink_of != nullptr && c.hardlink_of != &c) {
        Node* first = c.hardlink_of;
        if (!first->is_reg() || first->hardlink_of != nullptr)
          return Status::invalid("rafs v6 writer: " + path +
                                 ": hardlink_of does not name the first name of a regular file group");
        links.emplace_back(&c, first);
        continue;
      }
      const uint32_t r = static_cast<uint32_t>(recs_.size());
      recs_.push_back(Rec{});
      recs_[r].node = &c;
      recs_[r].parent = d;
      recs_[r].index = index;
      paths_.push_back(path);
      rec_of_.emplace(&c, r);
      names_.emplace_back(&c, r);
      if (c.is_dir()) subdirs.push_back(r);
      else order_.push_back(r);
    }
    for (auto it = subdirs.rbegin(); it != subdirs.rend(); ++it) stack.push_back(*it);
  }

  for (auto [name, first] : links) {
    auto it = rec_of_.find(first);
    if (it == rec_of_.end())
      return Status::invalid("rafs v6 writer: a hardlink '" + escape_bytes(name->name) +
                             "' points at a file that is not in the tree");
    rec_of_.emplace(name, it->second);
    names_.emplace_back(name, it->second);
    ++recs_[it->second].nlink;
  }
  return Status::Ok();
}

Status V6Writer::encode_xattrs(Rec& r, const std::string& path) {
  const Node& n = *r.node;
  if (n.xattrs.empty()) return Status::Ok();
  // Sorted by full name so the output does not depend on source order.
  std::vector<const Xattr*> sorted;
  for (const auto& x : n.xattrs) sorted.push_back(&x);
  std::sort(sorted.begin(), sorted.end(), [](const Xattr* a, const Xattr* b) { return a->name < b->name; });
  std::vector<uint8_t> area(kXattrHeaderSize, 0);
  for (size_t i = 0; i < sorted.size(); ++i) {
    const Xattr& x = *sorted[i];
    const std::string where = "rafs v6 writer: " + path + ": xattr '" + escape_bytes(x.name) + "': ";
    if (i > 0 && sorted[i - 1]->name == x.name) return Status::invalid(where + "appears twice");
    const XattrPrefix* p = nullptr;
    for (const auto& cand : kXattrPrefixes) {
      bool match = cand.exact ? x.name == cand.prefix : x.name.starts_with(cand.prefix);
      if (match) {
        p = &cand;
        break;
      }
    }
    if (!p)
      return Status::unsupported(where + "only user., trusted., security. and system.posix_acl_{access,default} "
                                         "xattrs can be stored");
    std::string_view suffix = std::string_view(x.name).substr(p->prefix.size());
    if (!p->exact && suffix.empty()) return Status::invalid(where + "empty name after the prefix");
    if (x.name.size() > kMaxNameLen || suffix.find('\0') != std::string_view::npos)
      return Status::invalid(where + "name longer than 255 bytes or containing NUL");
    if (x.value.size() > 0xFFFF) return Status::invalid(where + "value larger than 65535 bytes");
    const size_t entry = 4 + suffix.size() + x.value.size();
    const size_t start = area.size();
    area.resize(start + align_up(entry, 4), 0);
    area[start] = static_cast<uint8_t>(suffix.size());
    area[start + 1] = p->index;
    put16(area, start + 2, static_cast<uint16_t>(x.value.size()));
    put_bytes(area, start + 4, suffix);
    put_bytes(area, start + 4 + suffix.size(), x.value);
  }
  if ((area.size() - kXattrHeaderSize) / 4 + 1 > kMaxXattrIcount)
    return Status::invalid("rafs v6 writer: " + path + ": xattrs take " + std::to_string(area.size()) +
                           " bytes, more than an inode can hold");
  r.xattrs = std::move(area);
  has_xattr_ = true;
  return Status::Ok();
}

Status V6Writer::prepare_dir(Rec& r, const std::string& path) {
  const uint32_t self = static_cast<uint32_t>(&r - recs_.data());
  r.dirents.reserve(r.node->children.size() + 2);
  r.dirents.push_back({".", self});
  r.dirents.push_back({"..", r.parent});
  for (const auto& c : r.node->children) r.dirents.push_back({c->name, rec_of_.at(c.get())});
  // All entries, "." and ".." included, in memcmp order (string_view
  // compares bytes as unsigned char).
  std::sort(r.dirents.begin(), r.dirents.end(), [](const Dirent& a, const Dirent& b) { return a.name < b.name; });
  for (size_t i = 1; i < r.dirents.size(); ++i) {
    if (r.dirents[i].name == r.dirents[i - 1].name)
      return Status::invalid("rafs v6 writer: " + path + ": two entries named '" +
                             escape_bytes(r.dirents[i].name) + "'");
  }
  // Split into blocks the way the kernel reads them back: a block ends when
  // the next dirent+name would not fit.
  uint64_t used = 0;
  r.block_starts.push_back(0);
  for (size_t i = 0; i < r.dirents.size(); ++i) {
    uint64_t len = kDirentSize + r.dirents[i].name.size();
    if (used + len > kBlockSize) {
      r.block_starts.push_back(static_cast<uint32_t>(i));
      used = 0;
    }
    used += len;
  }
  r.size = (r.block_starts.size() - 1) * kBlockSize + used;
  return Status::Ok();
}

Status V6Writer::prepare_file(Rec& r, const std::string& path) {
  const Node& n = *r.node;
  const uint64_t cs = options_.chunk_size;
  r.size = n.size;
  r.chunk_count = div_up(r.size, cs);
  const std::string where = "rafs v6 writer: " + path + ": ";
  if (r.chunk_count > kMaxMetaSize / kChunkIndexSize)
    return Status::unsupported(where + std::to_string(r.chunk_count) + " chunks do not fit a 2 GiB bootstrap");
  r.chunk_slots.assign(r.chunk_count, nullptr);
  for (const ChunkRef& c : n.chunks) {
    const std::string cwhere = where + "chunk at file offset " + std::to_string(c.file_offset) + ": ";
    if (c.file_offset % cs != 0 || c.file_offset / cs >= r.chunk_count)
      return Status::invalid(cwhere + "not at a chunk boundary inside the file (size " + std::to_string(r.size) +
                             ", chunk size " + std::to_string(cs) + ")");
    const uint64_t k = c.file_offset / cs;
    if (r.chunk_slots[k] != nullptr) return Status::invalid(cwhere + "given twice");
    const uint64_t expected = std::min<uint64_t>(cs, r.size - c.file_offset);
    if (c.uncompressed_size != expected)
      return Status::invalid(cwhere + "holds " + std::to_string(c.uncompressed_size) + " bytes, the file needs " +
                             std::to_string(expected));
    if (c.blob_index >= blobs_.size())
      return Status::invalid(cwhere + "blob index " + std::to_string(c.blob_index) + ", image has " +
                             std::to_string(blobs_.size()) + " blobs");
    if (c.chunk_index > kMaxChunkIndex) return Status::invalid(cwhere + "chunk index exceeds 2^24 - 1");
    if (c.uncompressed_offset % kBlockSize != 0 || c.uncompressed_offset / kBlockSize >= kNullBlkaddr)
      return Status::invalid(cwhere + "uncompressed offset " + std::to_string(c.uncompressed_offset) +
                             " is not a 4 KiB aligned block address below 2^32");
    if (c.located && (c.compressed_size == 0 || (!c.compressed && c.compressed_size != c.uncompressed_size)))
      return Status::invalid(cwhere + "compressed size " + std::to_string(c.compressed_size) +
                             " does not fit its uncompressed size");
    r.chunk_slots[k] = &c;
  }
  // Upstream's page-cache-sharing trick (§4.9): when the chunks are one
  // contiguous run in one blob, declare one chunk covering the whole file
  // so the kernel maps it as a single extent.
  uint32_t bits = std::countr_zero(options_.chunk_size);
  if (r.chunk_count > 1) {
    bool contiguous = true;
    const ChunkRef* first = r.chunk_slots[0];
    for (uint64_t k = 0; k < r.chunk_count && contiguous; ++k) {
      const ChunkRef* c = r.chunk_slots[k];
      contiguous = c && first && c->blob_index == first->blob_index &&
                   c->uncompressed_offset == first->uncompressed_offset + k * cs;
    }
    uint32_t whole = log2_ceil(r.size);
    if (contiguous && whole - kBlkszBits <= 31) bits = whole;
  }
  r.chunk_format = kChunkFormatIndexes | (bits - kBlkszBits);
  return Status::Ok();
}

Status V6Writer::prepare(Rec& r, const std::string& path) {
  const Node& n = *r.node;
  r.mode = n.mode;
  const std::string where = "rafs v6 writer: " + path + ": ";
  if ((r.mode & ~0xFFFFu) != 0 || dirent_type(r.mode) == 0)
    return Status::invalid(where + "mode " + std::to_string(r.mode) + " has no valid file type");
  if (n.mtime_nsec >= 1'000'000'000u) return Status::invalid(where + "mtime nanoseconds >= 10^9");
  NYDUS_TRY(encode_xattrs(r, path));
  switch (r.type()) {
    case S_IFDIR: {
      NYDUS_TRY(prepare_dir(r, path));
      uint32_t subdirs = 0;
      for (const auto& c : n.children) subdirs += c->is_dir();
      r.nlink = 2 + subdirs;
      break;
    }
    case S_IFLNK:
      if (n.symlink_target.empty() || n.symlink_target.size() > kMaxSymlinkLen ||
          n.symlink_target.find('\0') != std::string::npos)
        return Status::invalid(where + "symlink target of " + std::to_string(n.symlink_target.size()) +
                               " bytes (must be 1..4095 bytes without NUL)");
      r.size = n.symlink_target.size();
      break;
    case S_IFREG: NYDUS_TRY(prepare_file(r, path)); break;
    default: r.size = 0; break;
  }
  if (r.type() == S_IFDIR || r.type() == S_IFLNK) {
    const uint64_t tail = r.size % kBlockSize;
    if (tail != 0 && r.body_size() + tail <= kBlockSize) {
      r.layout = kLayoutFlatInline;
      r.blocks = r.size / kBlockSize;
    } else {
      r.layout = kLayoutFlatPlain;
      r.blocks = div_up(r.size, kBlockSize);
    }
  } else if (r.type() == S_IFREG) {
    r.layout = kLayoutChunkBased;
  } else {
    r.layout = kLayoutFlatPlain;
  }
  return Status::Ok();
}

Status V6Writer::resolve_prefetch() {
  for (const std::string& p : options_.prefetch_paths) {
    const Node* n = &root_;
    std::string_view rest(p);
    while (n && !rest.empty()) {
      size_t slash = rest.find('/');
      std::string_view part = rest.substr(0, slash);
      rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
      if (part.empty() || part == ".") continue;
      const auto& kids = n->children;
      auto it = std::lower_bound(kids.begin(), kids.end(), part,
                                 [](const std::unique_ptr<Node>& a, std::string_view b) { return a->name < b; });
      if (it == kids.end() || (*it)->name != part) {
        // Unsorted children (a tree that skipped finalize()): linear search.
        it = std::find_if(kids.begin(), kids.end(), [&](const std::unique_ptr<Node>& a) { return a->name == part; });
      }
      n = it == kids.end() ? nullptr : it->get();
    }
    if (!n) {
      LOG_WARN("rafs v6 writer: prefetch path %s is not in the image, skipped", escape_bytes(p).c_str());
      continue;
    }
    uint32_t r = rec_of_.at(n);
    if (std::find(prefetch_.begin(), prefetch_.end(), r) == prefetch_.end()) prefetch_.push_back(r);
  }
  return Status::Ok();
}

Status V6Writer::layout() {
  const uint64_t devslot_end = kDeviceTableOffset + kDeviceSlotSize * blobs_.size();
  blob_table_offset_ = align_up(devslot_end, kBlockSize);
  prefetch_offset_ = blob_table_offset_ + kBlobEntrySize * blobs_.size();
  const uint64_t tables_end = prefetch_offset_ + 4 * prefetch_.size();
  meta_base_ = align_up(tables_end, kBlockSize);

  // Inodes. The first meta block stays empty so the root is nid 128.
  uint64_t cursor = meta_base_ + kBlockSize;
  for (uint32_t ri : order_) {
    Rec& r = recs_[ri];
    uint64_t head = r.body_size(), total = head;
    if (r.layout == kLayoutFlatInline) {
      head += r.size % kBlockSize;
      total = head;
    } else if (r.layout == kLayoutChunkBased) {
      total = align_up(head, kChunkIndexSize) + kChunkIndexSize * r.chunk_count;
    }
    // Keep inode, xattrs and inline tail inside one block.
    if (head <= kBlockSize && cursor % kBlockSize + head > kBlockSize) cursor = align_up(cursor, kBlockSize);
    r.offset = cursor;
    cursor = align_up(cursor + total, kInodeSlotSize);
    if (cursor > kMaxMetaSize) return Status::unsupported("rafs v6 writer: metadata exceeds 2 GiB");
  }
  if (nid(0) > UINT16_MAX) return Status::invalid("rafs v6 writer: root nid does not fit 16 bits");

  // Full directory blocks and plain symlink blocks.
  cursor = align_up(cursor, kBlockSize);
  for (uint32_t ri : order_) {
    Rec& r = recs_[ri];
    if (r.blocks == 0) continue;
    r.blkaddr = cursor / kBlockSize;
    cursor += r.blocks * kBlockSize;
    if (cursor > kMaxMetaSize) return Status::unsupported("rafs v6 writer: metadata exceeds 2 GiB");
  }

  chunk_table_offset_ = align_up(cursor, kBlockSize);
  total_size_ = align_up(chunk_table_offset_ + kChunkRecordSize * chunk_table_.size(), kBlockSize);
  if (total_size_ > kMaxMetaSize) return Status::unsupported("rafs v6 writer: metadata exceeds 2 GiB");
  return Status::Ok();
}

// One 80-byte record per distinct chunk (blob, chunk index), sorted like
// upstream's BTreeMap over (digest, blob index); the chunk index breaks ties
// between equal digests stored twice in a blob. file_offset is the first
// user's, in layout order.
Status V6Writer::build_chunk_table() {
  std::map<std::pair<uint32_t, uint32_t>, std::pair<const ChunkRef*, uint64_t>> by_key;
  for (uint32_t ri : order_) {
    const Rec& r = recs_[ri];
    for (const ChunkRef* c : r.chunk_slots) {
      if (c == nullptr || !c->located) continue;
      auto [it, inserted] = by_key.try_emplace({c->blob_index, c->chunk_index}, c, c->file_offset);
      if (inserted) continue;
      const ChunkRef* o = it->second.first;
      if (o->digest != c->digest || o->compressed_offset != c->compressed_offset ||
          o->compressed_size != c->compressed_size || o->uncompressed_offset != c->uncompressed_offset ||
          o->uncompressed_size != c->uncompressed_size || o->compressed != c->compressed ||
          o->has_crc32 != c->has_crc32 || o->crc32 != c->crc32)
        return Status::invalid("rafs v6 writer: " + path_of(ri) + ": blob " + std::to_string(c->blob_index) +
                               " chunk " + std::to_string(c->chunk_index) +
                               " is described differently by two files");
    }
  }
  std::vector<std::pair<const ChunkRef*, uint64_t>> all;
  all.reserve(by_key.size());
  for (const auto& [key, v] : by_key) all.push_back(v);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return std::tie(a.first->digest, a.first->blob_index, a.first->chunk_index) <
           std::tie(b.first->digest, b.first->blob_index, b.first->chunk_index);
  });
  for (const auto& [c, file_offset] : all) {
    chunk_table_.push_back(c);
    chunk_table_file_offset_.push_back(file_offset);
  }
  return Status::Ok();
}

void V6Writer::emit_inode(std::vector<uint8_t>& out, const Rec& r) const {
  const Node& n = *r.node;
  const uint64_t o = r.offset;
  uint32_t i_u = 0;
  switch (r.type()) {
    case S_IFREG: i_u = r.chunk_format; break;
    case S_IFCHR:
    case S_IFBLK: i_u = n.rdev; break;
    case S_IFDIR:
    case S_IFLNK:
      // With only an inline tail there is no data block; point at the
      // inode's own block like upstream.
      i_u = static_cast<uint32_t>(r.blocks ? r.blkaddr : r.offset / kBlockSize);
      break;
    default: break;
  }
  put16(out, o, static_cast<uint16_t>(1 | (r.layout << 1)));  // extended
  put16(out, o + 2, r.xattrs.empty() ? 0 : static_cast<uint16_t>((r.xattrs.size() - kXattrHeaderSize) / 4 + 1));
  put16(out, o + 4, static_cast<uint16_t>(r.mode));
  put64(out, o + 8, r.size);
  put32(out, o + 16, i_u);
  put32(out, o + 20, static_cast<uint32_t>(r.index));
  put32(out, o + 24, options_.explicit_uid_gid ? n.uid : 0);
  put32(out, o + 28, options_.explicit_uid_gid ? n.gid : 0);
  put64(out, o + 32, n.mtime);
  put32(out, o + 40, n.mtime_nsec);
  put32(out, o + 44, r.nlink);
  if (!r.xattrs.empty()) std::memcpy(&out[o + kInodeSize], r.xattrs.data(), r.xattrs.size());

  const uint64_t body_end = o + r.body_size();
  if (r.type() == S_IFLNK) {
    uint64_t at = r.layout == kLayoutFlatInline ? body_end : r.blkaddr * kBlockSize;
    put_bytes(out, at, n.symlink_target);
  } else if (r.type() == S_IFREG) {
    uint64_t at = align_up(body_end, kChunkIndexSize);
    for (const ChunkRef* c : r.chunk_slots) {
      if (c == nullptr) {
        put16(out, at, 0);
        put16(out, at + 2, 0);
        put32(out, at + 4, kNullBlkaddr);
      } else {
        put16(out, at, static_cast<uint16_t>(c->chunk_index & 0xFFFF));
        put16(out, at + 2, static_cast<uint16_t>(((c->chunk_index >> 16) << 8) | (c->blob_index + 1)));
        put32(out, at + 4, static_cast<uint32_t>(c->uncompressed_offset / kBlockSize));
      }
      at += kChunkIndexSize;
    }
  } else if (r.type() == S_IFDIR) {
    emit_dir(out, r);
  }
}

void V6Writer::emit_dir(std::vector<uint8_t>& out, const Rec& r) const {
  const size_t nblocks = r.block_starts.size();
  for (size_t b = 0; b < nblocks; ++b) {
    const size_t first = r.block_starts[b];
    const size_t end = b + 1 < nblocks ? r.block_starts[b + 1] : r.dirents.size();
    // Full blocks live in the data region; a FLAT_INLINE tail follows the
    // inode and its xattrs.
    const uint64_t base = b < r.blocks ? (r.blkaddr + b) * kBlockSize : r.offset + r.body_size();
    uint64_t nameoff = kDirentSize * (end - first);
    for (size_t i = first; i < end; ++i) {
      const Dirent& d = r.dirents[i];
      const Rec& target = recs_[d.rec];
      const uint64_t e = base + kDirentSize * (i - first);
      put64(out, e, nid(d.rec));
      put16(out, e + 8, static_cast<uint16_t>(nameoff));
      out[e + 10] = dirent_type(target.mode);
      put_bytes(out, base + nameoff, d.name);
      nameoff += d.name.size();
    }
  }
}

std::vector<uint8_t> V6Writer::emit() {
  std::vector<uint8_t> out(total_size_, 0);

  // Device slots, mapped as if the image were flattened onto one disk.
  uint64_t pos = total_size_;
  uint64_t total_blocks = 0;
  for (size_t i = 0; i < blobs_.size(); ++i) {
    const BlobInfo& b = blobs_[i];
    const uint64_t slot = kDeviceTableOffset + i * kDeviceSlotSize;
    const uint64_t blocks = b.uncompressed_size / kBlockSize;
    const uint64_t mapped = align_up(pos, kV6DeviceAlignment) / kBlockSize;
    pos = (mapped + blocks) * kBlockSize;
    total_blocks += blocks;
    put_bytes(out, slot, b.id);
    put32(out, slot + 64, static_cast<uint32_t>(blocks));
    put32(out, slot + 68, static_cast<uint32_t>(mapped));
  }

  // EROFS superblock.
  const uint64_t sb = kErofsSuperOffset;
  put32(out, sb, kErofsMagic);
  put32(out, sb + 8, kFeatureCompatRafsV6);
  out[sb + 12] = kBlkszBits;
  put16(out, sb + 14, static_cast<uint16_t>(nid(0)));
  put64(out, sb + 16, next_index_ - 1);
  put32(out, sb + 36, static_cast<uint32_t>(total_blocks));
  put32(out, sb + 40, static_cast<uint32_t>(meta_base_ / kBlockSize));
  put32(out, sb + 80, kFeatureIncompatChunkedFile | kFeatureIncompatDeviceTable);
  put16(out, sb + 86, static_cast<uint16_t>(blobs_.size()));
  put16(out, sb + 88, static_cast<uint16_t>(kDeviceTableOffset / kDeviceSlotSize));

  // Extended superblock.
  uint64_t flags = 0;
  switch (options_.compressor) {
    case Compressor::kNone: flags |= kFlagCompressionNone; break;
    case Compressor::kLz4Block: flags |= kFlagCompressionLz4; break;
    case Compressor::kGzip: flags |= kFlagCompressionGzip; break;
    case Compressor::kZstd: flags |= kFlagCompressionZstd; break;
  }
  flags |= options_.digester == Digester::kBlake3 ? kFlagHashBlake3 : kFlagHashSha256;
  if (options_.explicit_uid_gid) flags |= kFlagExplicitUidGid;
  if (has_xattr_) flags |= kFlagHasXattr;
  // Upstream: set unless some blob lacks the digest array.
  if (std::all_of(blobs_.begin(), blobs_.end(),
                  [](const BlobInfo& b) { return (b.features & kBlobInlinedChunkDigest) != 0; }))
    flags |= kFlagInlinedChunkDigest;
  const uint64_t ext = kExtSuperOffset;
  put64(out, ext, flags);
  put64(out, ext + 8, blob_table_offset_);
  put32(out, ext + 16, static_cast<uint32_t>(kBlobEntrySize * blobs_.size()));
  put32(out, ext + 20, options_.chunk_size);
  put64(out, ext + 24, chunk_table_offset_);
  put64(out, ext + 32, kChunkRecordSize * chunk_table_.size());
  if (!prefetch_.empty()) {
    put64(out, ext + 40, prefetch_offset_);
    put32(out, ext + 48, static_cast<uint32_t>(4 * prefetch_.size()));
  }

  // Blob table.
  for (size_t i = 0; i < blobs_.size(); ++i) {
    const BlobInfo& b = blobs_[i];
    const uint64_t e = blob_table_offset_ + i * kBlobEntrySize;
    put_bytes(out, e, b.id);
    put32(out, e + 64, static_cast<uint32_t>(i));
    put32(out, e + 68, b.chunk_size);
    put32(out, e + 72, b.chunk_count);
    put32(out, e + 76, static_cast<uint32_t>(b.compressor));
    put32(out, e + 80, static_cast<uint32_t>(b.digester));
    put32(out, e + 84, b.features);
    put64(out, e + 88, b.compressed_size);
    put64(out, e + 96, b.uncompressed_size);
    put32(out, e + 104, b.toc_size);
    put32(out, e + 108, static_cast<uint32_t>(b.meta_ci_compressor));
    put64(out, e + 112, b.meta_ci_offset);
    put64(out, e + 120, b.meta_ci_compressed_size);
    put64(out, e + 128, b.meta_ci_uncompressed_size);
    std::memcpy(&out[e + 136], b.toc_digest.data(), 32);
  }

  for (size_t i = 0; i < prefetch_.size(); ++i)
    put32(out, prefetch_offset_ + 4 * i, static_cast<uint32_t>(nid(prefetch_[i])));

  for (uint32_t ri : order_) emit_inode(out, recs_[ri]);

  for (size_t i = 0; i < chunk_table_.size(); ++i) {
    const ChunkRef& c = *chunk_table_[i];
    const uint64_t rec = chunk_table_offset_ + i * kChunkRecordSize;
    std::memcpy(&out[rec], c.digest.data(), 32);
    put32(out, rec + 32, c.blob_index);
    put32(out, rec + 36, (c.compressed ? kChunkCompressed : 0) | (c.has_crc32 ? kChunkHasCrc32 : 0));
    put32(out, rec + 40, c.compressed_size);
    put32(out, rec + 44, c.uncompressed_size);
    put64(out, rec + 48, c.compressed_offset);
    put64(out, rec + 56, c.uncompressed_offset);
    put64(out, rec + 64, chunk_table_file_offset_[i]);
    put32(out, rec + 72, c.chunk_index);
    put32(out, rec + 76, c.has_crc32 ? c.crc32 : 0);
  }
  return out;
}

Result<std::vector<uint8_t>> V6Writer::write() {
  NYDUS_TRY(check_options());
  NYDUS_TRY(collect());
  for (uint32_t ri : order_) NYDUS_TRY(prepare(recs_[ri], paths_[ri]));
  NYDUS_TRY(resolve_prefetch());
  NYDUS_TRY(build_chunk_table());
  NYDUS_TRY(layout());
  uint64_t total_blocks = 0;
  for (const auto& b : blobs_) total_blocks += b.uncompressed_size / kBlockSize;
  if (total_blocks > UINT32_MAX)
    return Status::unsupported("rafs v6 writer: more than 2^32 blocks of blob data in one image");
  // Mapped block addresses of the device slots must fit 32 bits.
  uint64_t pos = total_size_;
  for (const auto& b : blobs_) pos = align_up(pos, kV6DeviceAlignment) + b.uncompressed_size;
  if (pos / kBlockSize > UINT32_MAX)
    return Status::unsupported("rafs v6 writer: device block addresses exceed 2^32");

  std::vector<uint8_t> out = emit();
  for (auto [node, ri] : names_) node->ino = nid(ri);
  return out;
}

}  // namespace

Result<std::vector<uint8_t>> write_rafs_v6_root(builder::Node& root, const std::vector<BlobInfo>& blobs,
                                                const WriterOptions& options) {
  V6Writer w(root, blobs, options);
  return w.write();
}

Result<std::vector<uint8_t>> write_rafs_v6(builder::Tree& tree, const std::vector<BlobInfo>& blobs,
                                           const WriterOptions& options) {
  return write_rafs_v6_root(tree.root(), blobs, options);
}

}  // namespace nydus::bootstrap
