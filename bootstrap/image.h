// bootstrap::Image: one read-only view over a RAFS v5 or v6 bootstrap.
//
// Contract
// - open() reads the whole file and validates every structure it will later
//   trust: superblock(s), tables, the inode tree (each inode reachable from
//   the root is decoded and checked once), names, symlink sizes, xattr
//   areas and chunk references. A file that fails any check is refused with
//   one Status naming the bootstrap, the structure and the field
//   ("bootstrap x.boot: inode nid 133: chunk index 2 points at blob 7, image
//   has 1 blob"). A file that passes can be walked completely without any
//   accessor failing for structural reasons.
// - Accessors never read outside the file, never crash and never hang on any
//   input (cycles in the tree are refused at open).
// - An Image is immutable after open(); every const method is safe to call
//   from any number of threads at once.
//
// Inode numbers: `Ino` is the image's own inode number: the v5 `i_ino`
// (1 = root) or the v6 nid. Hardlinked names return the same Ino.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace nydus::bootstrap {

using Ino = uint64_t;
using Digest = std::array<uint8_t, 32>;

enum class Compressor : uint32_t { kNone = 0, kLz4Block = 1, kGzip = 2, kZstd = 3 };
enum class Digester : uint32_t { kBlake3 = 0, kSha256 = 1 };

const char* compressor_name(Compressor c);
const char* digester_name(Digester d);

struct SuperInfo {
  uint32_t version = 0;        // 5 or 6
  uint64_t flags = 0;          // RafsSuperFlags (rafs-format.md §1.4)
  uint32_t chunk_size = 0;     // power of two, 4 KiB..16 MiB
  uint64_t inodes_count = 0;   // unique inodes
  Compressor compressor = Compressor::kNone;  // image default
  Digester digester = Digester::kBlake3;
  bool explicit_uid_gid = false;
  bool has_xattr = false;
  // v6 only
  uint64_t root_nid = 0;
  uint32_t meta_blkaddr = 0;
};

// One entry of the blob table (v5 blob table + extended table, v6 blob
// table + device slot). Sizes are 0 where the image does not record them.
struct BlobInfo {
  uint32_t index = 0;
  std::string id;                  // normally 64 lowercase hex chars
  uint32_t chunk_count = 0;
  uint32_t chunk_size = 0;
  uint32_t features = 0;           // BlobFeatures (§1.5)
  Compressor compressor = Compressor::kNone;
  Digester digester = Digester::kBlake3;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  // blob.meta (ci array) location inside the data blob (v6); 0 if unknown.
  Compressor meta_ci_compressor = Compressor::kNone;
  uint64_t meta_ci_offset = 0;
  uint64_t meta_ci_compressed_size = 0;
  uint64_t meta_ci_uncompressed_size = 0;
  uint32_t toc_size = 0;
  Digest toc_digest{};
};

// Where one chunk of file data lives. All fields are validated against the
// blob table at open (blob_index < blobs().size(), sizes <= 16 MiB,
// uncompressed_size <= chunk size, offsets do not overflow).
struct ChunkRef {
  uint32_t blob_index = 0;
  uint32_t chunk_index = 0;         // index inside the blob
  uint64_t file_offset = 0;         // where the chunk starts in the file
  uint64_t compressed_offset = 0;   // in the blob file
  uint32_t compressed_size = 0;
  uint64_t uncompressed_offset = 0; // in the uncompressed blob (cache file)
  uint32_t uncompressed_size = 0;
  bool compressed = false;          // decompress with the blob's compressor
  Digest digest{};                  // of the uncompressed bytes
  bool has_crc32 = false;
  uint32_t crc32 = 0;               // CRC-32C of the uncompressed bytes
  // False when the bootstrap names the chunk (blob, chunk_index,
  // uncompressed_offset) but holds no compressed location for it (a v6
  // image without a chunk table entry): the reader must resolve it through
  // the blob's blob.meta table. The compressed_* fields and digest are then
  // unset.
  bool located = true;
};

struct InodeAttr {
  Ino ino = 0;
  uint32_t mode = 0;        // full st_mode: type and permission bits
  uint32_t nlink = 0;
  uint32_t uid = 0;         // 0 unless SuperInfo::explicit_uid_gid
  uint32_t gid = 0;
  uint64_t size = 0;
  uint64_t blocks = 0;      // 512-byte units
  uint32_t rdev = 0;        // Linux new_encode_dev form
  uint64_t mtime = 0;
  uint32_t mtime_nsec = 0;
};

struct DirEntry {
  std::string name;
  Ino ino = 0;
  uint32_t type = 0;   // S_IF* bits of the target's mode
};

struct Xattr {
  std::string name;    // full name with prefix, e.g. "security.capability"
  std::string value;
};

class Image {
 public:
  virtual ~Image() = default;

  // Opens and validates a v5 or v6 bootstrap (detected from the magic).
  // `name` is used only in messages (usually the path).
  static Result<std::unique_ptr<Image>> open(const std::string& path);
  static Result<std::unique_ptr<Image>> from_bytes(std::span<const uint8_t> bytes,
                                                   const std::string& name);

  virtual const SuperInfo& super() const = 0;
  virtual const std::vector<BlobInfo>& blobs() const = 0;
  // v5: inode numbers; v6: nids. Empty when the image has none.
  virtual const std::vector<Ino>& prefetch_table() const = 0;

  virtual Ino root() const = 0;
  virtual Result<InodeAttr> inode(Ino ino) const = 0;
  // Ino of the parent directory (root's parent is root).
  virtual Result<Ino> parent(Ino dir) const = 0;
  // kNotFound if absent, kNotDir if `dir` is not a directory.
  virtual Result<Ino> lookup(Ino dir, std::string_view name) const = 0;

  // Calls `fn(entry, next_cookie)` for the entries of `dir` starting at
  // position `cookie` (0 = first), in the image's sorted order, until `fn`
  // returns false or the directory ends. The listing includes "." and ".."
  // (v5 synthesizes them at cookies 0 and 1). Cookies are stable: the same
  // cookie always resumes at the same entry.
  using DirVisitor = std::function<bool(const DirEntry& entry, uint64_t next_cookie)>;
  virtual Status read_dir(Ino dir, uint64_t cookie, const DirVisitor& fn) const = 0;

  virtual Result<std::string> read_link(Ino ino) const = 0;
  // Empty vector when the inode has none.
  virtual Result<std::vector<Xattr>> xattrs(Ino ino) const = 0;

  // The chunks covering file bytes [offset, offset+len) in file order,
  // clipped to the file size (empty for an empty range or past EOF). File
  // bytes not covered by any returned chunk are holes and read as zeros
  // (v5 HAS_HOLE files, v6 null block addresses).
  // kIsDir / kInvalidInput for non-regular inodes.
  virtual Result<std::vector<ChunkRef>> chunks(Ino ino, uint64_t offset, uint64_t len) const = 0;
};

}  // namespace nydus::bootstrap
