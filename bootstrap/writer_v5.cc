// RAFS v5 bootstrap writer (rafs-format.md §3, §6).
//
// Works on a flat table of slots, one per inode table index, in five steps:
//   1. number the entries the way nydus-image does: root 1; a directory's
//      children get consecutive indexes in name order, then its
//      subdirectories are numbered the same way, depth first;
//   2. resolve hardlink groups (every name keeps its own slot and record;
//      they share the i_ino of the group's lowest index);
//   3. derive and validate every record's fields from the tree;
//   4. compute inode digests bottom-up: children always have larger
//      indexes than their directory, so one descending sweep suffices;
//   5. place the records in DFS pre-order after the tables and serialize
//      everything into one zero-filled buffer, so all padding is zero.
// The output depends only on the tree's contents and the arguments (no
// clocks, no hash-map iteration order), which makes builds repeatable.
#include <sys/stat.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "bootstrap/rafs_v5.h"
#include "bootstrap/writer.h"
#include "bootstrap/writer_v5_internal.h"
#include "builder/tree.h"
#include "common/digest.h"
#include "common/log.h"
#include "common/bits.h"
#include "common/text.h"
#include "bootstrap/rafs_super_flags.h"

namespace nydus::bootstrap {
namespace {

using builder::Node;

constexpr uint64_t kSuperSize = 8192;
constexpr uint64_t kInodeRecordSize = 128;
constexpr uint64_t kChunkRecordSize = 80;
constexpr uint64_t kExtBlobEntrySize = 64;
// nydusd maps at most 2 GiB of metadata; inode table entries hold offset>>3
// in a u32, which this bound keeps far from overflowing.
constexpr uint64_t kMaxBootstrapSize = uint64_t{2} << 30;
constexpr uint32_t kMinChunkSize = 0x1000;
constexpr uint32_t kMaxChunkSize = 0x100'0000;
constexpr uint32_t kMaxChunkBytes = 0x100'0000;
constexpr size_t kMaxNameLen = 255;
constexpr size_t kMaxSymlinkLen = 0xffff;  // i_symlink_size is a u16
constexpr size_t kMaxXattrNameLen = 255;
constexpr size_t kMaxXattrValueLen = 0x10000;  // what nydus-image accepts (RafsXAttrs::add)
// Sizes and chunk offsets end up in off_t arithmetic in every reader.
constexpr uint64_t kMaxOffset = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
// nydus-image's RAFS_V5_VIRTUAL_ENTRY_SIZE: per-child bytes of the pseudo
// directory size (§3.10), so i_size does not depend on the source fs.
constexpr uint64_t kVirtualDirEntrySize = 8;

// BlobFeatures (§1.5) valid on disk; 0x8000_0000 is nydus-internal.
constexpr uint32_t kKnownBlobFeatures = 0x0000'0fff | 0x7000'0000;

// Inode flags (§1.7). nydus-image sets SYMLINK on every symlink; HARDLINK
// is left clear like its directory builder does (readers decide
// hardlink-ness from nlink).
constexpr uint64_t kInodeSymlink = 0x1;
constexpr uint64_t kInodeXattr = 0x4;

// BlobChunkFlags (§1.6).
constexpr uint32_t kChunkCompressed = 0x01;
constexpr uint32_t kChunkHasCrc32 = 0x10;

// Prefixes nydus accepts (RAFS_XATTR_PREFIXES); others make nydus-image
// fail, so an image carrying them could not have come from it.
constexpr std::string_view kXattrPrefixes[] = {
    "user.", "security.", "trusted.", "system.posix_acl_access", "system.posix_acl_default",
};

std::string dec(uint64_t v) { return std::to_string(v); }

std::span<const uint8_t> as_bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

uint32_t file_type(uint32_t mode) { return mode & S_IFMT; }

bool is_known_type(uint32_t mode) {
  switch (file_type(mode)) {
    case S_IFREG: case S_IFDIR: case S_IFLNK: case S_IFCHR:
    case S_IFBLK: case S_IFIFO: case S_IFSOCK:
      return true;
    default:
      return false;
  }
}

// Same rule as the reader: the id becomes a cache file name and a URL path
// segment, and NUL separates blob table entries.
bool valid_blob_id(std::string_view id) {
  if (id.empty() || id.size() > 255 || id == "." || id == "..") return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return c > 0x20 && c < 0x7f && c != '/' && c != '\\'; });
}

