// RAFS v6 reader: the upstream fixture's facts (rafs-format.md §8.3), images
// synthesized here for what the fixture lacks (symlinks, xattrs, devices,
// compact inodes, holes, hardlinks, multi-block directories), refusals, and
// a mutation sweep (truncations, bit and byte flips) that must either fail
// open() with a message or leave a fully walkable image.
#include <malloc.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <catch2/catch.hpp>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "bootstrap/image.h"
#include "common/digest.h"
#include "test/test_util.h"

using namespace nydus;
using namespace nydus::bootstrap;

namespace {

const char* const kBlobId = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef";

std::vector<uint8_t> fixture_bytes() { return test::read_file(test::fixture("bootstrap/rafs-v6-2.2.boot")); }

std::string hex_of(const Digest& d) { return to_hex(d); }

void put16(std::vector<uint8_t>& b, size_t off, uint16_t v) { std::memcpy(&b[off], &v, 2); }
void put32(std::vector<uint8_t>& b, size_t off, uint32_t v) { std::memcpy(&b[off], &v, 4); }
void put64(std::vector<uint8_t>& b, size_t off, uint64_t v) { std::memcpy(&b[off], &v, 8); }

// Walks everything reachable from the root through every accessor. Returns
// "" when all calls succeed and agree, else what failed.
std::string walk_all(const Image& img, size_t* inodes_seen = nullptr) {
  std::deque<Ino> pending{img.root()};
  std::set<Ino> seen{img.root()};
  size_t budget = 1000000;
  while (!pending.empty()) {
    if (--budget == 0) return "walk did not end";
    Ino ino = pending.front();
    pending.pop_front();
    auto attr = img.inode(ino);
    if (!attr.ok()) return "inode: " + attr.status().message();
    if (attr->ino != ino) return "inode: wrong ino";
    auto x = img.xattrs(ino);
    if (!x.ok()) return "xattrs: " + x.status().message();
    const uint32_t type = attr->mode & S_IFMT;
    if (type == S_IFDIR) {
      std::vector<DirEntry> entries;
      std::string err;
      Status s = img.read_dir(ino, 0, [&](const DirEntry& e, uint64_t next) {
        if (next != entries.size() + 1) err = "read_dir: bad cookie";
        entries.push_back(e);
        return true;
      });
      if (!s.ok()) return "read_dir: " + s.message();
      if (!err.empty()) return err;
      if (auto p = img.parent(ino); !p.ok()) return "parent: " + p.status().message();
      for (const auto& e : entries) {
        auto found = img.lookup(ino, e.name);
        if (!found.ok() || *found != e.ino) return "lookup '" + e.name + "' failed";
        if (e.name == "." || e.name == "..") continue;
        auto child = img.inode(e.ino);
        if (!child.ok()) return "inode of entry: " + child.status().message();
        if ((child->mode & S_IFMT) != e.type) return "entry type differs from inode mode";
        if (seen.insert(e.ino).second) pending.push_back(e.ino);
      }
      // Resuming from the middle yields the same suffix.
      if (entries.size() > 2) {
        size_t from = entries.size() / 2, i = from;
        Status r = img.read_dir(ino, from, [&](const DirEntry& e, uint64_t) {
          if (i >= entries.size() || e.name != entries[i].name) err = "read_dir resume differs";
          ++i;
          return true;
        });
        if (!r.ok()) return "read_dir(resume): " + r.message();
        if (!err.empty()) return err;
      }
    } else if (type == S_IFLNK) {
      auto t = img.read_link(ino);
      if (!t.ok()) return "read_link: " + t.status().message();
      if (t->size() != attr->size) return "read_link: size differs";
    } else if (type == S_IFREG) {
      auto all = img.chunks(ino, 0, attr->size);
      if (!all.ok()) return "chunks: " + all.status().message();
      for (const auto& c : *all)
        if (c.uncompressed_size == 0 || c.file_offset >= attr->size) return "chunks: bad chunk";
      if (attr->size > 0) {
        auto tail = img.chunks(ino, attr->size - 1, 4096);
        if (!tail.ok()) return "chunks(tail): " + tail.status().message();
      }
      auto past = img.chunks(ino, attr->size, 100);
      if (!past.ok() || !past->empty()) return "chunks past EOF";
    }
  }
  if (inodes_seen) *inodes_seen = seen.size();
  return "";
}

// ---------------------------------------------------------------------------
// A small RAFS v6 writer for tests: one blob, FLAT_PLAIN directories,
// inline or plain symlinks, chunk-based files with raw index entries.

struct ChunkIdx {
  uint16_t device = 1;  // blob index + 1
  uint32_t ci = 0;
  uint32_t blkaddr = 0;
};

struct ChunkRec {
  uint8_t digest0 = 0;
  uint32_t blob_index = 0;
  uint32_t flags = 1;
  uint32_t c_size = 0, d_size = 0;
  uint64_t c_off = 0, d_off = 0;
  uint32_t index = 0;
  uint32_t crc = 0;
};

struct Entry {
  std::string name;
  int node = 0;
  int ft = -1;  // override the dirent file type
};

struct TNode {
  uint32_t mode = 0;
  bool compact = false;
  uint32_t nlink = 1;
  uint32_t uid = 0, gid = 0;
  uint64_t mtime = 0;
  uint32_t mtime_nsec = 0;
  uint64_t size = 0;
  std::string link;
  bool inline_data = true;
  std::vector<ChunkIdx> chunks;
  uint32_t chunk_format = 0;  // 0: 0x20 | log2(chunk size) - 12
  std::vector<std::tuple<uint8_t, std::string, std::string>> xattrs;
  uint32_t rdev = 0;
  int parent = 0;
  std::vector<Entry> entries;  // directories, without "." and ".."
  bool sorted = true;
  // Filled by build().
  uint64_t nid = 0;
  uint64_t offset = 0;
  uint32_t data_block = 0;
};

class V6Builder {
 public:
  uint32_t chunk_size = 0x100000;
  uint64_t flags = 0x194;
  uint32_t blob_features = 0x70000021;
  uint32_t blob_chunk_count = 4;
  uint64_t blob_c_size = 1 << 24, blob_d_size = 1 << 24;
  std::string blob_id = std::string(64, 'a');
  std::vector<ChunkRec> records;
  std::vector<int> prefetch;  // node ids
  std::vector<TNode> nodes;
  // Order in which inodes are laid out (node ids, root first); empty:
  // creation order.
  std::vector<int> layout;

  V6Builder() {
    TNode root;
    root.mode = S_IFDIR | 0755;
    root.nlink = 2;
    nodes.push_back(root);
  }
  int add(int parent, const std::string& name, TNode n) {
    n.parent = parent;
    nodes.push_back(n);
    int id = static_cast<int>(nodes.size() - 1);
    nodes[parent].entries.push_back({name, id});
    return id;
  }
  int dir(int parent, const std::string& name) {
    TNode n;
    n.mode = S_IFDIR | 0755;
    n.nlink = 2;
    nodes[parent].nlink++;
    return add(parent, name, n);
  }
  int file(int parent, const std::string& name, uint64_t size, std::vector<ChunkIdx> chunks) {
    TNode n;
    n.mode = S_IFREG | 0644;
    n.size = size;
    n.chunks = std::move(chunks);
    n.mtime = 1700000000;
    n.mtime_nsec = 5;
    return add(parent, name, n);
  }
  int symlink(int parent, const std::string& name, const std::string& target, bool inl) {
    TNode n;
    n.mode = S_IFLNK | 0777;
    n.link = target;
    n.size = target.size();
    n.inline_data = inl;
    return add(parent, name, n);
  }
  int special(int parent, const std::string& name, uint32_t mode, uint32_t rdev, bool compact) {
    TNode n;
    n.mode = mode;
    n.rdev = rdev;
    n.compact = compact;
    return add(parent, name, n);
  }
  void link(int parent, const std::string& name, int target, int ft = -1) {
    nodes[parent].entries.push_back({name, target, ft});
  }

