// RAFS v6 (EROFS-compatible) bootstrap reader; format in rafs-format.md §4.
//
// Strategy: open() validates the whole file once (superblocks, tables, every
// inode reachable from the root, every dirent block, xattr area, symlink and
// chunk index) and keeps only a sorted nid index (32 bytes per inode) plus a
// chunk slot index (16 bytes per chunk-table record). Accessors re-decode
// from the owned bytes with the same checked decoders, so a structural
// failure after open would be a reader bug, not a crash.
//
// Open is linear for images laid out as upstream's builder does: the chunk
// table (digest order) is bucketed by chunk index instead of sorted, every
// chunk index is checked against those compact slots rather than the 80-byte
// records (no random access per chunk), and the tree is walked in inode
// layout order so that the nid index needs a sortedness check, not a sort.
// Other layouts are accepted and cost an O(n log n) sort.
#include "bootstrap/rafs_v6.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cinttypes>
#include <compare>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bootstrap/le.h"
#include "bootstrap/rafs_v6_format.h"
#include "common/bits.h"
#include "common/text.h"
#include "bootstrap/rafs_super_flags.h"

namespace nydus::bootstrap {
namespace {

using le::in_bounds;
using le::load_u16;
using le::load_u32;
using le::load_u64;
using le::load_u8;

constexpr uint64_t kBlockSize = 4096;
constexpr uint8_t kBlkszBits = 12;
constexpr uint64_t kMaxMetaSize = 2ull << 30;  // §1.10: RAFS metadata <= 2 GiB

// EROFS superblock (§4.2) and extended superblock (§4.3).
constexpr uint32_t kFeatureCompatRafsV6 = 0x40000000;
constexpr uint32_t kFeatureIncompatChunkedFile = 0x4;
constexpr uint32_t kFeatureIncompatDeviceTable = 0x8;
constexpr uint64_t kExtSuperOffset = 1152;
constexpr uint64_t kExtSuperSize = 256;
constexpr uint64_t kDeviceSlotSize = 128;
constexpr uint64_t kDeviceTableOffset = 1408;  // devt_slotoff 11
constexpr uint64_t kBlobEntrySize = 256;
constexpr uint64_t kChunkRecordSize = 80;
constexpr uint32_t kMaxBlobs = 254;  // §1.10: index stored +1 in 8 bits

// RafsSuperFlags (§1.4) beyond bootstrap/rafs_super_flags.h.
constexpr uint64_t kFlagEncryptionNone = 0x01000000;
constexpr uint64_t kFlagEncryptionAes128Xts = 0x02000000;
constexpr uint64_t kFlagPreservedCompat = 0xFC000000;
constexpr uint64_t kKnownSuperFlags =
    kFlagCompressionNone | kFlagCompressionLz4 | kFlagHashBlake3 | kFlagHashSha256 | kFlagExplicitUidGid |
    kFlagHasXattr | kFlagCompressionGzip | kFlagCompressionZstd | kFlagInlinedChunkDigest | kFlagTarfsMode |
    kFlagEncryptionNone | kFlagEncryptionAes128Xts | kFlagPreservedCompat;

// Inodes (§4.6).
constexpr uint64_t kInodeSlotSize = 32;
constexpr uint32_t kCompactInodeSize = 32;
constexpr uint32_t kExtendedInodeSize = 64;
constexpr uint32_t kLayoutFlatPlain = 0;
constexpr uint32_t kLayoutFlatInline = 2;
constexpr uint32_t kLayoutChunkBased = 4;
constexpr uint32_t kChunkFormatIndexes = 0x20;
constexpr uint32_t kChunkFormatBitsMask = 0x1f;
constexpr uint32_t kNullBlkaddr = 0xFFFFFFFF;
constexpr uint64_t kChunkIndexSize = 8;
constexpr uint64_t kDirentSize = 12;
constexpr size_t kMaxNameLen = 255;
constexpr uint64_t kMaxSymlinkSize = 4096;
constexpr uint64_t kXattrHeaderSize = 12;
constexpr size_t kXattrNameMax = 255;

bool is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
uint32_t log2_exact(uint64_t v) { return static_cast<uint32_t>(__builtin_ctzll(v)); }
// ceil(log2(v)) for v >= 1.
uint32_t log2_ceil(uint64_t v) { return v <= 1 ? 0 : 64 - static_cast<uint32_t>(__builtin_clzll(v - 1)); }

// Dirent file types (§1.9) <-> S_IF* bits.
uint32_t dirent_type_to_mode(uint8_t ft) {
  switch (ft) {
    case 1: return S_IFREG;
    case 2: return S_IFDIR;
    case 3: return S_IFCHR;
    case 4: return S_IFBLK;
    case 5: return S_IFIFO;
    case 6: return S_IFSOCK;
    case 7: return S_IFLNK;
    default: return 0;
  }
}

bool valid_file_type(uint32_t type) {
  switch (type) {
    case S_IFREG:
    case S_IFDIR:
    case S_IFLNK:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFIFO:
    case S_IFSOCK: return true;
    default: return false;
  }
}

const char* type_name(uint32_t type) {
  switch (type) {
    case S_IFREG: return "regular file";
    case S_IFDIR: return "directory";
    case S_IFLNK: return "symlink";
    case S_IFCHR: return "char device";
    case S_IFBLK: return "block device";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    default: return "unknown";
  }
}

// Inline xattr name prefixes by name index (§1.9); index 5 (lustre) and
// long-prefix indexes are not produced by nydus and refused.
const char* xattr_prefix(uint8_t index) {
  switch (index) {
    case 1: return "user.";
    case 2: return "system.posix_acl_access";
    case 3: return "system.posix_acl_default";
    case 4: return "trusted.";
    case 6: return "security.";
    default: return nullptr;
  }
}

// Blob ids become cache file names and registry URL components: only 64
// lowercase hex characters, or the inline-meta placeholder "x"*64 (§5.6).
bool valid_blob_id(std::span<const uint8_t> id) {
  if (id.size() != 64) return false;
  bool all_x = std::all_of(id.begin(), id.end(), [](uint8_t c) { return c == 'x'; });
  if (all_x) return true;
  return std::all_of(id.begin(), id.end(),
                     [](uint8_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// One decoded, structurally checked inode. All ranges named here were
// checked against the file at decode time.
struct InodeView {
  uint64_t nid = 0;
  uint64_t offset = 0;  // abs
  uint32_t inode_size = 0;
  uint32_t layout = 0;
  uint32_t mode = 0;
  uint32_t nlink = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t rdev = 0;
  uint32_t i_u = 0;
  uint64_t size = 0;
  uint64_t mtime = 0;
  uint32_t mtime_nsec = 0;
  uint64_t xattr_offset = 0;  // abs; xattr_size bytes
  uint32_t xattr_size = 0;
  uint64_t nblocks = 0;      // flat layouts: data blocks incl. inline tail
  uint64_t tail_offset = 0;  // FLAT_INLINE: abs offset of the last block's bytes
  uint64_t chunk_array = 0;  // CHUNK_BASED: abs offset of the index array
  uint64_t chunk_count = 0;

  uint32_t type() const { return mode & S_IFMT; }
};

// One dirent block (§4.8), checked by parse_dir_block().
struct DirBlock {
  std::span<const uint8_t> bytes;
  uint32_t count = 0;

  uint64_t nid(uint32_t i) const { return load_u64(bytes, i * kDirentSize); }
  uint8_t file_type(uint32_t i) const { return load_u8(bytes, i * kDirentSize + 10); }
  // Offsets are clamped to the block, so even an unchecked view cannot read
  // outside it; on a checked block the clamps never trigger.
  std::string_view name(uint32_t i) const {
    size_t start = std::min<size_t>(load_u16(bytes, i * kDirentSize + 8), bytes.size());
    size_t end = i + 1 < count ? load_u16(bytes, (i + 1) * kDirentSize + 8) : bytes.size();
    end = std::clamp(end, start, bytes.size());
    auto p = reinterpret_cast<const char*>(bytes.data()) + start;
    size_t len = end - start;
    // Only the last name of a block may be followed by zero padding.
    if (i + 1 == count) len = strnlen(p, len);
    return {p, len};
  }
};

// Validates the dirent headers and name offsets of one block. On success
// every DirBlock accessor stays inside `bytes`.
Result<DirBlock> parse_dir_block(std::span<const uint8_t> bytes) {
  if (bytes.size() < kDirentSize)
    return Status::invalid("block of " + std::to_string(bytes.size()) + " bytes holds no dirent");
  uint32_t nameoff0 = load_u16(bytes, 8);
  if (nameoff0 < kDirentSize || nameoff0 % kDirentSize != 0 || nameoff0 >= bytes.size())
    return Status::invalid("first nameoff " + std::to_string(nameoff0) +
                           " is not a multiple of 12 inside the block");
  DirBlock b{bytes, static_cast<uint32_t>(nameoff0 / kDirentSize)};
  uint32_t prev = nameoff0;
  for (uint32_t i = 1; i < b.count; ++i) {
    uint32_t off = load_u16(bytes, i * kDirentSize + 8);
    if (off <= prev || off >= bytes.size())
      return Status::invalid("dirent " + std::to_string(i) + " nameoff " + std::to_string(off) +
                             " is not increasing inside the block");
    prev = off;
  }
  for (uint32_t i = 0; i < b.count; ++i) {
    std::string_view n = b.name(i);
    if (n.empty()) return Status::invalid("dirent " + std::to_string(i) + " has an empty name");
    if (n.size() > kMaxNameLen)
      return Status::invalid("dirent " + std::to_string(i) + " name is longer than 255 bytes");
    if (n.find('\0') != std::string_view::npos || n.find('/') != std::string_view::npos)
      return Status::invalid("dirent " + std::to_string(i) + " name contains NUL or '/'");
  }
  return b;
}

// A block that parse_dir_block() accepted at open: only the entry count is
// recomputed (count * 12 <= nameoff0 <= size keeps the headers in bounds).
DirBlock view_dir_block(std::span<const uint8_t> bytes) {
  DirBlock b{bytes, 0};
  if (bytes.size() >= kDirentSize)
    b.count = static_cast<uint32_t>(std::min<uint64_t>(load_u16(bytes, 8), bytes.size()) / kDirentSize);
  return b;
}

struct InodeRec {
  uint64_t nid = 0;
  uint64_t parent = 0;  // directories: nid of ".."; others: unused
  uint32_t type = 0;    // S_IF* bits
  uint32_t nlink = 0;
  uint32_t refs = 0;  // dirents naming this inode (open-time nlink check)
};

// What the chunk checks need from one chunk-table record, copied out at
// open. Upstream sorts the table by digest, i.e. randomly with respect to
// the files that use it: checking every file's chunk indexes against the
// 80-byte records directly costs a cache miss per chunk, while the slots of
// a dense blob sit in chunk index order, the order files reference them.
struct ChunkSlot {
  uint64_t uncompressed_offset = 0;
  uint32_t uncompressed_size = 0;
  uint32_t record = 0;  // 1 + position in the chunk table; 0: no record
};

struct KeyedChunkSlot {
  uint64_t key = 0;  // blob_index << 32 | chunk index
  ChunkSlot slot;
};

// A checked chunk index entry (§4.9).
struct ChunkIndexEntry {
  uint32_t blob_index = 0;
  uint32_t chunk_index = 0;
  uint32_t blkaddr = 0;
  uint64_t file_offset = 0;
  uint32_t size = 0;                // bytes of the file this chunk holds
  const ChunkSlot* slot = nullptr;  // nullptr: not in the chunk table
  bool hole = false;                // null block address; other fields unset
};

class RafsV6Image final : public Image {
 public:
  RafsV6Image(FileBytes file, std::string name) : file_(std::move(file)), name_(std::move(name)) {}

  Status load();

  const SuperInfo& super() const override { return super_; }
  const std::vector<BlobInfo>& blobs() const override { return blobs_; }
  const std::vector<Ino>& prefetch_table() const override { return prefetch_; }
  Ino root() const override { return super_.root_nid; }
  Result<InodeAttr> inode(Ino ino) const override;
  Result<Ino> parent(Ino dir) const override;
  Result<Ino> lookup(Ino dir, std::string_view name) const override;
  Status read_dir(Ino dir, uint64_t cookie, const DirVisitor& fn) const override;
  Result<std::string> read_link(Ino ino) const override;
  Result<std::vector<Xattr>> xattrs(Ino ino) const override;
  Result<std::vector<ChunkRef>> chunks(Ino ino, uint64_t offset, uint64_t len) const override;

 private:
  std::span<const uint8_t> bytes() const { return file_.bytes(); }
  Status bad(const std::string& what) const { return Status::invalid("bootstrap " + name_ + ": " + what); }
  Status unsupported(const std::string& what) const {
    return Status::unsupported("bootstrap " + name_ + ": " + what);
  }
  // Prefixes a Status from a context-free helper with "bootstrap <name>: <where>".
  Status in(const std::string& where, const Status& s) const {
    return s.with_context("bootstrap " + name_ + ": " + where);
  }

  Status load_super();
  Status load_blobs(uint64_t devslot_end);
  Status load_chunk_table(uint64_t devslot_end);
  Status load_prefetch(uint64_t devslot_end, std::vector<uint64_t>* nids);
  Status walk_tree();

  Result<InodeView> decode_inode(uint64_t nid) const;
  // Open-time checks of an inode's xattrs, symlink target and chunk
  // indexes; allocates nothing for inodes without xattrs.
  Status check_inode_content(const InodeView& v) const;
  // Block k of a flat-layout inode's data (the last one may be short).
  std::span<const uint8_t> flat_block(const InodeView& v, uint64_t k) const;
  // Checks the xattr area; appends the entries to *out unless it is null.
  Status scan_xattrs(const InodeView& v, std::vector<Xattr>* out) const;
  Result<std::vector<Xattr>> parse_xattrs(const InodeView& v) const;
  Status check_symlink(const InodeView& v) const;
  Result<std::string> symlink_target(const InodeView& v) const;
  Result<DirBlock> dir_block(const InodeView& v, uint64_t k) const;
  // Decodes and checks chunk index entry k of a regular file against the
  // blob table and the chunk slots (never the chunk table records).
  Status check_chunk(const InodeView& v, uint64_t k, ChunkIndexEntry* out) const;
  // Decodes chunk index entry k of a regular file; *hole when unmapped.
  Status resolve_chunk(const InodeView& v, uint64_t k, ChunkRef* out, bool* hole) const;
  const ChunkSlot* find_chunk(uint32_t blob, uint32_t ci) const;

  // A reachable inode, or kNotFound.
  Result<const InodeRec*> rec(Ino ino) const;
  Result<InodeView> view_of(Ino ino) const;

  FileBytes file_;
  std::string name_;
  SuperInfo super_;
  std::vector<BlobInfo> blobs_;
  std::vector<Ino> prefetch_;
  uint64_t meta_base_ = 0;
  uint64_t chunk_size_ = 0;
  uint64_t chunk_table_offset_ = 0;
  uint64_t chunk_table_size_ = 0;
  uint16_t extra_devices_ = 0;
  // Per blob, indexed by chunk index, for blobs whose chunk indexes are
  // dense (normally 0..n-1); empty for the others, whose slots are in
  // sparse_slots_, sorted by key and unique.
  std::vector<std::vector<ChunkSlot>> dense_slots_;
  std::vector<KeyedChunkSlot> sparse_slots_;
  uint64_t inos_hint_ = 0;              // superblock inode count (untrusted)
  std::vector<InodeRec> inodes_;        // sorted by nid
  // Set once open() validated every structure: accessors then skip the
  // per-name re-validation of dirent blocks (the bytes are immutable).
  bool checked_ = false;
};

// ---------------------------------------------------------------------------
// Superblocks and tables

Status RafsV6Image::load() {
  NYDUS_TRY(load_super());
  uint64_t devslot_end = kDeviceTableOffset + kDeviceSlotSize * extra_devices_;
  NYDUS_TRY(load_blobs(devslot_end));
  NYDUS_TRY(load_chunk_table(devslot_end));
  std::vector<uint64_t> prefetch_nids;
  NYDUS_TRY(load_prefetch(devslot_end, &prefetch_nids));
  NYDUS_TRY(walk_tree());
  for (size_t i = 0; i < prefetch_nids.size(); ++i) {
    if (!rec(prefetch_nids[i]).ok())
      return bad("prefetch table: entry " + std::to_string(i) + " names nid " +
                 std::to_string(prefetch_nids[i]) + ", which is not an inode of the tree");
  }
  prefetch_.assign(prefetch_nids.begin(), prefetch_nids.end());
  checked_ = true;
  return Status::Ok();
}

Status RafsV6Image::load_super() {
  auto b = bytes();
  uint64_t size = b.size();
  if (size > kMaxMetaSize) return bad("file size " + std::to_string(size) + " exceeds 2 GiB");
  if (size < kBlockSize || size % kBlockSize != 0)
    return bad("file size " + std::to_string(size) + " is not a non-zero multiple of 4096");
  // size >= 4096 covers the superblock, extended superblock and slot 11.

  const uint64_t sb = kErofsSuperOffset;
  if (load_u32(b, sb) != kErofsMagic) return bad("superblock: bad EROFS magic");
  if (load_u32(b, sb + 4) != 0) return bad("superblock: checksum must be 0");
  uint32_t compat = load_u32(b, sb + 8);
  if (!(compat & kFeatureCompatRafsV6))
    return bad("superblock: feature_compat " + hex(compat) + " lacks RAFS_V6 (0x40000000)");
  uint8_t blkszbits = load_u8(b, sb + 12);
  if (blkszbits == 9) return unsupported("superblock: 512-byte blocks (tarfs image) are not supported");
  if (blkszbits != kBlkszBits)
    return bad("superblock: blkszbits " + std::to_string(blkszbits) + " (expected 12)");
  if (load_u8(b, sb + 13) != 0) return bad("superblock: sb_extslots must be 0");
  uint16_t root_nid = load_u16(b, sb + 14);
  inos_hint_ = load_u64(b, sb + 16);
  if (inos_hint_ == 0) return bad("superblock: inos is 0");
  uint32_t meta_blkaddr = load_u32(b, sb + 40);
  if (load_u32(b, sb + 44) != 0)
    return unsupported("superblock: shared xattr area (xattr_blkaddr != 0) is not supported");
  uint32_t incompat = load_u32(b, sb + 80);
  if (incompat != (kFeatureIncompatChunkedFile | kFeatureIncompatDeviceTable))
    return bad("superblock: feature_incompat " + hex(incompat) +
               " (expected exactly CHUNKED_FILE|DEVICE_TABLE 0xc)");
  if (load_u16(b, sb + 84) != 0) return bad("superblock: compression field u must be 0");
  extra_devices_ = load_u16(b, sb + 86);
  uint16_t devt_slotoff = load_u16(b, sb + 88);
  if (devt_slotoff * kDeviceSlotSize != kDeviceTableOffset)
    return bad("superblock: devt_slotoff " + std::to_string(devt_slotoff) + " (expected 11)");
  if (!in_bounds(size, kDeviceTableOffset, kDeviceSlotSize * extra_devices_))
    return bad("superblock: " + std::to_string(extra_devices_) +
               " device slots run past the end of the file");
  meta_base_ = uint64_t{meta_blkaddr} * kBlockSize;
  if (meta_base_ >= size)
    return bad("superblock: meta_blkaddr " + std::to_string(meta_blkaddr) + " is past the end of the file");

  const uint64_t ext = kExtSuperOffset;
  uint64_t flags = load_u64(b, ext);
  if (flags & ~kKnownSuperFlags) return bad("extended superblock: unknown flags in " + hex(flags));
  if (flags & kFlagTarfsMode) return unsupported("extended superblock: TARFS_MODE images are not supported");
  if (flags & kFlagEncryptionAes128Xts)
    return unsupported("extended superblock: encrypted images (ENCRYPTION_ASE_128_XTS) are not supported");
  uint64_t comp_bits = flags & (kFlagCompressionNone | kFlagCompressionLz4 | kFlagCompressionGzip | kFlagCompressionZstd);
  if (std::popcount(comp_bits) != 1)
    return bad("extended superblock: flags " + hex(flags) + " must name exactly one compressor");
  uint64_t hash_bits = flags & (kFlagHashBlake3 | kFlagHashSha256);
  if (std::popcount(hash_bits) != 1)
    return bad("extended superblock: flags " + hex(flags) + " must name exactly one digester");
  uint32_t chunk_size = load_u32(b, ext + 20);
  if (!is_pow2(chunk_size) || chunk_size < v6::kMinChunkSize || chunk_size > v6::kMaxChunkSize)
    return bad("extended superblock: chunk size " + hex(chunk_size) +
               " is not a power of two in 4 KiB..16 MiB");
  chunk_size_ = chunk_size;

  super_.version = 6;
  super_.flags = flags;
  super_.chunk_size = chunk_size;
  super_.compressor = comp_bits == kFlagCompressionNone   ? Compressor::kNone
                      : comp_bits == kFlagCompressionLz4  ? Compressor::kLz4Block
                      : comp_bits == kFlagCompressionGzip ? Compressor::kGzip
                                                       : Compressor::kZstd;
  super_.digester = hash_bits == kFlagHashBlake3 ? Digester::kBlake3 : Digester::kSha256;
  super_.explicit_uid_gid = flags & kFlagExplicitUidGid;
  super_.has_xattr = flags & kFlagHasXattr;
  super_.root_nid = root_nid;
  super_.meta_blkaddr = meta_blkaddr;
  return Status::Ok();
}

Status RafsV6Image::load_blobs(uint64_t devslot_end) {
  auto b = bytes();
  const uint64_t ext = kExtSuperOffset;
  uint64_t table_off = load_u64(b, ext + 8);
  uint32_t table_size = load_u32(b, ext + 16);
  if (table_size % kBlobEntrySize != 0)
    return bad("blob table: size " + std::to_string(table_size) + " is not a multiple of 256");
  uint64_t count = table_size / kBlobEntrySize;
  if (count != extra_devices_)
    return bad("blob table: " + std::to_string(count) + " entries but superblock has " +
               std::to_string(extra_devices_) + " devices");
  if (count > kMaxBlobs) return bad("blob table: " + std::to_string(count) + " blobs (at most 254)");
  if (count == 0) return Status::Ok();
  if (table_off % kBlockSize != 0 || table_off < kBlockSize || table_off < devslot_end ||
      !in_bounds(b.size(), table_off, table_size))
    return bad("blob table: offset " + hex(table_off) + " size " + hex(table_size) +
               " is not 4K aligned after the device table inside the file");

  blobs_.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    const uint64_t e = table_off + i * kBlobEntrySize;
    auto where = [&] { return "blob table entry " + std::to_string(i) + ": "; };
    auto id = b.subspan(e, 64);
    if (!valid_blob_id(id)) return bad(where() + "blob id is not 64 lowercase hex characters");
    const uint64_t slot = kDeviceTableOffset + i * kDeviceSlotSize;
    if (std::memcmp(b.data() + slot, id.data(), 64) != 0)
      return bad("device slot " + std::to_string(i) + ": tag differs from the blob id");
    BlobInfo info;
    info.index = load_u32(b, e + 64);
    if (info.index != i) return bad(where() + "blob_index " + std::to_string(info.index) + " != position");
    info.id.assign(reinterpret_cast<const char*>(id.data()), id.size());
    for (const auto& prev : blobs_)
      if (prev.id == info.id) return bad(where() + "duplicate blob id " + info.id);
    info.chunk_size = load_u32(b, e + 68);
    if (info.chunk_size != chunk_size_)
      return bad(where() + "chunk size " + hex(info.chunk_size) + " differs from the image's " +
                 hex(chunk_size_));
    info.chunk_count = load_u32(b, e + 72);
    if (info.chunk_count > v6::kMaxChunksPerBlob)
      return bad(where() + "chunk count " + std::to_string(info.chunk_count) + " exceeds 2^24");
    uint32_t comp = load_u32(b, e + 76), digest = load_u32(b, e + 80), ci_comp = load_u32(b, e + 108);
    if (!v6::compressor_from_id(comp, &info.compressor))
      return bad(where() + "unknown compression algorithm " + std::to_string(comp));
    if (!v6::digester_from_id(digest, &info.digester))
      return bad(where() + "unknown digest algorithm " + std::to_string(digest));
    if (!v6::compressor_from_id(ci_comp, &info.meta_ci_compressor))
      return bad(where() + "unknown ci compressor " + std::to_string(ci_comp));
    info.features = load_u32(b, e + 84);
    if (!v6::blob_features_valid(info.features))
      return bad(where() + "unknown blob features in " + hex(info.features));
    uint32_t bit = 0;
    if (const char* f = v6::unsupported_blob_feature(info.features, &bit))
      return unsupported(where() + "blob feature " + f + " (" + hex(bit) + ") is not supported");
    if (!(info.features & v6::kBlobAligned)) return bad(where() + "ALIGNED feature is required");
    uint32_t cipher = load_u32(b, e + 216);
    if (cipher != 0) return bad(where() + "cipher " + std::to_string(cipher) + " set on an unencrypted blob");
    info.compressed_size = load_u64(b, e + 88);
    info.uncompressed_size = load_u64(b, e + 96);
    if (info.compressed_size > v6::kMaxBlobCompressedSize)
      return bad(where() + "compressed size " + hex(info.compressed_size) + " exceeds 2^40");
    if (info.uncompressed_size > v6::kMaxBlobUncompressedSize)
      return bad(where() + "uncompressed size " + hex(info.uncompressed_size) + " exceeds 2^44");
    info.toc_size = load_u32(b, e + 104);
    info.meta_ci_offset = load_u64(b, e + 112);
    info.meta_ci_compressed_size = load_u64(b, e + 120);
    info.meta_ci_uncompressed_size = load_u64(b, e + 128);
    if (info.meta_ci_offset > UINT64_MAX - info.meta_ci_compressed_size)
      return bad(where() + "ci offset + ci compressed size overflows");
    if (info.meta_ci_compressed_size > info.meta_ci_uncompressed_size)
      return bad(where() + "ci compressed size exceeds ci uncompressed size");
    uint64_t entry = (info.features & v6::kBlobChunkInfoV2) ? 24 : 16;
    if (!(info.features & v6::kBlobChunkdictGenerated) &&
        info.meta_ci_uncompressed_size != entry * info.chunk_count)
      return bad(where() + "ci uncompressed size " + std::to_string(info.meta_ci_uncompressed_size) +
                 " != " + std::to_string(entry) + " x " + std::to_string(info.chunk_count) + " chunks");
    std::memcpy(info.toc_digest.data(), b.data() + e + 136, 32);
    blobs_.push_back(std::move(info));
  }
  return Status::Ok();
}

Status RafsV6Image::load_chunk_table(uint64_t devslot_end) {
  auto b = bytes();
  chunk_table_offset_ = load_u64(b, kExtSuperOffset + 24);
  chunk_table_size_ = load_u64(b, kExtSuperOffset + 32);
  if (chunk_table_size_ == 0) return Status::Ok();
  const uint64_t off = chunk_table_offset_, size = chunk_table_size_;
  if (off % kBlockSize != 0 || off < kBlockSize || off < devslot_end || size % kChunkRecordSize != 0 ||
      !in_bounds(b.size(), off, size))
    return bad("chunk table: offset " + hex(off) + " size " + hex(size) +
               " is not 4K aligned, a multiple of 80 bytes and inside the file");
  uint64_t count = size / kChunkRecordSize;
  // Pass 1, in table order: check every record on its own and size the
  // per-blob index ranges.
  std::vector<uint64_t> per_blob(blobs_.size(), 0), max_ci(blobs_.size(), 0);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t r = off + i * kChunkRecordSize;
    auto where = [&] { return "chunk table record " + std::to_string(i) + ": "; };
    uint32_t blob_index = load_u32(b, r + 32);
    uint32_t flags = load_u32(b, r + 36);
    uint32_t c_size = load_u32(b, r + 40), d_size = load_u32(b, r + 44);
    uint64_t c_off = load_u64(b, r + 48), d_off = load_u64(b, r + 56);
    uint32_t index = load_u32(b, r + 72);
    if (blob_index >= blobs_.size())
      return bad(where() + "blob index " + std::to_string(blob_index) + ", image has " +
                 std::to_string(blobs_.size()) + " blobs");
    const BlobInfo& blob = blobs_[blob_index];
    if (flags & ~v6::kChunkKnownFlags) return bad(where() + "unknown chunk flags " + hex(flags));
    if (flags & (v6::kChunkEncrypted | v6::kChunkBatch))
      return unsupported(where() + "encrypted or batch chunks are not supported");
    if (c_size == 0 || c_size > v6::kMaxChunkSize || d_size == 0 || d_size > v6::kMaxChunkSize)
      return bad(where() + "chunk sizes " + std::to_string(c_size) + "/" + std::to_string(d_size) +
                 " are not in 1..16 MiB");
    if (d_size > chunk_size_)
      return bad(where() + "uncompressed size " + std::to_string(d_size) + " exceeds the chunk size");
    if (!(flags & v6::kChunkCompressed) && c_size != d_size)
      return bad(where() + "uncompressed chunk with compressed size != uncompressed size");
    if (d_off % kBlockSize != 0)
      return bad(where() + "uncompressed offset " + hex(d_off) + " is not 4K aligned");
    if (c_off > UINT64_MAX - c_size || d_off > UINT64_MAX - d_size)
      return bad(where() + "offset + size overflows");
    if (blob.compressed_size != 0 && c_off + c_size > blob.compressed_size)
      return bad(where() + "compressed range ends at " + hex(c_off + c_size) + ", past blob size " +
                 hex(blob.compressed_size));
    if (blob.uncompressed_size != 0 && d_off + d_size > blob.uncompressed_size)
      return bad(where() + "uncompressed range ends at " + hex(d_off + d_size) +
                 ", past blob uncompressed size " + hex(blob.uncompressed_size));
    if (blob.chunk_count != 0 && index >= blob.chunk_count)
      return bad(where() + "chunk index " + std::to_string(index) + " >= blob chunk count " +
                 std::to_string(blob.chunk_count));
    ++per_blob[blob_index];
    max_ci[blob_index] = std::max<uint64_t>(max_ci[blob_index], index);
  }

  // Chunk indexes of a blob are normally 0..n-1: a table indexed by chunk
  // index then needs neither a sort of the (digest-ordered) records nor a
  // search per lookup. The density bound keeps its size within twice the
  // blob's record count; sparse or huge index ranges use a sorted array.
  dense_slots_.assign(blobs_.size(), {});
  uint64_t sparse = 0;
  for (size_t blob = 0; blob < blobs_.size(); ++blob) {
    if (per_blob[blob] == 0) continue;
    if (max_ci[blob] < 2 * per_blob[blob] + 1024)
      dense_slots_[blob].resize(max_ci[blob] + 1);
    else
      sparse += per_blob[blob];
  }
  sparse_slots_.reserve(sparse);

  // Records are unique per (digest, blob); two records claiming the same
  // (blob, chunk index) must at least agree on where the data is. The first
  // in table order is kept.
  auto same_location = [&](uint32_t record_a, uint32_t record_b) {
    return std::memcmp(b.data() + off + uint64_t{record_a} * kChunkRecordSize + 36,
                       b.data() + off + uint64_t{record_b} * kChunkRecordSize + 36, 28) == 0;
  };
  auto disagree = [&](uint64_t key) {
    return bad("chunk table: two records for blob " + std::to_string(key >> 32) + " chunk " +
               std::to_string(key & 0xffffffff) + " disagree on location");
  };
  // Pass 2, in table order (count < 2^32: the file is at most 2 GiB).
  for (uint32_t i = 0; i < count; ++i) {
    const uint64_t r = off + uint64_t{i} * kChunkRecordSize;
    const uint32_t blob_index = load_u32(b, r + 32), index = load_u32(b, r + 72);
    const ChunkSlot slot{load_u64(b, r + 56), load_u32(b, r + 44), i + 1};
    auto& table = dense_slots_[blob_index];
    if (table.empty()) {
      sparse_slots_.push_back({uint64_t{blob_index} << 32 | index, slot});
      continue;
    }
    ChunkSlot& s = table[index];
    if (s.record == 0)
      s = slot;
    else if (!same_location(s.record - 1, i))
      return disagree(uint64_t{blob_index} << 32 | index);
  }
  if (sparse_slots_.empty()) return Status::Ok();
  auto by_key = [](const KeyedChunkSlot& x, const KeyedChunkSlot& y) { return x.key < y.key; };
  // Stable: equal keys stay in table order, so the first record is kept.
  if (!std::is_sorted(sparse_slots_.begin(), sparse_slots_.end(), by_key))
    std::stable_sort(sparse_slots_.begin(), sparse_slots_.end(), by_key);
  size_t kept = 0;
  for (size_t i = 0; i < sparse_slots_.size(); ++i) {
    const KeyedChunkSlot& s = sparse_slots_[i];
    if (kept != 0 && sparse_slots_[kept - 1].key == s.key) {
      if (!same_location(sparse_slots_[kept - 1].slot.record - 1, s.slot.record - 1)) return disagree(s.key);
      continue;
    }
    sparse_slots_[kept++] = s;
  }
  sparse_slots_.resize(kept);
  sparse_slots_.shrink_to_fit();
  return Status::Ok();
}

Status RafsV6Image::load_prefetch(uint64_t devslot_end, std::vector<uint64_t>* nids) {
  auto b = bytes();
  uint64_t off = load_u64(b, kExtSuperOffset + 40);
  uint32_t size = load_u32(b, kExtSuperOffset + 48);
  // Legacy images may carry a size with a zero offset for empty filesystems.
  if (size == 0 || off == 0) return Status::Ok();
  if (off < kBlockSize || off < devslot_end || size % 4 != 0 || !in_bounds(b.size(), off, size))
    return bad("prefetch table: offset " + hex(off) + " size " + std::to_string(size) +
               " is not inside the file after the device table");
  for (uint64_t i = 0; i < size / 4; ++i) {
    uint32_t nid = load_u32(b, off + 4 * i);
    if (nid == 0) break;  // §4.11: 0 terminates
    nids->push_back(nid);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Inodes

Result<InodeView> RafsV6Image::decode_inode(uint64_t nid) const {
  auto b = bytes();
  const uint64_t size = b.size();
  auto where = [&] { return "inode nid " + std::to_string(nid) + ": "; };
  if (nid > (size - meta_base_) / kInodeSlotSize) return bad(where() + "lies past the end of the file");
  InodeView v;
  v.nid = nid;
  v.offset = meta_base_ + nid * kInodeSlotSize;
  if (!in_bounds(size, v.offset, kCompactInodeSize)) return bad(where() + "lies past the end of the file");
  uint16_t format = load_u16(b, v.offset);
  if (format & ~0xFu) return bad(where() + "i_format " + hex(format) + " has unknown bits");
  bool extended = format & 1;
  v.inode_size = extended ? kExtendedInodeSize : kCompactInodeSize;
  if (!in_bounds(size, v.offset, v.inode_size))
    return bad(where() + "extended inode runs past the end of the file");
  v.layout = (format >> 1) & 7;
  if (v.layout == 1 || v.layout == 3)
    return unsupported(where() + "compressed data layout " + std::to_string(v.layout) + " is not supported");
  if (v.layout != kLayoutFlatPlain && v.layout != kLayoutFlatInline && v.layout != kLayoutChunkBased)
    return bad(where() + "unknown data layout " + std::to_string(v.layout));

  uint16_t icount = load_u16(b, v.offset + 2);
  v.mode = load_u16(b, v.offset + 4);
  v.i_u = load_u32(b, v.offset + 16);
  if (extended) {
    v.size = load_u64(b, v.offset + 8);
    v.uid = load_u32(b, v.offset + 24);
    v.gid = load_u32(b, v.offset + 28);
    v.mtime = load_u64(b, v.offset + 32);
    v.mtime_nsec = load_u32(b, v.offset + 40);
    v.nlink = load_u32(b, v.offset + 44);
  } else {
    // Compact inodes carry no mtime (nydus reports 0) and no rdev.
    v.nlink = load_u16(b, v.offset + 6);
    v.size = load_u32(b, v.offset + 8);
    v.uid = load_u16(b, v.offset + 24);
    v.gid = load_u16(b, v.offset + 26);
  }
  if (!valid_file_type(v.type())) return bad(where() + "mode " + hex(v.mode) + " has no valid file type");
  if (v.nlink == 0) return bad(where() + "nlink is 0");
  if (v.mtime_nsec >= 1000000000u)
    return bad(where() + "mtime_nsec " + std::to_string(v.mtime_nsec) + " >= 10^9");

  v.xattr_offset = v.offset + v.inode_size;
  v.xattr_size = icount == 0 ? 0 : static_cast<uint32_t>(kXattrHeaderSize + 4 * (uint64_t{icount} - 1));
  if (!in_bounds(size, v.xattr_offset, v.xattr_size))
    return bad(where() + "xattr area runs past the end of the file");
  const uint64_t body_end = v.xattr_offset + v.xattr_size;

  switch (v.type()) {
    case S_IFREG:
      if (v.layout != kLayoutChunkBased) {
        if (v.size != 0)
          return unsupported(where() +
                             "regular file with data inside the bootstrap (flat layout) is not supported");
        return v;
      }
      break;
    case S_IFDIR:
    case S_IFLNK:
      if (v.layout == kLayoutChunkBased)
        return bad(where() + type_name(v.type()) + " must use a flat layout");
      if (v.type() == S_IFLNK && (v.size == 0 || v.size > kMaxSymlinkSize))
        return bad(where() + "symlink size " + std::to_string(v.size) + " is not in 1..4096");
      break;
    default:  // chr, blk, fifo, socket
      if (v.layout == kLayoutChunkBased)
        return bad(where() + type_name(v.type()) + " must use a flat layout");
      if (v.size != 0) return bad(where() + type_name(v.type()) + " has non-zero size");
      if (extended && (v.type() == S_IFCHR || v.type() == S_IFBLK)) v.rdev = v.i_u;
      return v;
  }

  if (v.layout == kLayoutChunkBased) {
    uint32_t fmt = v.i_u;
    if ((fmt & ~(kChunkFormatIndexes | kChunkFormatBitsMask)) || !(fmt & kChunkFormatIndexes))
      return bad(where() + "chunk format " + hex(fmt) + " is not 0x20|chunkbits");
    // The builder writes log2(chunk size), or for a file whose chunks are
    // contiguous in one blob log2(next_power_of_two(size)) so the kernel sees
    // one extent (§4.9). Index entries always follow the superblock chunk size.
    uint32_t bits = (fmt & kChunkFormatBitsMask) + kBlkszBits;
    uint32_t sb_bits = log2_exact(chunk_size_);
    uint32_t max_bits = v.size > chunk_size_ ? std::max(sb_bits, log2_ceil(v.size)) : sb_bits;
    if (bits < sb_bits || bits > max_bits)
      return bad(where() + "chunk format " + hex(fmt) + " does not match chunk size " + hex(chunk_size_));
    v.chunk_count = div_round_up(v.size, chunk_size_);
    v.chunk_array = align_up(body_end, kChunkIndexSize);
    if (v.chunk_count > size / kChunkIndexSize ||
        !in_bounds(size, v.chunk_array, v.chunk_count * kChunkIndexSize))
      return bad(where() + std::to_string(v.chunk_count) + " chunk indexes run past the end of the file");
    return v;
  }

  // Flat layouts (§4.8): full blocks contiguous from block i_u; with
  // FLAT_INLINE the last block's bytes follow inode+xattrs in the same block.
  if (v.size == 0) return v;
  if (v.size > size) return bad(where() + "size " + std::to_string(v.size) + " exceeds the bootstrap");
  v.nblocks = div_round_up(v.size, kBlockSize);
  uint64_t data_start = uint64_t{v.i_u} * kBlockSize;
  if (v.layout == kLayoutFlatPlain) {
    if (!in_bounds(size, data_start, v.size))
      return bad(where() + "data blocks at block " + std::to_string(v.i_u) + " run past the end of the file");
  } else {
    uint64_t full = v.nblocks - 1;
    if (full > 0 && !in_bounds(size, data_start, full * kBlockSize))
      return bad(where() + "data blocks at block " + std::to_string(v.i_u) + " run past the end of the file");
    uint64_t tail = v.size - full * kBlockSize;
    v.tail_offset = body_end;
    if (body_end % kBlockSize + tail > kBlockSize)
      return bad(where() + "inline data crosses a block boundary");
    if (!in_bounds(size, v.tail_offset, tail))
      return bad(where() + "inline data runs past the end of the file");
  }
  return v;
}

std::span<const uint8_t> RafsV6Image::flat_block(const InodeView& v, uint64_t k) const {
  if (k >= v.nblocks) return {};
  uint64_t len = std::min<uint64_t>(kBlockSize, v.size - k * kBlockSize);
  uint64_t start = (v.layout == kLayoutFlatInline && k + 1 == v.nblocks) ? v.tail_offset
                                                                         : (uint64_t{v.i_u} + k) * kBlockSize;
  bool ok = false;
  return le::slice(bytes(), start, len, &ok);  // checked at decode; empty if not
}

Result<DirBlock> RafsV6Image::dir_block(const InodeView& v, uint64_t k) const {
  auto blk = flat_block(v, k);
  if (checked_) {
    DirBlock b = view_dir_block(blk);
    if (b.count == 0)
      return bad("directory nid " + std::to_string(v.nid) + " block " + std::to_string(k) + " is empty");
    return b;
  }
  auto parsed = parse_dir_block(blk);
  if (!parsed.ok())
    return in("directory nid " + std::to_string(v.nid) + " block " + std::to_string(k), parsed.status());
  return parsed;
}

Status RafsV6Image::scan_xattrs(const InodeView& v, std::vector<Xattr>* out) const {
  if (v.xattr_size == 0) return Status::Ok();
  auto where = [&] { return "inode nid " + std::to_string(v.nid) + ": xattrs: "; };
  bool ok = false;
  auto area = le::slice(bytes(), v.xattr_offset, v.xattr_size, &ok);
  if (!ok) return bad(where() + "area runs past the end of the file");
  if (load_u8(area, 4) != 0) return unsupported(where() + "shared xattrs are not supported");
  // Duplicates are found on (name index, suffix): no prefix is a prefix of
  // another's full name, so equal full names mean equal pairs. Pairwise for
  // the usual handful of entries (no allocation); sorted when an area holds
  // more, as a 256 KiB area can hold ~32k entries and pairwise would be
  // quadratic.
  struct Name {
    uint8_t index;
    std::string_view suffix;
    auto operator<=>(const Name&) const = default;
  };
  constexpr size_t kPairwise = 16;
  std::array<Name, kPairwise> few;
  std::vector<Name> many;
  size_t names = 0;
  auto duplicate = [&](const Name& n) {
    return bad(where() + "duplicate name " + xattr_prefix(n.index) + std::string(n.suffix));
  };
  uint64_t pos = kXattrHeaderSize;
  while (pos < area.size()) {
    if (!in_bounds(area.size(), pos, 4)) return bad(where() + "truncated entry header");
    uint8_t name_len = load_u8(area, pos);
    uint8_t index = load_u8(area, pos + 1);
    uint16_t value_size = load_u16(area, pos + 2);
    uint64_t total = 4 + uint64_t{name_len} + value_size;
    if (!in_bounds(area.size(), pos, total)) return bad(where() + "entry runs past the xattr area");
    const char* prefix = xattr_prefix(index);
    if (!prefix) return bad(where() + "unknown name index " + std::to_string(index));
    auto suffix = std::string_view(reinterpret_cast<const char*>(area.data() + pos + 4), name_len);
    if (suffix.find('\0') != std::string_view::npos) return bad(where() + "name contains NUL");
    // "user." etc. need a suffix; the ACL indexes name the whole attribute.
    if (suffix.empty() && (index == 1 || index == 4 || index == 6))
      return bad(where() + "empty name after prefix");
    if (std::strlen(prefix) + suffix.size() > kXattrNameMax)
      return bad(where() + "name longer than 255 bytes");
    const Name name{index, suffix};
    if (names < kPairwise) {
      for (size_t i = 0; i < names; ++i)
        if (few[i] == name) return duplicate(name);
      few[names] = name;
    } else {
      if (many.empty()) many.assign(few.begin(), few.end());
      many.push_back(name);
    }
    ++names;
    if (out) {
      Xattr x;
      x.name = std::string(prefix).append(suffix);
      x.value.assign(reinterpret_cast<const char*>(area.data() + pos + 4 + name_len), value_size);
      out->push_back(std::move(x));
    }
    pos += align_up(total, 4);
  }
  if (!many.empty()) {
    std::sort(many.begin(), many.end());
    auto dup = std::adjacent_find(many.begin(), many.end());
    if (dup != many.end()) return duplicate(*dup);
  }
  return Status::Ok();
}

Result<std::vector<Xattr>> RafsV6Image::parse_xattrs(const InodeView& v) const {
  std::vector<Xattr> out;
  NYDUS_TRY(scan_xattrs(v, &out));
  return out;
}

Status RafsV6Image::check_symlink(const InodeView& v) const {
  auto blk = flat_block(v, 0);
  if (blk.size() != v.size) return bad("inode nid " + std::to_string(v.nid) + ": symlink data out of range");
  if (std::memchr(blk.data(), 0, blk.size()) != nullptr)
    return bad("inode nid " + std::to_string(v.nid) + ": symlink target contains NUL");
  return Status::Ok();
}

Result<std::string> RafsV6Image::symlink_target(const InodeView& v) const {
  NYDUS_TRY(check_symlink(v));
  auto blk = flat_block(v, 0);
  return std::string(reinterpret_cast<const char*>(blk.data()), blk.size());
}

const ChunkSlot* RafsV6Image::find_chunk(uint32_t blob, uint32_t ci) const {
  if (blob < dense_slots_.size() && !dense_slots_[blob].empty()) {
    const auto& table = dense_slots_[blob];
    if (ci >= table.size() || table[ci].record == 0) return nullptr;
    return &table[ci];
  }
  uint64_t key = uint64_t{blob} << 32 | ci;
  auto it = std::lower_bound(sparse_slots_.begin(), sparse_slots_.end(), key,
                             [](const KeyedChunkSlot& s, uint64_t k) { return s.key < k; });
  if (it == sparse_slots_.end() || it->key != key) return nullptr;
  return &it->slot;
}

Status RafsV6Image::check_chunk(const InodeView& v, uint64_t k, ChunkIndexEntry* out) const {
  auto b = bytes();
  const uint64_t e = v.chunk_array + k * kChunkIndexSize;
  if (k >= v.chunk_count || !in_bounds(b.size(), e, kChunkIndexSize))
    return bad("inode nid " + std::to_string(v.nid) + ": chunk index " + std::to_string(k) + " out of range");
  uint16_t w0 = load_u16(b, e), w2 = load_u16(b, e + 2);
  ChunkIndexEntry c;
  c.blkaddr = load_u32(b, e + 4);
  c.hole = c.blkaddr == kNullBlkaddr;
  if (c.hole) {
    *out = c;
    return Status::Ok();
  }
  auto where = [&] { return "inode nid " + std::to_string(v.nid) + ": chunk index " + std::to_string(k) + " "; };
  uint32_t device = w2 & 0xff;
  if (device == 0) return bad(where() + "has blob index 0 (device ids start at 1)");
  c.blob_index = device - 1;
  if (c.blob_index >= blobs_.size())
    return bad(where() + "points at blob " + std::to_string(c.blob_index) + ", image has " +
               std::to_string(blobs_.size()) + " blob" + (blobs_.size() == 1 ? "" : "s"));
  const BlobInfo& blob = blobs_[c.blob_index];
  c.chunk_index = (uint32_t{w2} >> 8) << 16 | w0;
  c.file_offset = k * chunk_size_;
  c.size = static_cast<uint32_t>(std::min<uint64_t>(chunk_size_, v.size - c.file_offset));
  c.slot = find_chunk(c.blob_index, c.chunk_index);
  if (c.slot) {
    if (c.slot->uncompressed_offset / kBlockSize != c.blkaddr)
      return bad(where() + "block address " + std::to_string(c.blkaddr) +
                 " differs from chunk table offset " + hex(c.slot->uncompressed_offset));
    if (c.slot->uncompressed_size != c.size)
      return bad(where() + "chunk holds " + std::to_string(c.slot->uncompressed_size) +
                 " bytes, file needs " + std::to_string(c.size));
  } else {
    // Not in the chunk table: a later layer finds it through blob.meta.
    if (blob.chunk_count != 0 && c.chunk_index >= blob.chunk_count)
      return bad(where() + "chunk " + std::to_string(c.chunk_index) + " >= blob chunk count " +
                 std::to_string(blob.chunk_count));
    if (blob.uncompressed_size != 0 && uint64_t{c.blkaddr} * kBlockSize + c.size > blob.uncompressed_size)
      return bad(where() + "block address " + std::to_string(c.blkaddr) +
                 " lies past the blob's uncompressed size");
  }
  *out = c;
  return Status::Ok();
}

Status RafsV6Image::resolve_chunk(const InodeView& v, uint64_t k, ChunkRef* out, bool* hole) const {
  ChunkIndexEntry c;
  NYDUS_TRY(check_chunk(v, k, &c));
  *hole = c.hole;
  if (c.hole) return Status::Ok();
  ChunkRef r;
  r.blob_index = c.blob_index;
  r.chunk_index = c.chunk_index;
  r.file_offset = c.file_offset;
  r.uncompressed_size = c.size;
  if (c.slot) {
    // The record was checked at open (load_chunk_table) and lies inside the table.
    auto b = bytes();
    const uint64_t rec_off = chunk_table_offset_ + uint64_t{c.slot->record - 1} * kChunkRecordSize;
    uint32_t flags = load_u32(b, rec_off + 36);
    r.compressed_size = load_u32(b, rec_off + 40);
    r.compressed_offset = load_u64(b, rec_off + 48);
    r.uncompressed_offset = c.slot->uncompressed_offset;
    r.compressed = flags & v6::kChunkCompressed;
    r.has_crc32 = flags & v6::kChunkHasCrc32;
    r.crc32 = r.has_crc32 ? load_u32(b, rec_off + 76) : 0;
    std::memcpy(r.digest.data(), b.data() + rec_off, 32);
  } else {
    r.uncompressed_offset = uint64_t{c.blkaddr} * kBlockSize;
    r.located = false;
  }
  *out = r;
  return Status::Ok();
}

Status RafsV6Image::check_inode_content(const InodeView& v) const {
  NYDUS_TRY(scan_xattrs(v, nullptr));
  if (v.type() == S_IFLNK) return check_symlink(v);
  if (v.type() == S_IFREG) {
    for (uint64_t k = 0; k < v.chunk_count; ++k) {
      ChunkIndexEntry c;
      NYDUS_TRY(check_chunk(v, k, &c));
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Tree walk

// Depth first, in the order upstream's builder lays inodes out (a
// directory, then its non-directory children in name order, then its
// subdirectories the same way, §4.6): the records then come out sorted by
// nid, checked in O(n) instead of sorted. Any other layout is still
// accepted, at the price of a sort.
Status RafsV6Image::walk_tree() {
  const uint64_t root = super_.root_nid;
  NYDUS_ASSIGN(InodeView root_view, decode_inode(root));
  if (root_view.type() != S_IFDIR) return bad("root nid " + std::to_string(root) + " is not a directory");
  NYDUS_TRY(check_inode_content(root_view));

  // Inodes reached so far, one bit per 32-byte slot of the metadata area
  // (decode_inode refuses any nid past it): 1/256 of the file, dropped
  // after open.
  const uint64_t slots = (bytes().size() - meta_base_) / kInodeSlotSize + 1;
  std::vector<uint64_t> reached(div_round_up(slots, 64), 0);
  auto was_reached = [&](uint64_t nid) { return nid < slots && (reached[nid / 64] >> (nid % 64) & 1); };
  auto mark_reached = [&](uint64_t nid) { reached[nid / 64] |= uint64_t{1} << (nid % 64); };

  struct PendingDir {
    uint64_t nid, parent;
    uint32_t nlink;
  };
  // A further name of an inode already reached; checked once every inode
  // has its record (hard links are rare, their names may be copied).
  struct ExtraName {
    uint64_t nid, dir;
    uint8_t ft;
    std::string name;
  };
  std::vector<InodeRec> recs;
  // The superblock's count is only a hint: capped so that a forged count
  // cannot reserve more than 32 MiB; real images grow from there.
  recs.reserve(std::min<uint64_t>({inos_hint_, slots, uint64_t{1} << 20}));
  std::vector<PendingDir> stack{{root, root, root_view.nlink}};
  std::vector<PendingDir> subdirs;  // of the directory being scanned
  std::vector<ExtraName> extra_names;
  mark_reached(root);

  while (!stack.empty()) {
    const PendingDir pending = stack.back();
    stack.pop_back();
    if (recs.size() >= UINT32_MAX) return bad("too many inodes");
    recs.push_back({pending.nid, pending.parent, S_IFDIR, pending.nlink, 0});
    const uint64_t dir_nid = pending.nid, parent_nid = pending.parent;
    NYDUS_ASSIGN(InodeView dir, decode_inode(dir_nid));
    auto where = [&] { return "directory nid " + std::to_string(dir_nid) + ": "; };
    std::string_view prev;
    bool have_prev = false, dot = false, dotdot = false;
    for (uint64_t k = 0; k < dir.nblocks; ++k) {
      NYDUS_ASSIGN(DirBlock blk, dir_block(dir, k));
      for (uint32_t i = 0; i < blk.count; ++i) {
        std::string_view name = blk.name(i);
        uint64_t nid = blk.nid(i);
        uint8_t ft = blk.file_type(i);
        if (have_prev && !(prev < name))
          return bad(where() + "entry '" + std::string(name) + "' is not in sorted order");
        prev = name;
        have_prev = true;
        uint32_t ft_mode = dirent_type_to_mode(ft);
        if (name == "." || name == "..") {
          uint64_t want = name == "." ? dir_nid : parent_nid;
          if (nid != want || ft_mode != S_IFDIR)
            return bad(where() + "'" + std::string(name) + "' points at nid " + std::to_string(nid) +
                       " (expected directory nid " + std::to_string(want) + ")");
          (name == "." ? dot : dotdot) = true;
          continue;
        }
        auto ewhere = [&] { return where() + "entry '" + std::string(name) + "': "; };
        if (was_reached(nid)) {
          if (ft_mode == S_IFDIR)
            return bad(ewhere() + "directory nid " + std::to_string(nid) +
                       " is reached twice (cycle or hard-linked directory)");
          extra_names.push_back({nid, dir_nid, ft, std::string(name)});
          continue;
        }
        NYDUS_ASSIGN(InodeView child, decode_inode(nid));
        if (ft_mode != child.type())
          return bad(ewhere() + "file type " + std::to_string(ft) + " does not match the " +
                     type_name(child.type()) + " at nid " + std::to_string(nid));
        NYDUS_TRY(check_inode_content(child));
        mark_reached(nid);
        if (child.type() == S_IFDIR) {
          subdirs.push_back({nid, dir_nid, child.nlink});
        } else {
          if (recs.size() >= UINT32_MAX) return bad("too many inodes");
          recs.push_back({nid, dir_nid, child.type(), child.nlink, 1});
        }
      }
    }
    if (!dot || !dotdot) return bad(where() + "lacks '.' or '..'");
    // Reversed, so the first subdirectory is walked next.
    stack.insert(stack.end(), subdirs.rbegin(), subdirs.rend());
    subdirs.clear();
  }

  auto by_nid = [](const InodeRec& x, const InodeRec& y) { return x.nid < y.nid; };
  if (!std::is_sorted(recs.begin(), recs.end(), by_nid)) std::sort(recs.begin(), recs.end(), by_nid);
  for (const ExtraName& e : extra_names) {
    auto it = std::lower_bound(recs.begin(), recs.end(), e.nid,
                               [](const InodeRec& r, uint64_t n) { return r.nid < n; });
    // Every reached nid has a record once the walk completed.
    if (it == recs.end() || it->nid != e.nid)
      return bad("inode nid " + std::to_string(e.nid) + " has no record");
    auto ewhere = [&] { return "directory nid " + std::to_string(e.dir) + ": entry '" + e.name + "': "; };
    if (it->type == S_IFDIR)
      return bad(ewhere() + "directory nid " + std::to_string(e.nid) +
                 " is reached twice (cycle or hard-linked directory)");
    if (dirent_type_to_mode(e.ft) != it->type)
      return bad(ewhere() + "file type " + std::to_string(e.ft) + " does not match the " +
                 type_name(it->type) + " at nid " + std::to_string(e.nid));
    ++it->refs;
  }
  // Light nlink plausibility: a non-directory cannot have more names than links.
  for (const auto& r : recs) {
    if (r.type != S_IFDIR && r.refs > r.nlink)
      return bad("inode nid " + std::to_string(r.nid) + ": " + std::to_string(r.refs) +
                 " directory entries but nlink " + std::to_string(r.nlink));
  }
  recs.shrink_to_fit();
  inodes_ = std::move(recs);
  super_.inodes_count = inodes_.size();
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Accessors

Result<const InodeRec*> RafsV6Image::rec(Ino ino) const {
  auto it = std::lower_bound(inodes_.begin(), inodes_.end(), ino,
                             [](const InodeRec& r, Ino n) { return r.nid < n; });
  if (it == inodes_.end() || it->nid != ino)
    return Status::not_found("bootstrap " + name_ + ": no inode nid " + std::to_string(ino));
  return &*it;
}

Result<InodeView> RafsV6Image::view_of(Ino ino) const {
  NYDUS_ASSIGN(const InodeRec* r, rec(ino));
  (void)r;
  return decode_inode(ino);
}

Result<InodeAttr> RafsV6Image::inode(Ino ino) const {
  NYDUS_ASSIGN(InodeView v, view_of(ino));
  InodeAttr a;
  a.ino = v.nid;
  a.mode = v.mode;
  a.nlink = v.nlink;
  a.uid = v.uid;
  a.gid = v.gid;
  a.size = v.size;
  a.blocks = div_round_up(v.size, 512);
  a.rdev = v.rdev;
  a.mtime = v.mtime;
  a.mtime_nsec = v.mtime_nsec;
  return a;
}

Result<Ino> RafsV6Image::parent(Ino dir) const {
  NYDUS_ASSIGN(const InodeRec* r, rec(dir));
  if (r->type != S_IFDIR)
    return Status(Code::kNotDir,
                  "bootstrap " + name_ + ": nid " + std::to_string(dir) + " is not a directory");
  return r->parent;
}

Result<Ino> RafsV6Image::lookup(Ino dir, std::string_view name) const {
  NYDUS_ASSIGN(const InodeRec* r, rec(dir));
  if (r->type != S_IFDIR)
    return Status(Code::kNotDir,
                  "bootstrap " + name_ + ": nid " + std::to_string(dir) + " is not a directory");
  NYDUS_ASSIGN(InodeView v, decode_inode(dir));
  auto not_found = [&] {
    return Status::not_found("bootstrap " + name_ + ": no entry '" + std::string(name) + "' in nid " +
                             std::to_string(dir));
  };
  if (name.empty() || name.size() > kMaxNameLen || v.nblocks == 0) return not_found();
  // Names are sorted across the whole directory: find the last block whose
  // first name is <= name, then search inside it.
  uint64_t lo = 0, hi = v.nblocks;  // invariant: answer block in [lo, hi)
  while (hi - lo > 1) {
    uint64_t mid = lo + (hi - lo) / 2;
    NYDUS_ASSIGN(DirBlock blk, dir_block(v, mid));
    if (blk.name(0) <= name)
      lo = mid;
    else
      hi = mid;
  }
  NYDUS_ASSIGN(DirBlock blk, dir_block(v, lo));
  uint32_t a = 0, z = blk.count;
  while (a < z) {
    uint32_t m = a + (z - a) / 2;
    std::string_view n = blk.name(m);
    if (n == name) return static_cast<Ino>(blk.nid(m));
    if (n < name)
      a = m + 1;
    else
      z = m;
  }
  return not_found();
}

Status RafsV6Image::read_dir(Ino dir, uint64_t cookie, const DirVisitor& fn) const {
  NYDUS_ASSIGN(const InodeRec* r, rec(dir));
  if (r->type != S_IFDIR)
    return Status(Code::kNotDir,
                  "bootstrap " + name_ + ": nid " + std::to_string(dir) + " is not a directory");
  NYDUS_ASSIGN(InodeView v, decode_inode(dir));
  uint64_t base = 0;  // global index of the block's first entry
  for (uint64_t k = 0; k < v.nblocks; ++k) {
    NYDUS_ASSIGN(DirBlock blk, dir_block(v, k));
    if (base + blk.count <= cookie) {
      base += blk.count;
      continue;
    }
    for (uint32_t i = cookie > base ? static_cast<uint32_t>(cookie - base) : 0; i < blk.count; ++i) {
      DirEntry e;
      e.name = std::string(blk.name(i));
      e.ino = blk.nid(i);
      e.type = dirent_type_to_mode(blk.file_type(i));
      if (!fn(e, base + i + 1)) return Status::Ok();
    }
    base += blk.count;
  }
  return Status::Ok();
}

Result<std::string> RafsV6Image::read_link(Ino ino) const {
  NYDUS_ASSIGN(InodeView v, view_of(ino));
  if (v.type() != S_IFLNK)
    return Status::invalid("bootstrap " + name_ + ": nid " + std::to_string(ino) + " is not a symlink");
  return symlink_target(v);
}

Result<std::vector<Xattr>> RafsV6Image::xattrs(Ino ino) const {
  NYDUS_ASSIGN(InodeView v, view_of(ino));
  return parse_xattrs(v);
}

Result<std::vector<ChunkRef>> RafsV6Image::chunks(Ino ino, uint64_t offset, uint64_t len) const {
  NYDUS_ASSIGN(InodeView v, view_of(ino));
  if (v.type() == S_IFDIR)
    return Status(Code::kIsDir, "bootstrap " + name_ + ": nid " + std::to_string(ino) + " is a directory");
  if (v.type() != S_IFREG)
    return Status::invalid("bootstrap " + name_ + ": nid " + std::to_string(ino) + " is not a regular file");
  std::vector<ChunkRef> out;
  if (len == 0 || offset >= v.size) return out;
  uint64_t end = offset + std::min(len, v.size - offset);
  for (uint64_t k = offset / chunk_size_; k < v.chunk_count && k * chunk_size_ < end; ++k) {
    ChunkRef r;
    bool hole = false;
    NYDUS_TRY(resolve_chunk(v, k, &r, &hole));
    if (!hole) out.push_back(r);
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<Image>> open_rafs_v6(FileBytes file, const std::string& name) {
  auto image = std::make_unique<RafsV6Image>(std::move(file), name);
  NYDUS_TRY(image->load());
  return std::unique_ptr<Image>(std::move(image));
}

}  // namespace nydus::bootstrap