bool valid_name(std::string_view name) {
  return !name.empty() && name.size() <= kMaxNameLen && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\0", 2)) == std::string_view::npos;
}

// Little-endian stores into the zero-filled output buffer.
class Out {
 public:
  explicit Out(uint64_t size) : bytes_(size, 0) {}
  void u16(uint64_t off, uint16_t v) { store(off, v); }
  void u32(uint64_t off, uint32_t v) { store(off, v); }
  void u64(uint64_t off, uint64_t v) { store(off, v); }
  void raw(uint64_t off, std::span<const uint8_t> b) {
    if (!b.empty()) std::memcpy(bytes_.data() + off, b.data(), b.size());
  }
  std::vector<uint8_t> take() { return std::move(bytes_); }

 private:
  template <typename T>
  void store(uint64_t off, T v) {
    for (size_t i = 0; i < sizeof(T); ++i) bytes_[off + i] = static_cast<uint8_t>(v >> (8 * i));
  }
  std::vector<uint8_t> bytes_;
};

// One inode table index.
struct Slot {
  Node* node = nullptr;         // this directory entry: name and parent
  const Node* attrs = nullptr;  // attributes and content: the hardlink group's first name, else node
  uint32_t parent = 0;          // index of the directory listing this entry; 0 for the root
  uint32_t ino = 0;             // i_ino
  uint32_t child_index = 0;     // directories only
  uint32_t child_count = 0;     // directory: children; regular file: chunk records
  uint32_t subdirs = 0;
  uint32_t nlink = 1;
  uint64_t size = 0;
  uint64_t xattr_size = 0;      // Σ pair sizes (§3.8); 0 when the inode has none
  uint64_t offset = 0;          // absolute offset of the record
  Digest digest{};
};

class V5Writer {
 public:
  V5Writer(Node& root, const std::vector<BlobInfo>& blobs, const WriterOptions& options)
      : root_(root), blobs_(blobs), options_(options) {}

  Result<std::vector<uint8_t>> write();

 private:
  Status check_options() const;
  Status check_blobs() const;
  Status assign_indexes();
  Status resolve_hardlinks();
  Status derive_fields();
  Status check_xattrs(uint32_t index, const Node& a, uint64_t* total) const;
  Status check_chunks(uint32_t index, const Node& a) const;
  void compute_digests();
  void resolve_prefetch();
  Status place_records();
  std::vector<uint8_t> serialize() const;
  void serialize_record(Out& out, const Slot& s) const;

  uint64_t record_size(const Slot& s) const;
  uint32_t type_of(const Slot& s) const { return file_type(s.attrs->mode); }
  std::string path_of(uint32_t index) const;
  Status bad(uint32_t index, const std::string& what) const {
    return Status::invalid("write_rafs_v5: " + path_of(index) + ": " + what);
  }
  static Status bad(const std::string& what) { return Status::invalid("write_rafs_v5: " + what); }

  Node& root_;
  const std::vector<BlobInfo>& blobs_;
  const WriterOptions& options_;

  std::vector<Slot> slots_;  // [0] unused; [i] = inode table index i
  std::vector<uint32_t> prefetch_;
  uint64_t inodes_count_ = 0;
  bool has_xattr_ = false;

  uint64_t prefetch_offset_ = 0;
  uint64_t blob_offset_ = 0;
  uint64_t blob_table_size_ = 0;
  uint64_t ext_offset_ = 0;
  uint64_t total_size_ = 0;
};

Result<std::vector<uint8_t>> V5Writer::write() {
  NYDUS_TRY(check_options());
  NYDUS_TRY(check_blobs());
  NYDUS_TRY(assign_indexes());
  NYDUS_TRY(resolve_hardlinks());
  NYDUS_TRY(derive_fields());
  compute_digests();
  resolve_prefetch();
  NYDUS_TRY(place_records());
  std::vector<uint8_t> bytes = serialize();
  // Only a successful write touches the tree.
  for (size_t i = 1; i < slots_.size(); ++i) slots_[i].node->ino = slots_[i].ino;
  return bytes;
}