  static uint8_t ft_of(uint32_t mode) {
    switch (mode & S_IFMT) {
      case S_IFREG: return 1;
      case S_IFDIR: return 2;
      case S_IFCHR: return 3;
      case S_IFBLK: return 4;
      case S_IFIFO: return 5;
      case S_IFSOCK: return 6;
      case S_IFLNK: return 7;
    }
    return 0;
  }
  static uint64_t align(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

  uint64_t xattr_size(const TNode& n) const {
    if (n.xattrs.empty()) return 0;
    uint64_t s = 12;
    for (const auto& [idx, suffix, value] : n.xattrs) s += align(4 + suffix.size() + value.size(), 4);
    return s;
  }

  // Dirent blocks of a directory: (name, nid, ft) per block.
  using Dirent = std::tuple<std::string, int, int>;  // name, node, ft override
  std::vector<std::vector<Dirent>> dir_blocks(int id, uint64_t* size) const {
    const TNode& n = nodes[id];
    std::vector<Dirent> all{{".", id, -1}, {"..", id == 0 ? 0 : n.parent, -1}};
    for (const auto& e : n.entries) all.emplace_back(e.name, e.node, e.ft);
    if (n.sorted) std::sort(all.begin(), all.end());
    std::vector<std::vector<Dirent>> blocks(1);
    uint64_t used = 0;
    for (const auto& d : all) {
      uint64_t need = 12 + std::get<0>(d).size();
      if (used + need > 4096) {
        blocks.emplace_back();
        used = 0;
      }
      blocks.back().push_back(d);
      used += need;
    }
    *size = (blocks.size() - 1) * 4096 + used;
    return blocks;
  }

  std::vector<uint8_t> build() {
    const uint64_t meta_base = 0x2000;
    uint64_t cursor = 0x3000;  // root at nid 128
    std::vector<uint64_t> dir_sizes(nodes.size());
    std::vector<int> order = layout;
    if (order.empty())
      for (size_t i = 0; i < nodes.size(); ++i) order.push_back(static_cast<int>(i));
    REQUIRE(order.size() == nodes.size());
    for (int i : order) {
      TNode& n = nodes[i];
      if ((n.mode & S_IFMT) == S_IFDIR) dir_blocks(i, &dir_sizes[i]);
      uint64_t body = (n.compact ? 32 : 64) + xattr_size(n);
      uint64_t total = body;
      if ((n.mode & S_IFMT) == S_IFREG) total = align(body, 8) + 8 * n.chunks.size();
      if ((n.mode & S_IFMT) == S_IFLNK && n.inline_data) total = body + n.link.size();
      if (cursor % 4096 + total > 4096) cursor = align(cursor, 4096);
      n.offset = cursor;
      n.nid = (cursor - meta_base) / 32;
      cursor = align(cursor + total, 32);
    }
    uint64_t data = align(cursor, 4096);
    for (size_t i = 0; i < nodes.size(); ++i) {
      TNode& n = nodes[i];
      if ((n.mode & S_IFMT) == S_IFDIR) {
        n.data_block = static_cast<uint32_t>(data / 4096);
        data += align(dir_sizes[i], 4096);
      } else if ((n.mode & S_IFMT) == S_IFLNK && !n.inline_data) {
        n.data_block = static_cast<uint32_t>(data / 4096);
        data += align(n.link.size(), 4096);
      }
    }
    uint64_t chunk_table = records.empty() ? 0 : data;
    uint64_t end = align(data + 80 * records.size(), 4096);
    std::vector<uint8_t> b(end);

    // EROFS superblock and extended superblock.
    put32(b, 1024, 0xE0F5E1E2);
    put32(b, 1032, 0x40000000);
    b[1036] = 12;
    put16(b, 1038, static_cast<uint16_t>(nodes[0].nid));
    put64(b, 1040, nodes.size());
    put32(b, 1064, 2);  // meta_blkaddr
    put32(b, 1104, 0xC);
    put16(b, 1110, 1);   // extra_devices
    put16(b, 1112, 11);  // devt_slotoff
    put64(b, 1152, flags);
    put64(b, 1160, 0x1000);
    put32(b, 1168, 256);
    put32(b, 1172, chunk_size);
    put64(b, 1176, chunk_table);
    put64(b, 1184, 80 * records.size());
    if (!prefetch.empty()) {
      put64(b, 1192, 0x1100);
      put32(b, 1200, static_cast<uint32_t>(4 * prefetch.size()));
      for (size_t i = 0; i < prefetch.size(); ++i)
        put32(b, 0x1100 + 4 * i, static_cast<uint32_t>(nodes[prefetch[i]].nid));
    }
    // Device slot and blob entry.
    std::memcpy(&b[1408], blob_id.data(), 64);
    put32(b, 1408 + 64, static_cast<uint32_t>(blob_d_size / 4096));
    std::memcpy(&b[0x1000], blob_id.data(), 64);
    put32(b, 0x1000 + 68, chunk_size);
    put32(b, 0x1000 + 72, blob_chunk_count);
    put32(b, 0x1000 + 76, 3);
    put32(b, 0x1000 + 84, blob_features);
    put64(b, 0x1000 + 88, blob_c_size);
    put64(b, 0x1000 + 96, blob_d_size);
    put64(b, 0x1000 + 112, blob_c_size - 100);
    put64(b, 0x1000 + 120, 16 * blob_chunk_count);
    put64(b, 0x1000 + 128, 16 * blob_chunk_count);

    for (size_t i = 0; i < nodes.size(); ++i) {
      const TNode& n = nodes[i];
      const uint64_t o = n.offset;
      const uint32_t type = n.mode & S_IFMT;
      uint32_t layout = 0, i_u = 0;
      if (type == S_IFDIR) {
        i_u = n.data_block;
      } else if (type == S_IFLNK) {
        layout = n.inline_data ? 2 : 0;
        i_u = n.inline_data ? 0 : n.data_block;
      } else if (type == S_IFREG) {
        layout = 4;
        i_u = n.chunk_format ? n.chunk_format : 0x20 | (__builtin_ctz(chunk_size) - 12);
      } else if (type == S_IFCHR || type == S_IFBLK) {
        i_u = n.rdev;
      }
      uint64_t size = type == S_IFDIR ? dir_sizes[i] : n.size;
      uint64_t xs = xattr_size(n);
      put16(b, o, static_cast<uint16_t>((n.compact ? 0 : 1) | layout << 1));
      put16(b, o + 2, static_cast<uint16_t>(xs ? (xs - 12) / 4 + 1 : 0));
      put16(b, o + 4, static_cast<uint16_t>(n.mode));
      put32(b, o + 16, i_u);
      put32(b, o + 20, static_cast<uint32_t>(i + 1));
      if (n.compact) {
        put16(b, o + 6, static_cast<uint16_t>(n.nlink));
        put32(b, o + 8, static_cast<uint32_t>(size));
        put16(b, o + 24, static_cast<uint16_t>(n.uid));
        put16(b, o + 26, static_cast<uint16_t>(n.gid));
      } else {
        put64(b, o + 8, size);
        put32(b, o + 24, n.uid);
        put32(b, o + 28, n.gid);
        put64(b, o + 32, n.mtime);
        put32(b, o + 40, n.mtime_nsec);
        put32(b, o + 44, n.nlink);
      }
      uint64_t p = o + (n.compact ? 32 : 64);
      if (xs) {
        p += 12;
        for (const auto& [idx, suffix, value] : n.xattrs) {
          b[p] = static_cast<uint8_t>(suffix.size());
          b[p + 1] = idx;
          put16(b, p + 2, static_cast<uint16_t>(value.size()));
          std::memcpy(&b[p + 4], suffix.data(), suffix.size());
          std::memcpy(&b[p + 4 + suffix.size()], value.data(), value.size());
          p += align(4 + suffix.size() + value.size(), 4);
        }
      }
      if (type == S_IFREG) {
        p = align(p, 8);
        for (const auto& c : n.chunks) {
          put16(b, p, static_cast<uint16_t>(c.ci & 0xffff));
          put16(b, p + 2, static_cast<uint16_t>((c.ci >> 16) << 8 | c.device));
          put32(b, p + 4, c.blkaddr);
          p += 8;
        }
      } else if (type == S_IFLNK) {
        uint64_t at = n.inline_data ? p : uint64_t{n.data_block} * 4096;
        std::memcpy(&b[at], n.link.data(), n.link.size());
      } else if (type == S_IFDIR) {
        uint64_t dsize = 0;
        auto blocks = dir_blocks(static_cast<int>(i), &dsize);
        for (size_t k = 0; k < blocks.size(); ++k) {
          uint64_t base = (uint64_t{n.data_block} + k) * 4096;
          uint64_t nameoff = 12 * blocks[k].size();
          for (size_t j = 0; j < blocks[k].size(); ++j) {
            const auto& [name, node, ft] = blocks[k][j];
            put64(b, base + 12 * j, nodes[node].nid);
            put16(b, base + 12 * j + 8, static_cast<uint16_t>(nameoff));
            b[base + 12 * j + 10] = ft >= 0 ? static_cast<uint8_t>(ft) : ft_of(nodes[node].mode);
            std::memcpy(&b[base + nameoff], name.data(), name.size());
            nameoff += name.size();
          }
        }
      }
    }
    for (size_t i = 0; i < records.size(); ++i) {
      const ChunkRec& r = records[i];
      uint64_t o = chunk_table + 80 * i;
      b[o] = r.digest0;
      put32(b, o + 32, r.blob_index);
      put32(b, o + 36, r.flags);
      put32(b, o + 40, r.c_size);
      put32(b, o + 44, r.d_size);
      put64(b, o + 48, r.c_off);
      put64(b, o + 56, r.d_off);
      put32(b, o + 72, r.index);
      put32(b, o + 76, r.crc);
    }
    return b;
  }
};

// The rich image: every inode kind the fixture lacks.
struct Rich {
  V6Builder b;
  int sub = 0, data = 0, empty = 0, small = 0, big = 0, ln_inline = 0, ln_plain = 0, chr = 0, fifo = 0,
      sock = 0;
  std::vector<uint8_t> bytes;