Status V5Writer::check_options() const {
  const uint32_t cs = options_.chunk_size;
  if (cs < kMinChunkSize || cs > kMaxChunkSize || (cs & (cs - 1)) != 0)
    return bad("chunk size " + hex(cs) + " is not a power of two in 4 KiB..16 MiB");
  switch (options_.compressor) {
    case Compressor::kNone: case Compressor::kLz4Block: case Compressor::kGzip: case Compressor::kZstd:
      break;
    default:
      return bad("unknown compressor " + dec(static_cast<uint32_t>(options_.compressor)));
  }
  if (options_.digester != Digester::kBlake3 && options_.digester != Digester::kSha256)
    return bad("unknown digester " + dec(static_cast<uint32_t>(options_.digester)));
  return Status::Ok();
}

Status V5Writer::check_blobs() const {
  if (blobs_.size() > std::numeric_limits<uint32_t>::max()) return bad("too many blobs");
  for (size_t i = 0; i < blobs_.size(); ++i) {
    const BlobInfo& b = blobs_[i];
    const std::string where = "blob " + dec(i) + " (" + quoted(b.id) + "): ";
    if (!valid_blob_id(b.id)) return bad(where + "invalid blob id");
    if (b.features & ~kKnownBlobFeatures)
      return bad(where + "features " + hex(b.features) + " have bits not valid on disk");
    // v5 blobs have no chunk size of their own: the superblock's applies.
    if (b.chunk_size != 0 && b.chunk_size != options_.chunk_size)
      return bad(where + "chunk size " + hex(b.chunk_size) + " differs from the image chunk size " +
                 hex(options_.chunk_size));
  }
  return Status::Ok();
}

std::string V5Writer::path_of(uint32_t index) const {
  if (index == 1) return "\"/\"";
  std::vector<std::string_view> names;
  for (uint32_t i = index; i > 1 && names.size() < slots_.size(); i = slots_[i].parent)
    names.push_back(slots_[i].node->name);
  std::string path;
  for (auto it = names.rbegin(); it != names.rend(); ++it) path += "/" + std::string(*it);
  return quoted(path);
}

Status V5Writer::assign_indexes() {
  if (!root_.is_dir()) return bad("root has mode " + hex(root_.mode) + ", not a directory");
  slots_.assign(2, Slot{});
  slots_[1].node = &root_;
  std::vector<uint32_t> stack{1};
  std::vector<Node*> children;
  while (!stack.empty()) {
    const uint32_t d = stack.back();
    stack.pop_back();
    children.clear();
    for (const auto& c : slots_[d].node->children) {
      if (!c) return bad(d, "has a null child");
      children.push_back(c.get());
    }
    // Sorted by raw bytes: std::string compares through char_traits<char>,
    // i.e. as unsigned char, which is memcmp order — what readers bisect.
    std::sort(children.begin(), children.end(), [](const Node* a, const Node* b) { return a->name < b->name; });
    if (slots_.size() - 1 + children.size() > std::numeric_limits<uint32_t>::max() - 1)
      return bad("more than 2^32 - 2 entries");
    const auto first = static_cast<uint32_t>(slots_.size());
    uint32_t subdirs = 0;
    for (size_t k = 0; k < children.size(); ++k) {
      Node* c = children[k];
      if (!valid_name(c->name)) return bad(d, "child has an invalid name " + quoted(c->name));
      if (k > 0 && children[k - 1]->name == c->name) return bad(d, "two children named " + quoted(c->name));
      if (!c->is_dir() && !c->children.empty())
        return bad(d, "non-directory child " + quoted(c->name) + " has children");
      Slot s;
      s.node = c;
      s.parent = d;
      slots_.push_back(s);
      if (c->is_dir()) ++subdirs;
    }
    // An empty directory still records the next free index, as nydus-image does.
    slots_[d].child_index = first;
    slots_[d].child_count = static_cast<uint32_t>(children.size());
    slots_[d].subdirs = subdirs;
    for (size_t k = children.size(); k-- > 0;)
      if (children[k]->is_dir()) stack.push_back(first + static_cast<uint32_t>(k));
  }
  return Status::Ok();
}

// Every name of a hardlinked regular file keeps its own record; all of them
// carry the i_ino of the group's lowest index (that is what nydus-image
// does: the first occurrence in numbering order, not the tree's pre-order)
// and the attributes and chunks of the tree's group leader.
Status V5Writer::resolve_hardlinks() {
  const size_t n = slots_.size() - 1;
  std::unordered_set<const Node*> regular;
  for (size_t i = 2; i <= n; ++i)
    if (slots_[i].node->is_reg()) regular.insert(slots_[i].node);

  struct Group {
    uint32_t first = 0;
    uint32_t count = 0;
  };
  std::unordered_map<const Node*, Group> groups;
  // Sources mark groups with hardlink_group and Tree::finalize() turns that
  // into hardlink_of; a group with two names lacking hardlink_of means
  // finalize() did not run, and writing them as two inodes would be wrong.
  std::unordered_map<uint64_t, uint32_t> group_first;
  for (uint32_t i = 2; i <= n; ++i) {
    const Node* node = slots_[i].node;
    if (!node->is_reg() || node->hardlink_of || node->hardlink_group == 0) continue;
    auto [it, inserted] = group_first.try_emplace(node->hardlink_group, i);
    if (!inserted)
      return bad(i, "shares hardlink group " + dec(node->hardlink_group) + " with " + path_of(it->second) +
                        " but neither has hardlink_of (Tree::finalize() not run?)");
  }
  for (uint32_t i = 1; i <= n; ++i) {
    Slot& s = slots_[i];
    const Node* node = s.node;
    s.attrs = node;
    s.ino = i;
    if (!node->is_reg()) {
      if (node->hardlink_of) return bad(i, "hardlink_of is set on a non-regular file");
      s.nlink = node->is_dir() ? 2 + s.subdirs : 1;
      ++inodes_count_;
      continue;
    }
    const Node* leader = node;
    for (size_t hops = 0; leader->hardlink_of; ++hops) {
      if (hops > n) return bad(i, "hardlink_of chain loops");
      leader = leader->hardlink_of;
    }
    if (!regular.count(leader))
      return bad(i, "hardlink_of leads to a node that is not a regular file of this tree");
    if (node->hardlink_group != 0 && leader->hardlink_group != 0 && node->hardlink_group != leader->hardlink_group)
      return bad(i, "hardlink_of and hardlink_group disagree");
    auto [it, inserted] = groups.try_emplace(leader, Group{i, 0});
    ++it->second.count;
    if (inserted) ++inodes_count_;
    s.attrs = leader;
    s.ino = it->second.first;
  }
  for (uint32_t i = 2; i <= n; ++i) {
    Slot& s = slots_[i];
    if (s.node->is_reg()) s.nlink = groups[s.attrs].count;
  }
  return Status::Ok();
}