  Rich() {
    const uint32_t cs = b.chunk_size;
    b.blob_chunk_count = 8;
    // ci 0 at d_off 0, ci 2 at blk 0x100 (1 MiB); the remaining chunks are
    // not in the chunk table.
    b.records.push_back({0x11, 0, 1, 1000, cs, 0, 0, 0, 0});
    b.records.push_back({0x22, 0, 0x10, 777, 777, 5000, 0x300000, 2, 0xabcdef});
    data = b.file(0, "data", 2 * uint64_t{cs} + 777, {{1, 0, 0}, {1, 9, 0xFFFFFFFF}, {1, 2, 0x300}});
    b.nodes[data].nlink = 2;
    b.nodes[data].xattrs = {{1, "foo", "bar"},
                            {6, "capability", std::string("\x01\x00\x00\x02", 4)},
                            {4, "overlay.opaque", "y"},
                            {2, "", "acl"}};
    b.link(0, "data-link", data);
    empty = b.file(0, "empty", 0, {});
    small = b.file(0, "small", 100, {{1, 5, 0x400}});  // ci 5: located through blob.meta later
    b.nodes[small].compact = true;
    b.nodes[small].uid = 1000;
    b.nodes[small].gid = 1001;
    // Page-cache sharing: chunk bits cover the whole file (4 MiB).
    big = b.file(0, "big", 3 * uint64_t{cs} - 100, {{1, 6, 0x500}, {1, 7, 0x600}, {1, 1, 0x700}});
    b.nodes[big].chunk_format = 0x20 | (22 - 12);
    ln_inline = b.symlink(0, "ln-inline", "../some/target", true);
    ln_plain = b.symlink(0, "ln-plain", std::string(4096, 'x'), false);
    chr = b.special(0, "null", S_IFCHR | 0666, 0x103, false);
    fifo = b.special(0, "fifo", S_IFIFO | 0644, 0, true);
    sock = b.special(0, "sock", S_IFSOCK | 0755, 0, true);
    sub = b.dir(0, "sub");
    for (int i = 0; i < 400; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "f%03d-%s", i, std::string(20, 'n').c_str());
      b.file(sub, name, 0, {});
    }
    int deep = sub;
    for (int i = 0; i < 8; ++i) deep = b.dir(deep, "d");
    b.symlink(deep, "bottom", "/", true);
    b.prefetch = {0, data};
    bytes = b.build();
  }
};

Status open_status(const std::vector<uint8_t>& bytes) {
  auto img = Image::from_bytes(bytes, "t.boot");
  return img.ok() ? Status::Ok() : img.status();
}

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("v6 fixture: superblock, blob table, inodes (rafs-format.md 8.3)", "[bootstrap][v6]") {
  auto opened = Image::open(test::fixture("bootstrap/rafs-v6-2.2.boot"));
  REQUIRE(opened.ok());
  const Image& img = **opened;

  const SuperInfo& sb = img.super();
  CHECK(sb.version == 6);
  CHECK(sb.flags == 0x194);
  CHECK(sb.chunk_size == 0x100000);
  CHECK(sb.compressor == Compressor::kZstd);
  CHECK(sb.digester == Digester::kBlake3);
  CHECK(sb.explicit_uid_gid);
  CHECK_FALSE(sb.has_xattr);
  CHECK(sb.root_nid == 128);
  CHECK(sb.meta_blkaddr == 2);
  CHECK(sb.inodes_count == 3);
  CHECK(img.root() == 128);
  CHECK(img.prefetch_table().empty());

  REQUIRE(img.blobs().size() == 1);
  const BlobInfo& blob = img.blobs()[0];
  CHECK(blob.index == 0);
  CHECK(blob.id == kBlobId);
  CHECK(blob.chunk_count == 2);
  CHECK(blob.chunk_size == 0x100000);
  CHECK(blob.features == 0x70000021);
  CHECK(blob.compressor == Compressor::kZstd);
  CHECK(blob.digester == Digester::kBlake3);
  CHECK(blob.compressed_size == 14554);
  CHECK(blob.uncompressed_size == 36864);
  CHECK(blob.meta_ci_compressor == Compressor::kNone);
  CHECK(blob.meta_ci_offset == 0x207a);
  CHECK(blob.meta_ci_compressed_size == 32);
  CHECK(blob.meta_ci_uncompressed_size == 32);
  CHECK(blob.toc_size == 1024);
  CHECK(hex_of(blob.toc_digest).substr(0, 8) == "cfc89ed0");

  auto root = img.inode(128);
  REQUIRE(root.ok());
  CHECK(root->ino == 128);
  CHECK(root->mode == (S_IFDIR | 0755));
  CHECK(root->size == 67);
  CHECK(root->nlink == 2);
  CHECK(root->mtime == 0);
  CHECK(root->blocks == 1);

  auto lib = img.lookup(128, "lib.rs");
  REQUIRE(lib.ok());
  CHECK(*lib == 133);
  auto a = img.inode(133);
  REQUIRE(a.ok());
  CHECK(a->mode == 0100644);
  CHECK(a->size == 16931);
  CHECK(a->blocks == 34);
  CHECK(a->nlink == 1);
  CHECK(a->mtime == 1676819553);
  CHECK(a->mtime_nsec == 628661334);
  CHECK(a->uid == 0);
  CHECK(a->gid == 0);
  CHECK(a->rdev == 0);

  auto sync = img.lookup(128, "sync_io.rs");
  REQUIRE(sync.ok());
  CHECK(*sync == 136);
  auto s = img.inode(136);
  REQUIRE(s.ok());
  CHECK(s->size == 13400);
  CHECK(s->mode == 0100644);

  auto x = img.xattrs(133);
  REQUIRE(x.ok());
  CHECK(x->empty());
}

TEST_CASE("v6 fixture: chunk references equal the chunk table", "[bootstrap][v6]") {
  auto opened = Image::open(test::fixture("bootstrap/rafs-v6-2.2.boot"));
  REQUIRE(opened.ok());
  const Image& img = **opened;

  auto lib = img.chunks(133, 0, UINT64_MAX);
  REQUIRE(lib.ok());
  REQUIRE(lib->size() == 1);
  const ChunkRef& c0 = (*lib)[0];
  CHECK(c0.located);
  CHECK(c0.blob_index == 0);
  CHECK(c0.chunk_index == 0);
  CHECK(c0.file_offset == 0);
  CHECK(c0.compressed_offset == 0);
  CHECK(c0.compressed_size == 4828);
  CHECK(c0.uncompressed_offset == 0);
  CHECK(c0.uncompressed_size == 16931);
  CHECK(c0.compressed);
  CHECK_FALSE(c0.has_crc32);
  CHECK(hex_of(c0.digest).substr(0, 8) == "f7e2735f");

  auto sync = img.chunks(136, 100, 10);
  REQUIRE(sync.ok());
  REQUIRE(sync->size() == 1);
  const ChunkRef& c1 = (*sync)[0];
  CHECK(c1.located);
  CHECK(c1.chunk_index == 1);
  CHECK(c1.compressed_offset == 0x12dc);
  CHECK(c1.compressed_size == 2974);
  CHECK(c1.uncompressed_offset == 0x5000);
  CHECK(c1.uncompressed_size == 13400);
  CHECK(c1.compressed);
  CHECK(hex_of(c1.digest).substr(0, 8) == "812465bc");

  CHECK(img.chunks(136, 13400, 10)->empty());
  CHECK(img.chunks(136, 0, 0)->empty());
  CHECK(img.chunks(136, 13399, 1)->size() == 1);
  CHECK(img.chunks(128, 0, 1).status().code() == Code::kIsDir);
}

TEST_CASE("v6 fixture: read_dir, lookup, parent", "[bootstrap][v6]") {
  auto opened = Image::open(test::fixture("bootstrap/rafs-v6-2.2.boot"));
  REQUIRE(opened.ok());
  const Image& img = **opened;

  std::vector<std::tuple<std::string, Ino, uint32_t, uint64_t>> got;
  REQUIRE(img.read_dir(128, 0,
                       [&](const DirEntry& e, uint64_t next) {
                         got.emplace_back(e.name, e.ino, e.type, next);
                         return true;
                       })
              .ok());
  using T = std::tuple<std::string, Ino, uint32_t, uint64_t>;
  CHECK(got == std::vector<T>{T{".", 128, S_IFDIR, 1}, T{"..", 128, S_IFDIR, 2}, T{"lib.rs", 133, S_IFREG, 3},
                              T{"sync_io.rs", 136, S_IFREG, 4}});

  // Resume at a cookie, stop early, past the end.
  std::vector<std::string> names;
  REQUIRE(img.read_dir(128, 2,
                       [&](const DirEntry& e, uint64_t) {
                         names.push_back(e.name);
                         return false;
                       })
              .ok());
  CHECK(names == std::vector<std::string>{"lib.rs"});
  names.clear();
  REQUIRE(img.read_dir(128, 4,
                       [&](const DirEntry& e, uint64_t) {
                         names.push_back(e.name);
                         return true;
                       })
              .ok());
  CHECK(names.empty());
  REQUIRE(img.read_dir(128, 1000, [&](const DirEntry&, uint64_t) { return true; }).ok());

  CHECK(*img.lookup(128, ".") == 128);
  CHECK(*img.lookup(128, "..") == 128);
  CHECK(img.lookup(128, "nope").status().code() == Code::kNotFound);
  CHECK(img.lookup(128, "").status().code() == Code::kNotFound);
  CHECK(img.lookup(128, "lib.r").status().code() == Code::kNotFound);
  CHECK(img.lookup(128, "zzz").status().code() == Code::kNotFound);
  CHECK(img.lookup(133, "x").status().code() == Code::kNotDir);
  CHECK(img.read_dir(133, 0, [](const DirEntry&, uint64_t) { return true; }).code() == Code::kNotDir);
  CHECK(*img.parent(128) == 128);
  CHECK(img.parent(133).status().code() == Code::kNotDir);
  CHECK(img.inode(129).status().code() == Code::kNotFound);
  CHECK(img.inode(0).status().code() == Code::kNotFound);
  CHECK(img.inode(UINT64_MAX).status().code() == Code::kNotFound);
  CHECK_FALSE(img.read_link(133).ok());
  CHECK(walk_all(img).empty());
}

TEST_CASE("v6 synthesized image: every inode kind", "[bootstrap][v6]") {
  Rich r;
  auto opened = Image::from_bytes(r.bytes, "rich.boot");
  INFO(opened.status().message());
  REQUIRE(opened.ok());
  const Image& img = **opened;
  const auto nid = [&](int node) { return r.b.nodes[node].nid; };
  size_t seen = 0;
  CHECK(walk_all(img, &seen).empty());
  CHECK(seen == r.b.nodes.size());
  CHECK(img.super().inodes_count == r.b.nodes.size());
  CHECK(img.prefetch_table() == std::vector<Ino>{nid(0), nid(r.data)});

  // Hardlink: both names give the same nid.
  CHECK(*img.lookup(img.root(), "data") == nid(r.data));
  CHECK(*img.lookup(img.root(), "data-link") == nid(r.data));

  // Chunks: located, hole, not in the chunk table.
  auto ch = img.chunks(nid(r.data), 0, UINT64_MAX);
  REQUIRE(ch.ok());
  REQUIRE(ch->size() == 2);
  CHECK((*ch)[0].located);
  CHECK((*ch)[0].file_offset == 0);
  CHECK((*ch)[0].compressed_size == 1000);
  CHECK((*ch)[0].compressed);
  CHECK((*ch)[1].located);
  CHECK((*ch)[1].file_offset == 0x200000);
  CHECK((*ch)[1].chunk_index == 2);
  CHECK((*ch)[1].uncompressed_offset == 0x300000);
  CHECK((*ch)[1].uncompressed_size == 777);
  CHECK_FALSE((*ch)[1].compressed);
  CHECK((*ch)[1].has_crc32);
  CHECK((*ch)[1].crc32 == 0xabcdef);
  CHECK(img.chunks(nid(r.data), 0x100000, 0x100000)->empty());  // the hole

  auto small = img.chunks(nid(r.small), 0, 100);
  REQUIRE(small.ok());
  REQUIRE(small->size() == 1);
  CHECK_FALSE((*small)[0].located);
  CHECK((*small)[0].chunk_index == 5);
  CHECK((*small)[0].uncompressed_offset == 0x400000);
  CHECK((*small)[0].uncompressed_size == 100);

  auto big = img.chunks(nid(r.big), 0x150000, 0x100000);  // spans chunks 1 and 2
  REQUIRE(big.ok());
  REQUIRE(big->size() == 2);
  CHECK((*big)[0].chunk_index == 7);
  CHECK((*big)[1].chunk_index == 1);
  CHECK((*big)[1].uncompressed_size == 0x100000 - 100);
  CHECK(img.chunks(nid(r.empty), 0, 10)->empty());

  // Attributes.
  auto small_attr = img.inode(nid(r.small));
  CHECK(small_attr->uid == 1000);
  CHECK(small_attr->gid == 1001);
  CHECK(small_attr->mtime == 0);
  CHECK(small_attr->size == 100);
  auto data_attr = img.inode(nid(r.data));
  CHECK(data_attr->nlink == 2);
  CHECK(data_attr->mtime == 1700000000);
  CHECK(data_attr->mtime_nsec == 5);
  CHECK(img.inode(nid(r.chr))->rdev == 0x103);
  CHECK(img.inode(nid(r.chr))->mode == (S_IFCHR | 0666));
  CHECK(img.inode(nid(r.fifo))->mode == (S_IFIFO | 0644));
  CHECK(img.inode(nid(r.sock))->mode == (S_IFSOCK | 0755));
  CHECK(img.chunks(nid(r.fifo), 0, 1).status().code() == Code::kInvalidInput);

  // Symlinks.
  CHECK(*img.read_link(nid(r.ln_inline)) == "../some/target");
  CHECK(*img.read_link(nid(r.ln_plain)) == std::string(4096, 'x'));

  // Xattrs with every prefix kind.
  auto x = img.xattrs(nid(r.data));
  REQUIRE(x.ok());
  std::map<std::string, std::string> xm;
  for (const auto& e : *x) xm[e.name] = e.value;
  CHECK(xm == std::map<std::string, std::string>{{"user.foo", "bar"},
                                                 {"security.capability", std::string("\x01\x00\x00\x02", 4)},
                                                 {"trusted.overlay.opaque", "y"},
                                                 {"system.posix_acl_access", "acl"}});

  // Multi-block directory: lookup and listing across blocks.
  Ino sub = *img.lookup(img.root(), "sub");
  CHECK(*img.parent(sub) == img.root());
  REQUIRE(img.inode(sub)->size > 3 * 4096);
  std::vector<std::string> names;
  REQUIRE(img.read_dir(sub, 0,
                       [&](const DirEntry& e, uint64_t) {
                         names.push_back(e.name);
                         return true;
                       })
              .ok());
  CHECK(names.size() == 400 + 1 + 2);
  CHECK(std::is_sorted(names.begin(), names.end()));
  for (int i = 0; i < 400; i += 7) {
    char name[64];
    std::snprintf(name, sizeof name, "f%03d-%s", i, std::string(20, 'n').c_str());
    CHECK(img.lookup(sub, name).ok());
  }
  CHECK(img.lookup(sub, "f999").status().code() == Code::kNotFound);
  CHECK(img.lookup(sub, "a").status().code() == Code::kNotFound);
  // Cookies stay stable across block boundaries.
  std::vector<std::string> tail;
  REQUIRE(img.read_dir(sub, 300,
                       [&](const DirEntry& e, uint64_t) {
                         tail.push_back(e.name);
                         return true;
                       })
              .ok());
  CHECK(tail == std::vector<std::string>(names.begin() + 300, names.end()));

  // Deep chain: parent() walks back to the root.
  Ino cur = *img.lookup(sub, "d");
  int depth = 1;
  for (auto next = img.lookup(cur, "d"); next.ok(); next = img.lookup(cur, "d")) {
    cur = *next;
    ++depth;
  }
  CHECK(depth == 8);
  CHECK(*img.read_link(*img.lookup(cur, "bottom")) == "/");
  for (int i = 0; i < 8; ++i) cur = *img.parent(cur);
  CHECK(cur == sub);
}

TEST_CASE("v6 refusals name the structure", "[bootstrap][v6]") {
  auto expect = [](V6Builder& b, Code code, const std::string& needle) {
    auto bytes = b.build();
    Status s = open_status(bytes);
    INFO(s.message());
    CHECK(s.code() == code);
    CHECK(s.message().find("bootstrap t.boot: ") == 0);
    CHECK(s.message().find(needle) != std::string::npos);
    CHECK(s.message().find('\n') == std::string::npos);
  };
  SECTION("cycle through a directory entry") {
    V6Builder b;
    int d = b.dir(0, "d");
    b.link(d, "loop", 0);
    expect(b, Code::kInvalidInput, "reached twice");
  }
  SECTION("hard-linked directory") {
    V6Builder b;
    int d = b.dir(0, "d");
    b.link(0, "e", d);
    expect(b, Code::kInvalidInput, "reached twice");
  }
  SECTION("dirent file type differs from the inode") {
    V6Builder b;
    b.file(0, "f", 0, {});
    b.nodes[0].entries.back().ft = 7;
    expect(b, Code::kInvalidInput, "does not match");
  }
  SECTION("unsorted names") {
    V6Builder b;
    b.file(0, "b", 0, {});
    b.file(0, "a", 0, {});
    b.nodes[0].sorted = false;
    expect(b, Code::kInvalidInput, "sorted");
  }
  SECTION("chunk index names a missing blob") {
    V6Builder b;
    b.file(0, "f", 10, {{8, 0, 0}});
    expect(b, Code::kInvalidInput, "chunk index 0 points at blob 7, image has 1 blob");
  }
  SECTION("chunk index with device 0") {
    V6Builder b;
    b.file(0, "f", 10, {{0, 0, 0}});
    expect(b, Code::kInvalidInput, "blob index 0");
  }
  SECTION("chunk table size differs from the file's chunk") {
    V6Builder b;
    b.records.push_back({1, 0, 1, 50, 100, 0, 0, 0, 0});
    b.file(0, "f", 10, {{1, 0, 0}});
    expect(b, Code::kInvalidInput, "file needs 10");
  }
  SECTION("chunk table offset differs from blkaddr") {
    V6Builder b;
    b.records.push_back({1, 0, 1, 5, 10, 0, 0x1000, 0, 0});
    b.file(0, "f", 10, {{1, 0, 0}});
    expect(b, Code::kInvalidInput, "block address");
  }
  SECTION("chunk record past the blob") {
    V6Builder b;
    b.records.push_back({1, 0, 1, 5, 10, (1 << 24) - 2, 0, 0, 0});
    expect(b, Code::kInvalidInput, "chunk table record 0");
  }
  SECTION("chunk record with a bad blob index") {
    V6Builder b;
    b.records.push_back({1, 3, 1, 5, 10, 0, 0, 0, 0});
    expect(b, Code::kInvalidInput, "blob index 3");
  }
  SECTION("chunk not in the table lies past the blob") {
    V6Builder b;
    b.file(0, "f", 10, {{1, 0, 0x10000}});
    expect(b, Code::kInvalidInput, "past the blob");
  }
  SECTION("wrong chunk bits") {
    V6Builder b;
    int f = b.file(0, "f", 10, {{1, 0, 0}});
    b.nodes[f].chunk_format = 0x20 | 3;
    expect(b, Code::kInvalidInput, "chunk format");
  }
  SECTION("too many names for nlink") {
    V6Builder b;
    int f = b.file(0, "f", 0, {});
    b.link(0, "g", f);
    expect(b, Code::kInvalidInput, "nlink 1");
  }
  SECTION("symlink longer than 4096") {
    V6Builder b;
    b.symlink(0, "l", std::string(4097, 'y'), false);
    expect(b, Code::kInvalidInput, "symlink size");
  }
  SECTION("unknown xattr prefix") {
    V6Builder b;
    int f = b.file(0, "f", 0, {});
    b.nodes[f].xattrs = {{5, "lustre", "x"}};
    expect(b, Code::kInvalidInput, "name index 5");
  }
  SECTION("prefetch entry outside the tree") {
    V6Builder b;
    b.file(0, "f", 0, {});
    b.prefetch = {1};
    auto bytes = b.build();
    put32(bytes, 0x1100, 4000);
    Status s = open_status(bytes);
    CHECK(s.message().find("prefetch table") != std::string::npos);
  }
  SECTION("unsupported blob features") {
    for (auto [bit, name] : {std::pair{0x8u, "ZRAN"}, std::pair{0x10u, "SEPARATE"}, std::pair{0x40u, "TARFS"},
                             std::pair{0x80u, "BATCH"}, std::pair{0x100u, "ENCRYPTED"}}) {
      V6Builder b;
      b.blob_features |= bit | 0x4;
      expect(b, Code::kUnsupported, name);
    }
  }
  SECTION("unknown blob feature bits, missing ALIGNED") {
    V6Builder b;
    b.blob_features |= 0x1000;
    expect(b, Code::kInvalidInput, "unknown blob features");
    V6Builder c;
    c.blob_features &= ~1u;
    expect(c, Code::kInvalidInput, "ALIGNED");
  }
  SECTION("bad blob id") {
    V6Builder b;
    b.blob_id = std::string(63, 'a') + "/";
    expect(b, Code::kInvalidInput, "blob id");
    V6Builder c;
    c.blob_id = std::string(64, 'x');  // inline-meta placeholder is fine
    CHECK(open_status(c.build()).ok());
  }
  SECTION("superblock flags") {
    V6Builder b;
    b.flags |= 0x200;
    expect(b, Code::kUnsupported, "TARFS_MODE");
    V6Builder c;
    c.flags |= 0x2;
    expect(c, Code::kInvalidInput, "exactly one compressor");
    V6Builder d;
    d.flags |= 0x8;
    expect(d, Code::kInvalidInput, "exactly one digester");
    V6Builder e;
    e.flags |= 0x400;
    expect(e, Code::kInvalidInput, "unknown flags");
    V6Builder f;
    f.chunk_size = 0x3000;
    expect(f, Code::kInvalidInput, "chunk size");
  }
  SECTION("patched inodes and superblock") {
    V6Builder b;
    int f = b.file(0, "f", 0, {});
    b.nodes[f].xattrs = {{1, "a", "b"}};
    auto base = b.build();
    const uint64_t off = b.nodes[f].offset;
    auto check = [&](std::vector<uint8_t> bytes, Code code, const std::string& needle) {
      Status s = open_status(bytes);
      INFO(s.message());
      CHECK(s.code() == code);
      CHECK(s.message().find(needle) != std::string::npos);
    };
    auto p = base;
    put16(p, off, 1 | 1 << 1);  // compressed layout
    check(p, Code::kUnsupported, "compressed data layout");
    p = base;
    put16(p, off, 1 | 4 << 1 | 0x10);
    check(p, Code::kInvalidInput, "i_format");
    p = base;
    p[off + 64 + 4] = 1;  // shared_count
    check(p, Code::kUnsupported, "shared xattrs");
    p = base;
    put16(p, off + 4, 0x1ff);  // no file type
    check(p, Code::kInvalidInput, "file type");
    p = base;
    p[1036] = 9;
    check(p, Code::kUnsupported, "512-byte blocks");
    p = base;
    put32(p, 1024 + 80, 0xC | 0x2);
    check(p, Code::kInvalidInput, "feature_incompat");
    p = base;
    put32(p, 1028, 1);
    check(p, Code::kInvalidInput, "checksum");
    p = base;
    put32(p, 1032, 0);
    check(p, Code::kInvalidInput, "RAFS_V6");
    p = base;
    put32(p, 1024 + 44, 1);
    check(p, Code::kUnsupported, "shared xattr area");
    p = base;
    p.resize(p.size() - 1);
    check(p, Code::kInvalidInput, "multiple of 4096");
    p = base;
    put16(p, 1038, 0xffff);  // root nid past the end
    check(p, Code::kInvalidInput, "inode nid 65535");
  }
}

namespace {

// The order upstream's builder lays inodes out in (§4.6): a directory, its
// non-directory children in name order, then its subdirectories the same
// way; a hard link's further names take no slot.
std::vector<int> upstream_layout(const V6Builder& b) {
  std::vector<int> order;
  std::vector<bool> placed(b.nodes.size(), false);
  auto walk = [&](auto&& self, int dir) -> void {
    order.push_back(dir);
    placed[dir] = true;
    std::vector<Entry> entries = b.nodes[dir].entries;
    std::sort(entries.begin(), entries.end(), [](const Entry& x, const Entry& y) { return x.name < y.name; });
    for (const auto& e : entries)
      if ((b.nodes[e.node].mode & S_IFMT) != S_IFDIR && !placed[e.node]) {
        order.push_back(e.node);
        placed[e.node] = true;
      }
    for (const auto& e : entries)
      if ((b.nodes[e.node].mode & S_IFMT) == S_IFDIR && !placed[e.node]) self(self, e.node);
  };
  walk(walk, 0);
  return order;
}

// path -> (nid, mode, size, chunk digests and offsets) for every name.
std::map<std::string, std::string> describe(const Image& img) {
  std::map<std::string, std::string> out;
  std::deque<std::pair<Ino, std::string>> pending{{img.root(), ""}};
  while (!pending.empty()) {
    auto [dir, path] = pending.front();
    pending.pop_front();
    REQUIRE(img.read_dir(dir, 0,
                         [&](const DirEntry& e, uint64_t) {
                           if (e.name == "." || e.name == "..") return true;
                           auto attr = img.inode(e.ino);
                           REQUIRE(attr.ok());
                           std::string d = std::to_string(attr->mode) + " " + std::to_string(attr->size);
                           if (e.type == S_IFDIR) pending.emplace_back(e.ino, path + "/" + e.name);
                           if (e.type == S_IFREG) {
                             auto chunks = img.chunks(e.ino, 0, attr->size);
                             REQUIRE(chunks.ok());
                             for (const auto& c : *chunks)
                               d += " " + std::to_string(c.chunk_index) + "@" +
                                    std::to_string(c.compressed_offset) + ":" + hex_of(c.digest).substr(0, 2);
                           }
                           out[path + "/" + e.name] = d;
                           return true;
                         })
                .ok());
  }
  return out;
}

// A tree of `dirs` directories with `files` one-chunk files each (plus a
// nested directory and a hard link), chunk `ci_step * i` for file i, and a
// chunk table in digest order, i.e. shuffled with respect to the files.
V6Builder chunky_tree(int dirs, int files, uint32_t ci_step) {
  V6Builder b;
  b.blob_chunk_count = ci_step == 1 ? static_cast<uint32_t>(dirs * files) : 0;
  uint32_t ci = 0;
  int first = -1;
  for (int d = 0; d < dirs; ++d) {
    int dir = b.dir(0, "dir" + std::to_string(d));
    if (d == 1) b.dir(dir, "nested");
    for (int f = 0; f < files; ++f, ci += ci_step) {
      const uint64_t d_off = uint64_t{ci / ci_step} * 4096;
      const uint32_t blkaddr = static_cast<uint32_t>(d_off / 4096);
      int node = b.file(dir, "f" + std::to_string(f), 100 + f, {{1, ci, blkaddr}});
      // digest0 is a permutation of the file order: the table is digest-sorted.
      b.records.push_back({static_cast<uint8_t>(ci / ci_step * 37 % 251), 0, 0, 100u + f, 100u + f,
                           d_off + 7, d_off, ci, 0});
      if (first < 0) first = node;
    }
  }
  b.nodes[first].nlink = 2;
  b.link(static_cast<int>(b.nodes.size() - 1 - files), "hardlink", first);
  std::sort(b.records.begin(), b.records.end(),
            [](const ChunkRec& x, const ChunkRec& y) { return x.digest0 < y.digest0; });
  return b;
}

}  // namespace

TEST_CASE("v6 open: chunk table in digest order, dense and sparse chunk indexes", "[bootstrap][v6]") {
  // Dense slot table; sorted sparse slots (chunk indexes stay below 2^24).
  for (uint32_t step : {1u, 50000u}) {
    INFO("chunk index step " << step);
    V6Builder b = chunky_tree(4, 50, step);
    // A second record for chunk index 0 that agrees on the location: the
    // first record in table order is the one served.
    ChunkRec again =
        *std::find_if(b.records.begin(), b.records.end(), [](const ChunkRec& r) { return r.index == 0; });
    const uint8_t first_digest = again.digest0;
    again.digest0 = 0xfe;
    b.records.push_back(again);
    auto bytes = b.build();
    auto img = Image::from_bytes(bytes, "t.boot");
    INFO(img.status().message());
    REQUIRE(img.ok());
    CHECK(walk_all(**img).empty());
    for (int d = 0; d < 4; ++d) {
      Ino dir = *(*img)->lookup((*img)->root(), "dir" + std::to_string(d));
      for (int f = 0; f < 50; f += 7) {
        Ino ino = *(*img)->lookup(dir, "f" + std::to_string(f));
        auto chunks = (*img)->chunks(ino, 0, UINT64_MAX);
        REQUIRE(chunks.ok());
        REQUIRE(chunks->size() == 1);
        const ChunkRef& c = (*chunks)[0];
        const uint32_t i = static_cast<uint32_t>(d * 50 + f);
        CHECK(c.located);
        CHECK(c.chunk_index == i * step);
        CHECK(c.uncompressed_offset == uint64_t{i} * 4096);
        CHECK(c.uncompressed_size == 100u + f);
        CHECK(c.compressed_offset == uint64_t{i} * 4096 + 7);
        CHECK(c.digest[0] == (i == 0 ? first_digest : i * 37 % 251));
      }
    }
    // The same chunk index with a different location is refused.
    b.records.back().c_off += 4096;
    Status s = open_status(b.build());
    CHECK(s.code() == Code::kInvalidInput);
    CHECK(s.message().find("chunk table: two records for blob 0 chunk 0 disagree on location") !=
          std::string::npos);
    // A file whose chunk is in the table with another size is refused.
    b.records.pop_back();
    b.records.front().d_size -= 1;
    b.records.front().c_size -= 1;
    s = open_status(b.build());
    CHECK(s.code() == Code::kInvalidInput);
    CHECK(s.message().find("bytes, file needs") != std::string::npos);
  }
}

TEST_CASE("v6 open: any inode layout order gives the same image", "[bootstrap][v6]") {
  // Upstream's order (nids ascend along the walk: no sort at open),
  // creation order (directories first here) and the reverse of upstream's.
  V6Builder b = chunky_tree(3, 40, 1);
  b.symlink(0, "ln", "dir0/f1", true);
  b.special(1, "fifo", S_IFIFO | 0644, 0, true);  // in dir0
  const std::vector<int> upstream = upstream_layout(b);
  std::vector<int> reversed(upstream.rbegin(), upstream.rend() - 1);
  reversed.insert(reversed.begin(), 0);  // the root stays first (16-bit root nid)
  std::map<std::string, std::string> first;
  for (const auto& order : {upstream, std::vector<int>{}, reversed}) {
    b.layout = order;
    auto bytes = b.build();
    auto img = Image::from_bytes(bytes, "t.boot");
    INFO(img.status().message());
    REQUIRE(img.ok());
    size_t seen = 0;
    CHECK(walk_all(**img, &seen).empty());
    CHECK(seen == b.nodes.size());
    CHECK((*img)->super().inodes_count == b.nodes.size());
    // Attributes and chunks per path; nids differ between layouts.
    auto d = describe(**img);
    if (first.empty()) first = d;
    CHECK(d == first);
    for (size_t i = 0; i < b.nodes.size(); ++i) CHECK((*img)->inode(b.nodes[i].nid).ok());
  }
  CHECK(first.size() == 3 + 120 + 1 + 1 + 1 + 1);
}

TEST_CASE("v6 open: further names of an inode are checked after the walk", "[bootstrap][v6]") {
  auto expect = [](V6Builder& b, const std::string& needle) {
    for (bool upstream : {false, true}) {
      b.layout = upstream ? upstream_layout(b) : std::vector<int>{};
      Status s = open_status(b.build());
      INFO(s.message());
      CHECK(s.code() == Code::kInvalidInput);
      CHECK(s.message().find(needle) != std::string::npos);
    }
  };
  SECTION("a regular-file name for a directory") {
    V6Builder b;
    int d = b.dir(0, "d");
    b.link(0, "e", d, 1);  // walked before "d"'s own contents, after its name
    expect(b, "entry 'e': directory nid");
    expect(b, "is reached twice");
  }
  SECTION("a further name with another file type") {
    V6Builder b;
    int sub = b.dir(0, "sub");
    int f = b.file(0, "f", 0, {});
    b.nodes[f].nlink = 2;
    b.link(sub, "g", f, 7);
    expect(b, "entry 'g': file type 7 does not match the regular file");
  }
  SECTION("names in several directories count against nlink") {
    V6Builder b;
    int sub = b.dir(0, "sub");
    int deep = b.dir(sub, "deep");
    int f = b.file(deep, "f", 0, {});
    b.link(0, "a", f);
    b.link(sub, "b", f);
    b.nodes[f].nlink = 3;
    CHECK(open_status(b.build()).ok());
    b.layout = upstream_layout(b);
    CHECK(open_status(b.build()).ok());
    b.nodes[f].nlink = 2;
    expect(b, "3 directory entries but nlink 2");
  }
}

TEST_CASE("v6 open: xattr areas with many entries, symlinks with NUL", "[bootstrap][v6]") {
  V6Builder b;
  int f = b.file(0, "f", 0, {});
  for (int i = 0; i < 40; ++i) b.nodes[f].xattrs.emplace_back(1, "k" + std::to_string(i), std::to_string(i));
  b.nodes[f].xattrs.emplace_back(2, "", "acl");
  b.nodes[f].xattrs.emplace_back(6, "k0", "same suffix, other prefix");
  {
    auto bytes = b.build();
    auto img = Image::from_bytes(bytes, "t.boot");
    INFO(img.status().message());
    REQUIRE(img.ok());
    auto x = (*img)->xattrs(b.nodes[f].nid);
    REQUIRE(x.ok());
    REQUIRE(x->size() == 42);
    CHECK((*x)[39].name == "user.k39");
    CHECK((*x)[39].value == "39");
    CHECK((*x)[41].name == "security.k0");
  }
  // A duplicate past the pairwise-checked first entries, and among them.
  b.nodes[f].xattrs.emplace_back(1, "k17", "again");
  Status s = open_status(b.build());
  CHECK(s.code() == Code::kInvalidInput);
  CHECK(s.message().find("xattrs: duplicate name user.k17") != std::string::npos);
  b.nodes[f].xattrs = {{4, "a", "1"}, {4, "b", "2"}, {4, "a", "3"}};
  s = open_status(b.build());
  CHECK(s.message().find("xattrs: duplicate name trusted.a") != std::string::npos);

  V6Builder l;
  l.symlink(0, "l", std::string("a\0b", 3), true);
  s = open_status(l.build());
  CHECK(s.code() == Code::kInvalidInput);
  CHECK(s.message().find("symlink target contains NUL") != std::string::npos);
}

namespace {

// Applies `mutate` to copies of `base`; each variant must fail with a
// message or be fully walkable.
template <typename Mutate>
void sweep(const std::vector<uint8_t>& base, size_t variants, Mutate mutate, size_t* opened,
           size_t* refused) {
  for (size_t v = 0; v < variants; ++v) {
    std::vector<uint8_t> bytes = base;
    mutate(v, bytes);
    auto img = Image::from_bytes(bytes, "m.boot");
    if (!img.ok()) {
      ++*refused;
      if (img.status().message().empty()) FAIL("variant " << v << ": empty error message");
      continue;
    }
    ++*opened;
    std::string err = walk_all(**img);
    if (!err.empty()) FAIL("variant " << v << " opened but walk failed: " << err);
  }
}

}  // namespace

TEST_CASE("v6 robustness: truncations and flips never break the contract", "[bootstrap][v6][robust]") {
  struct Base {
    const char* name;
    std::vector<uint8_t> bytes;
  };
  Rich rich;
  std::vector<Base> bases{{"fixture", fixture_bytes()}, {"rich", rich.bytes}};
  for (const auto& base : bases) {
    const auto& b = base.bytes;
    size_t opened = 0, refused = 0;
    // Truncations at many lengths (4K multiples included: they pass the size check).
    std::vector<size_t> lengths;
    for (size_t n = 0; n < b.size(); n += 97) lengths.push_back(n);
    for (size_t n = 0; n <= b.size(); n += 4096) lengths.push_back(n);
    sweep(
        b, lengths.size(), [&](size_t v, std::vector<uint8_t>& m) { m.resize(lengths[v]); }, &opened,
        &refused);

    // Positions: every metadata byte of the interesting regions, plus a stride
    // over the whole file.
    std::vector<size_t> positions;
    for (size_t p = 1024; p < 1408 + 128; ++p) positions.push_back(p);
    for (size_t p = 0x1000; p < 0x1000 + 256; ++p) positions.push_back(p);
    for (size_t p = 0x3000; p < std::min<size_t>(b.size(), 0x3000 + 1024); ++p) positions.push_back(p);
    const size_t stride = std::max<size_t>(13, b.size() / 1500);
    for (size_t p = 0; p < b.size(); p += stride) positions.push_back(p);
    if (std::string(base.name) == "fixture")
      for (size_t p = 0x4000; p < 0x40a0; ++p) positions.push_back(p);
    static constexpr uint8_t kXor[] = {0x01, 0x80, 0x10};
    sweep(
        b, positions.size() * 3,
        [&](size_t v, std::vector<uint8_t>& m) { m[positions[v / 3]] ^= kXor[v % 3]; }, &opened, &refused);
    // Byte sets to extreme values.
    static constexpr uint8_t kSet[] = {0x00, 0xff};
    sweep(
        b, positions.size() * 2,
        [&](size_t v, std::vector<uint8_t>& m) { m[positions[v / 2]] = kSet[v % 2]; }, &opened, &refused);
    // Random multi-bit damage (deterministic).
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    auto next = [&] {
      seed ^= seed << 13;
      seed ^= seed >> 7;
      seed ^= seed << 17;
      return seed;
    };
    sweep(
        b, 500,
        [&](size_t, std::vector<uint8_t>& m) {
          for (int i = 0; i < 4; ++i) m[next() % m.size()] ^= static_cast<uint8_t>(1u << (next() % 8));
        },
        &opened, &refused);
    INFO(base.name << ": opened " << opened << ", refused " << refused);
    CHECK(opened > 100);
    CHECK(refused > 100);
  }
}

// Hidden (run with "[.scale]"): open time and heap use on 100k inodes.
TEST_CASE("v6 scale: 100,000 inodes", "[.scale]") {
  V6Builder b;
  for (int d = 0; d < 100; ++d) {
    int dir = b.dir(0, "dir" + std::to_string(d));
    for (int f = 0; f < 1000; ++f) b.file(dir, "file-" + std::to_string(f), 0, {});
  }
  auto bytes = b.build();
  size_t before = mallinfo2().uordblks;
  auto t0 = std::chrono::steady_clock::now();
  auto img = Image::from_bytes(bytes, "scale.boot");
  auto t1 = std::chrono::steady_clock::now();
  REQUIRE(img.ok());
  size_t after = mallinfo2().uordblks;
  // Sanitizer allocators bypass mallinfo: only meaningful in plain builds.
  double per_inode =
      after > before + bytes.size() ? double(after - before - bytes.size()) / double(b.nodes.size()) : 0;
  using Ms = std::chrono::duration<double, std::milli>;
  const double open_ms = Ms(t1 - t0).count();
  WARN("file " << bytes.size() << " bytes, " << b.nodes.size() << " inodes, open " << open_ms << " ms, "
               << per_inode << " heap bytes per inode beyond the file copy");
  CHECK(per_inode < 100);
  auto t2 = std::chrono::steady_clock::now();
  CHECK(walk_all(**img).empty());
  auto t3 = std::chrono::steady_clock::now();
  const double walk_ms = Ms(t3 - t2).count();
  WARN("walk " << walk_ms << " ms");
}