Status V5Writer::derive_fields() {
  const size_t n = slots_.size() - 1;
  for (uint32_t i = 1; i <= n; ++i) {
    Slot& s = slots_[i];
    const Node& a = *s.attrs;
    if (a.mode > 0xffff || !is_known_type(a.mode)) return bad(i, "invalid mode " + hex(a.mode));
    if (a.mtime_nsec >= 1'000'000'000) return bad(i, "mtime nanoseconds " + dec(a.mtime_nsec) + " >= 10^9");
    switch (file_type(a.mode)) {
      case S_IFDIR: {
        uint64_t entries = 0;
        for (uint32_t c = s.child_index; c - s.child_index < s.child_count; ++c)
          entries += slots_[c].node->name.size() + kVirtualDirEntrySize;
        s.size = entries == 0 ? 4096 : round_up_4k(entries);
        break;
      }
      case S_IFREG:
        if (a.size > kMaxOffset) return bad(i, "size " + dec(a.size) + " is too large");
        if (a.chunks.size() > std::numeric_limits<uint32_t>::max()) return bad(i, "too many chunks");
        s.size = a.size;
        s.child_count = static_cast<uint32_t>(a.chunks.size());
        // A hardlink group shares one chunk list: check it once.
        if (s.ino == i) NYDUS_TRY(check_chunks(i, a));
        break;
      case S_IFLNK:
        if (a.symlink_target.empty()) return bad(i, "symlink has an empty target");
        if (a.symlink_target.size() > kMaxSymlinkLen)
          return bad(i, "symlink target of " + dec(a.symlink_target.size()) + " bytes exceeds 65535");
        if (a.symlink_target.find('\0') != std::string::npos) return bad(i, "symlink target contains a NUL byte");
        s.size = a.symlink_target.size();
        break;
      default:
        if (a.size > kMaxOffset) return bad(i, "size " + dec(a.size) + " is too large");
        s.size = a.size;
        break;
    }
    NYDUS_TRY(check_xattrs(i, a, &s.xattr_size));
    if (!a.xattrs.empty()) has_xattr_ = true;
  }
  return Status::Ok();
}

Status V5Writer::check_xattrs(uint32_t index, const Node& a, uint64_t* total) const {
  uint64_t sum = 0;
  std::unordered_set<std::string_view> seen;
  for (const Xattr& x : a.xattrs) {
    const std::string_view name = x.name;
    if (name.empty() || name.size() > kMaxXattrNameLen || name.find('\0') != std::string_view::npos)
      return bad(index, "invalid xattr name " + quoted(name));
    if (std::none_of(std::begin(kXattrPrefixes), std::end(kXattrPrefixes),
                     [&](std::string_view p) { return name.substr(0, p.size()) == p; }))
      return bad(index, "xattr " + quoted(name) + " has a prefix nydus does not support");
    if (x.value.size() > kMaxXattrValueLen)
      return bad(index, "xattr " + quoted(name) + " value of " + dec(x.value.size()) + " bytes exceeds 64 KiB");
    if (!seen.insert(name).second) return bad(index, "xattr " + quoted(name) + " appears twice");
    sum += 4 + name.size() + 1 + x.value.size();
  }
  *total = sum;
  return Status::Ok();
}

// The chunk list must be exactly what readers derive from the size: chunk k
// covers [k*cs, min(size, (k+1)*cs)). Sparse lists (HAS_HOLE) are refused:
// nydus-image never writes them and nydusd does not zero-fill the gaps.
Status V5Writer::check_chunks(uint32_t index, const Node& a) const {
  const uint64_t cs = options_.chunk_size;
  const uint64_t want = div_round_up(a.size, cs);
  if (a.chunks.size() != want)
    return bad(index, dec(a.chunks.size()) + " chunks but size " + dec(a.size) + " needs " + dec(want) +
                          " with chunk size " + dec(cs));
  for (size_t k = 0; k < a.chunks.size(); ++k) {
    const ChunkRef& c = a.chunks[k];
    auto chunk_bad = [&](const std::string& what) { return bad(index, "chunk " + dec(k) + ": " + what); };
    if (!c.located) return chunk_bad("has no compressed location (v5 records must carry one)");
    if (c.blob_index >= blobs_.size())
      return chunk_bad("blob index " + dec(c.blob_index) + ", image has " + dec(blobs_.size()) + " blobs");
    const BlobInfo& blob = blobs_[c.blob_index];
    const uint64_t file_offset = k * cs;
    if (c.file_offset != file_offset)
      return chunk_bad("file offset " + hex(c.file_offset) + " is not " + hex(file_offset));
    const uint64_t d_size = std::min<uint64_t>(cs, a.size - file_offset);
    if (c.uncompressed_size != d_size)
      return chunk_bad("uncompressed size " + dec(c.uncompressed_size) + " but the file needs " + dec(d_size));
    if (c.compressed_size == 0 || c.compressed_size > kMaxChunkBytes)
      return chunk_bad("compressed size " + dec(c.compressed_size) + " outside 1..16 MiB");
    if (!c.compressed && c.compressed_size != c.uncompressed_size)
      return chunk_bad("stored uncompressed but compressed size " + dec(c.compressed_size) +
                       " != uncompressed size " + dec(c.uncompressed_size));
    // A v5 image has one compressor, the superblock's, for every blob.
    if (c.compressed && (options_.compressor == Compressor::kNone || blob.compressor != options_.compressor))
      return chunk_bad(std::string("compressed with ") + compressor_name(blob.compressor) + " but the image says " +
                       compressor_name(options_.compressor));
    if (blob.chunk_count != 0 && c.chunk_index >= blob.chunk_count)
      return chunk_bad("chunk index " + dec(c.chunk_index) + ", blob has " + dec(blob.chunk_count) + " chunks");
    if (c.compressed_offset > kMaxOffset - c.compressed_size)
      return chunk_bad("compressed offset " + hex(c.compressed_offset) + " overflows");
    if (c.uncompressed_offset > kMaxOffset - c.uncompressed_size)
      return chunk_bad("uncompressed offset " + hex(c.uncompressed_offset) + " overflows");
  }
  return Status::Ok();
}

// §3.11. Descending index order visits every child before its directory.
void V5Writer::compute_digests() {
  const Digester algo = options_.digester;
  for (size_t i = slots_.size() - 1; i >= 1; --i) {
    Slot& s = slots_[i];
    const Node& a = *s.attrs;
    switch (type_of(s)) {
      case S_IFREG: {
        Hasher h(algo);
        for (const ChunkRef& c : a.chunks) h.update(c.digest);
        s.digest = h.finish();
        break;
      }
      case S_IFDIR: {
        Hasher h(algo);
        for (uint32_t c = s.child_index; c - s.child_index < s.child_count; ++c) h.update(slots_[c].digest);
        s.digest = h.finish();
        break;
      }
      case S_IFLNK:
        s.digest = digest(algo, as_bytes(a.symlink_target));
        break;
      default:
        s.digest = digest(algo, {});
        break;
    }
  }
}

// Paths that do not exist are skipped with a warning, like nydus-image's
// prefetch patterns that match nothing.
void V5Writer::resolve_prefetch() {
  std::unordered_set<uint32_t> listed;
  for (const std::string& path : options_.prefetch_paths) {
    uint32_t cur = 1;
    bool found = true;
    size_t pos = 0;
    while (found && pos < path.size()) {
      size_t end = path.find('/', pos);
      if (end == std::string::npos) end = path.size();
      const std::string_view part = std::string_view(path).substr(pos, end - pos);
      pos = end + 1;
      if (part.empty() || part == ".") continue;
      const Slot& dir = slots_[cur];
      if (type_of(dir) != S_IFDIR || part == "..") {
        found = false;
        break;
      }
      uint64_t lo = dir.child_index;
      uint64_t hi = uint64_t{dir.child_index} + dir.child_count;
      found = false;
      while (lo < hi) {
        const uint64_t mid = lo + (hi - lo) / 2;
        const int cmp = std::string_view(slots_[mid].node->name).compare(part);
        if (cmp == 0) {
          cur = static_cast<uint32_t>(mid);
          found = true;
          break;
        }
        if (cmp < 0) lo = mid + 1;
        else hi = mid;
      }
    }
    if (!found) {
      LOG_WARN("write_rafs_v5: prefetch path %s not found, skipped", quoted(path).c_str());
      continue;
    }
    const uint32_t ino = slots_[cur].ino;
    if (listed.insert(ino).second) prefetch_.push_back(ino);
  }
}

uint64_t V5Writer::record_size(const Slot& s) const {
  const Node& a = *s.attrs;
  const uint64_t name_len = s.parent == 0 ? 1 : s.node->name.size();
  uint64_t size = kInodeRecordSize + align8(name_len);
  const uint32_t type = type_of(s);
  if (type == S_IFLNK) size += align8(a.symlink_target.size());
  if (!a.xattrs.empty()) size += 8 + align8(s.xattr_size);
  if (type == S_IFREG) size += kChunkRecordSize * s.child_count;
  return size;
}

// §3.1: superblock, inode table, prefetch table, blob table, extended blob
// table, then the records in DFS pre-order (nydus-image's dump order).
Status V5Writer::place_records() {
  const uint64_t n = slots_.size() - 1;
  prefetch_offset_ = kSuperSize + align8(n * 4);
  blob_offset_ = prefetch_offset_ + align8(prefetch_.size() * 4);
  uint64_t blob_bytes = 0;
  for (const BlobInfo& b : blobs_) blob_bytes += 8 + b.id.size() + 1;
  blob_table_size_ = blobs_.empty() ? 0 : align8(blob_bytes - 1);  // no NUL after the last id
  ext_offset_ = blob_offset_ + blob_table_size_;
  uint64_t pos = ext_offset_ + kExtBlobEntrySize * blobs_.size();

  std::vector<uint32_t> stack{1};
  while (!stack.empty()) {
    const uint32_t i = stack.back();
    stack.pop_back();
    Slot& s = slots_[i];
    s.offset = pos;
    pos += record_size(s);
    if (pos > kMaxBootstrapSize)
      return bad("metadata exceeds 2 GiB (nydusd's limit) at entry " + path_of(i));
    if (type_of(s) == S_IFDIR)
      for (uint32_t k = s.child_count; k-- > 0;) stack.push_back(s.child_index + k);
  }
  total_size_ = pos;
  return Status::Ok();
}

std::vector<uint8_t> V5Writer::serialize() const {
  Out out(total_size_);
  const uint64_t n = slots_.size() - 1;

  // Superblock (§3.2).
  uint64_t flags = 0;
  switch (options_.compressor) {
    case Compressor::kNone: flags |= kFlagCompressionNone; break;
    case Compressor::kLz4Block: flags |= kFlagCompressionLz4; break;
    case Compressor::kGzip: flags |= kFlagCompressionGzip; break;
    case Compressor::kZstd: flags |= kFlagCompressionZstd; break;
  }
  flags |= options_.digester == Digester::kSha256 ? kFlagHashSha256 : kFlagHashBlake3;
  if (options_.explicit_uid_gid) flags |= kFlagExplicitUidGid;
  if (has_xattr_) flags |= kFlagHasXattr;
  out.u32(0, kRafsV5Magic);
  out.u32(4, kRafsV5Version);
  out.u32(8, static_cast<uint32_t>(kSuperSize));
  out.u32(12, options_.chunk_size);
  out.u64(16, flags);
  out.u64(24, inodes_count_);
  out.u64(32, kSuperSize);
  out.u64(40, prefetch_offset_);
  out.u64(48, blob_offset_);
  out.u32(56, static_cast<uint32_t>(n));
  out.u32(60, static_cast<uint32_t>(prefetch_.size()));
  out.u32(64, static_cast<uint32_t>(blob_table_size_));
  out.u32(68, static_cast<uint32_t>(blobs_.size()));
  out.u64(72, ext_offset_);

  // Inode table (§3.3): record offset >> 3 per index.
  for (uint64_t i = 1; i <= n; ++i) out.u32(kSuperSize + (i - 1) * 4, static_cast<uint32_t>(slots_[i].offset >> 3));

  // Prefetch table (§3.4).
  for (size_t k = 0; k < prefetch_.size(); ++k) out.u32(prefetch_offset_ + k * 4, prefetch_[k]);

  // Blob table (§3.5). BlobInfo carries no blob-level readahead range, so
  // it is 0/0 (only used with --prefetch-policy blob).
  uint64_t pos = blob_offset_;
  for (const BlobInfo& b : blobs_) {
    out.u32(pos, 0);
    out.u32(pos + 4, 0);
    out.raw(pos + 8, as_bytes(b.id));
    pos += 8 + b.id.size() + 1;
  }

  // Extended blob table (§3.6).
  for (size_t k = 0; k < blobs_.size(); ++k) {
    const BlobInfo& b = blobs_[k];
    const uint64_t e = ext_offset_ + k * kExtBlobEntrySize;
    out.u32(e, b.chunk_count);
    out.u32(e + 4, b.features);
    out.u64(e + 8, b.uncompressed_size);
    out.u64(e + 16, b.compressed_size);
  }

  for (uint64_t i = 1; i <= n; ++i) serialize_record(out, slots_[i]);
  return out.take();
}

// §3.7 record + tail (§3.8 xattrs, §3.9 chunks).
void V5Writer::serialize_record(Out& out, const Slot& s) const {
  const Node& a = *s.attrs;
  const uint64_t off = s.offset;
  const uint32_t type = type_of(s);
  const bool is_root = s.parent == 0;
  const std::string_view name = is_root ? std::string_view("/") : std::string_view(s.node->name);

  out.raw(off, s.digest);
  out.u64(off + 32, is_root ? 0 : slots_[s.parent].ino);
  out.u64(off + 40, s.ino);
  if (options_.explicit_uid_gid) {
    out.u32(off + 48, a.uid);
    out.u32(off + 52, a.gid);
  }
  out.u32(off + 60, a.mode);
  out.u64(off + 64, s.size);
  // i_blocks counts the xattr area too, as nydus-image does (a stable value
  // instead of the source filesystem's st_blocks).
  out.u64(off + 72, div_round_up(s.size + align8(s.xattr_size), 512));
  out.u64(off + 80, (type == S_IFLNK ? kInodeSymlink : 0) | (a.xattrs.empty() ? 0 : kInodeXattr));
  out.u32(off + 88, s.nlink);
  if (type == S_IFDIR) out.u32(off + 92, s.child_index);
  out.u32(off + 96, s.child_count);
  out.u16(off + 100, static_cast<uint16_t>(name.size()));
  if (type == S_IFLNK) out.u16(off + 102, static_cast<uint16_t>(a.symlink_target.size()));
  if (type == S_IFCHR || type == S_IFBLK) out.u32(off + 104, a.rdev);
  out.u32(off + 108, a.mtime_nsec);
  out.u64(off + 112, a.mtime);

  uint64_t p = off + kInodeRecordSize;
  out.raw(p, as_bytes(name));
  p += align8(name.size());
  if (type == S_IFLNK) {
    out.raw(p, as_bytes(a.symlink_target));
    p += align8(a.symlink_target.size());
  }
  if (!a.xattrs.empty()) {
    out.u64(p, s.xattr_size);
    uint64_t q = p + 8;
    for (const Xattr& x : a.xattrs) {
      out.u32(q, static_cast<uint32_t>(x.name.size() + 1 + x.value.size()));
      out.raw(q + 4, as_bytes(x.name));
      out.raw(q + 4 + x.name.size() + 1, as_bytes(x.value));
      q += 4 + x.name.size() + 1 + x.value.size();
    }
    p += 8 + align8(s.xattr_size);
  }
  if (type == S_IFREG) {
    for (const ChunkRef& c : a.chunks) {
      out.raw(p, c.digest);
      out.u32(p + 32, c.blob_index);
      uint32_t flags = 0;
      if (c.compressed) flags |= kChunkCompressed;
      if (c.has_crc32) flags |= kChunkHasCrc32;
      out.u32(p + 36, flags);
      out.u32(p + 40, c.compressed_size);
      out.u32(p + 44, c.uncompressed_size);
      out.u64(p + 48, c.compressed_offset);
      out.u64(p + 56, c.uncompressed_offset);
      out.u64(p + 64, c.file_offset);
      out.u32(p + 72, c.chunk_index);
      out.u32(p + 76, c.has_crc32 ? c.crc32 : 0);
      p += kChunkRecordSize;
    }
  }
}

}  // namespace

Result<std::vector<uint8_t>> write_rafs_v5_root(builder::Node& root, const std::vector<BlobInfo>& blobs,
                                                const WriterOptions& options) {
  return V5Writer(root, blobs, options).write();
}

Result<std::vector<uint8_t>> write_rafs_v5(builder::Tree& tree, const std::vector<BlobInfo>& blobs,
                                           const WriterOptions& options) {
  return write_rafs_v5_root(tree.root(), blobs, options);
}

}  // namespace nydus::bootstrap
