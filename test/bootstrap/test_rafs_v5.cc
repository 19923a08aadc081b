// RAFS v5 reader: facts of the upstream fixtures (rafs-format.md §8.1, §8.2,
// §8.4), hand-built images for what the fixtures lack (xattrs, holes,
// devices, malformed trees), and corruption robustness.
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "bootstrap/image.h"
#include "bootstrap/rafs_v5.h"
#include "bootstrap/rafs_v5_internal.h"
#include "common/digest.h"
#include "common/file_bytes.h"
#include "common/log.h"
#include "test/test_util.h"

namespace nydus::bootstrap {
namespace {

using test::fixture;

const char* const kSha256Fixture = "repeatable/sha256-nocompress-repeatable";
const char* const kBlake3Fixture = "repeatable/blake3-lz4_block-non_repeatable";
const char* const kLegacyFixture = "bootstrap/nydusd_daemon_test_bootstrap";
const char* const kBlobId = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00";

std::vector<uint8_t> read_all(const std::string& path) {
  auto file = FileBytes::open(path);
  REQUIRE(file.ok());
  auto b = file->bytes();
  return {b.begin(), b.end()};
}

std::unique_ptr<Image> open_ok(const std::string& path) {
  auto image = Image::open(path);
  INFO(image.status().message());
  REQUIRE(image.ok());
  return std::move(image).value();
}

Result<Ino> resolve(const Image& image, const std::string& path) {
  Ino ino = image.root();
  std::stringstream ss(path);
  std::string part;
  while (std::getline(ss, part, '/')) {
    if (part.empty()) continue;
    auto next = image.lookup(ino, part);
    if (!next.ok()) return next.status();
    ino = *next;
  }
  return ino;
}

Ino resolve_ok(const Image& image, const std::string& path) {
  auto ino = resolve(image, path);
  INFO(path << ": " << ino.status().message());
  REQUIRE(ino.ok());
  return *ino;
}

struct WalkStats {
  uint64_t entries = 0;  // names, including the root
  uint64_t regular = 0;
  uint64_t symlinks = 0;
  uint64_t dirs = 0;
  uint64_t other = 0;
  std::map<Ino, uint32_t> names_per_ino;
  std::map<std::string, Ino> paths;  // only when collect_paths
};

Status walk_fail(const std::string& what) { return Status::invalid("walk: " + what); }

// Visits the whole tree the way the fs layer would: read_dir every
// directory, then inode/lookup/read_link/xattrs/chunks of every entry. Any
// failure, inconsistency or cycle is returned as a Status.
Status walk_all(const Image& image, WalkStats* st, bool collect_paths = false) {
  const Ino root = image.root();
  auto root_attr = image.inode(root);
  if (!root_attr.ok()) return root_attr.status();
  if ((root_attr->mode & S_IFMT) != S_IFDIR) return walk_fail("root is not a directory");
  auto root_parent = image.parent(root);
  if (!root_parent.ok() || *root_parent != root) return walk_fail("parent(root) is not root");
  st->entries = 1;
  st->dirs = 1;
  st->names_per_ino[root] = 1;
  std::set<Ino> dirs_seen{root};
  std::vector<std::pair<Ino, std::string>> stack{{root, ""}};
  while (!stack.empty()) {
    auto [dir, dir_path] = stack.back();
    stack.pop_back();
    std::vector<std::pair<DirEntry, uint64_t>> list;
    Status s = image.read_dir(dir, 0, [&](const DirEntry& e, uint64_t next) {
      list.emplace_back(e, next);
      return true;
    });
    if (!s.ok()) return s;
    if (list.size() < 2 || list[0].first.name != "." || list[1].first.name != "..")
      return walk_fail("directory " + std::to_string(dir) + " does not start with . and ..");
    if (list[0].first.ino != dir) return walk_fail(". is not the directory itself");
    auto parent = image.parent(dir);
    if (!parent.ok()) return parent.status();
    if (*parent != list[1].first.ino) return walk_fail(".. differs from parent()");
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i].second != i + 1) return walk_fail("cookie sequence broken");
    }
    for (size_t i = 2; i < list.size(); ++i) {
      const DirEntry& e = list[i].first;
      if (e.name.empty() || e.name.find('/') != std::string::npos || e.name.find('\0') != std::string::npos)
        return walk_fail("bad name in directory " + std::to_string(dir));
      if (i > 2 && !(list[i - 1].first.name < e.name)) return walk_fail("names not sorted");
      auto found = image.lookup(dir, e.name);
      if (!found.ok()) return found.status();
      if (*found != e.ino) return walk_fail("lookup(" + e.name + ") disagrees with read_dir");
      auto attr = image.inode(e.ino);
      if (!attr.ok()) return attr.status();
      if (attr->ino != e.ino) return walk_fail("inode().ino differs");
      if ((attr->mode & S_IFMT) != e.type) return walk_fail("dirent type differs from inode mode");
      auto xattrs = image.xattrs(e.ino);
      if (!xattrs.ok()) return xattrs.status();
      const std::string path = dir_path + "/" + e.name;
      if (collect_paths) st->paths[path] = e.ino;
      ++st->entries;
      ++st->names_per_ino[e.ino];
      switch (e.type) {
        case S_IFDIR: {
          ++st->dirs;
          if (!dirs_seen.insert(e.ino).second) return walk_fail("directory reached twice");
          if (auto p = image.parent(e.ino); !p.ok() || *p != dir) return walk_fail("parent() of a subdirectory");
          stack.emplace_back(e.ino, path);
          break;
        }
        case S_IFLNK: {
          ++st->symlinks;
          auto target = image.read_link(e.ino);
          if (!target.ok()) return target.status();
          if (target->empty() || target->size() != attr->size) return walk_fail("symlink target size");
          break;
        }
        case S_IFREG: {
          ++st->regular;
          auto all = image.chunks(e.ino, 0, attr->size);
          if (!all.ok()) return all.status();
          uint64_t end = 0;
          for (const ChunkRef& c : *all) {
            if (c.file_offset < end) return walk_fail("chunks overlap or unsorted");
            end = c.file_offset + c.uncompressed_size;
            if (end > attr->size) return walk_fail("chunk past end of file");
            if (c.blob_index >= image.blobs().size()) return walk_fail("chunk blob index");
          }
          auto middle = image.chunks(e.ino, attr->size / 2, 4097);
          if (!middle.ok()) return middle.status();
          auto past = image.chunks(e.ino, attr->size, 1);
          if (!past.ok()) return past.status();
          if (!past->empty()) return walk_fail("chunks past EOF not empty");
          auto huge = image.chunks(e.ino, 1, UINT64_MAX);
          if (!huge.ok()) return huge.status();
          break;
        }
        default:
          ++st->other;
          break;
      }
    }
  }
  for (Ino p : image.prefetch_table()) {
    if (!image.inode(p).ok()) return walk_fail("prefetch entry does not resolve");
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Upstream fixtures

TEST_CASE("v5 fixtures: superblock, blob table and tree facts (rafs-format §8.1, §8.2)", "[rafs_v5]") {
  const std::string which = GENERATE(kSha256Fixture, kBlake3Fixture);
  const bool sha = which == kSha256Fixture;
  INFO(which);
  auto image = open_ok(fixture(which));

  const SuperInfo& sb = image->super();
  CHECK(sb.version == 5);
  CHECK(sb.flags == (sha ? 0x9u : 0x5u));
  CHECK(sb.chunk_size == 0x100000);
  CHECK(sb.inodes_count == 51);
  CHECK(sb.compressor == Compressor::kNone);
  CHECK(sb.digester == (sha ? Digester::kSha256 : Digester::kBlake3));
  CHECK_FALSE(sb.explicit_uid_gid);
  CHECK_FALSE(sb.has_xattr);
  CHECK(rafs_v5_layout(*image) == RafsV5Layout::kStandard);

  REQUIRE(image->blobs().size() == 1);
  const BlobInfo& blob = image->blobs()[0];
  CHECK(blob.index == 0);
  CHECK(blob.id == kBlobId);
  CHECK(blob.chunk_count == 23);
  CHECK(blob.features == 0);
  CHECK(blob.compressed_size == 3508766);
  CHECK(blob.uncompressed_size == 3508766);
  CHECK(blob.chunk_size == 0x100000);
  CHECK(blob.compressor == Compressor::kNone);
  CHECK(blob.digester == sb.digester);
  CHECK(image->prefetch_table().empty());

  WalkStats st;
  Status walked = walk_all(*image, &st, true);
  INFO(walked.message());
  REQUIRE(walked.ok());
  CHECK(st.entries == 54);
  CHECK(st.regular == 23);
  CHECK(st.symlinks == 7);
  CHECK(st.dirs == 24);
  CHECK(st.other == 0);
  CHECK(st.names_per_ino.size() == 52);  // the hardlink trio counts once

  // Hardlinks: three names, one inode (index 5), nlink 3.
  const Ino foo = resolve_ok(*image, "hardlink-test/foo");
  CHECK(foo == 5);
  CHECK(resolve_ok(*image, "hardlink-test/test.sh") == foo);
  CHECK(resolve_ok(*image, "normal-file-test/test.sh") == foo);
  CHECK(st.names_per_ino[foo] == 3);
  auto foo_attr = image->inode(foo);
  REQUIRE(foo_attr.ok());
  CHECK(foo_attr->nlink == 3);
  CHECK(foo_attr->size == 944);
  CHECK(foo_attr->mode == (S_IFREG | 0775));
  CHECK(foo_attr->mtime == 1668232305);
  CHECK(foo_attr->uid == 0);
  CHECK(foo_attr->gid == 0);
  // The duplicate records' own indexes are not inode numbers.
  CHECK(image->inode(6).status().code() == Code::kNotFound);
  CHECK(image->inode(9).status().code() == Code::kNotFound);

  // Symlinks.
  auto link = [&](const std::string& path) {
    auto target = image->read_link(resolve_ok(*image, path));
    REQUIRE(target.ok());
    return *target;
  };
  CHECK(link("symlink-test/test.sh") == "../normal-file-test/test.sh");
  CHECK(link("symlink-test/root") == "/");
  CHECK(link("symlink-test/root-1") == "/////////////////");
  CHECK(link("symlink-test/root-2") == "/foobar");
  CHECK(link("symlink-test/bar") == "../hardlink-test-tt");
  auto link_attr = image->inode(resolve_ok(*image, "symlink-test/test.sh"));
  REQUIRE(link_attr.ok());
  CHECK(link_attr->size == 27);
  CHECK(link_attr->mode == (S_IFLNK | 0777));

  // Root and a directory.
  auto root = image->inode(image->root());
  REQUIRE(root.ok());
  CHECK(root->ino == 1);
  CHECK(root->mode == (S_IFDIR | 0755));
  CHECK(root->mtime == 0);
  CHECK(root->nlink == 5);
  CHECK(root->size == 4096);
  CHECK(root->blocks == 8);
  const Ino layer = resolve_ok(*image, "normal-file-test/busybox/1f777dbdd68d1c4d554bc0d20e027bfef9ed2dfe2d8d5f029e958552a0e12475/layer.tar");
  auto layer_attr = image->inode(layer);
  REQUIRE(layer_attr.ok());
  CHECK(layer_attr->size == 1415680);
  CHECK(layer_attr->blocks == 2765);

  // Inode digests (§3.11) verify for all 54 entries.
  Status digests = verify_rafs_v5_inode_digests(*image);
  INFO(digests.message());
  CHECK(digests.ok());
}

// The JSON part of a .result file (the md5 list that follows is returned
// separately as path -> md5).
nlohmann::json load_result_json(const std::string& path, std::map<std::string, std::string>* md5s) {
  auto bytes = read_all(path);
  std::string text(bytes.begin(), bytes.end());
  const size_t end = text.find("\n]\n");
  REQUIRE(end != std::string::npos);
  auto json = nlohmann::json::parse(text.substr(0, end + 2), nullptr, false);
  REQUIRE_FALSE(json.is_discarded());
  std::stringstream rest(text.substr(end + 3));
  std::string line;
  while (std::getline(rest, line)) {
    const size_t sep = line.find("  ");
    if (sep == 32) (*md5s)[line.substr(sep + 2)] = line.substr(0, 32);
  }
  return json;
}

void compare_tree(const Image& image, Ino dir, const nlohmann::json& contents, const std::string& path) {
  std::vector<DirEntry> entries;
  REQUIRE(image.read_dir(dir, 2, [&](const DirEntry& e, uint64_t) {
    entries.push_back(e);
    return true;
  }).ok());
  INFO(path);
  REQUIRE(entries.size() == contents.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& want = contents[i];
    const DirEntry& got = entries[i];
    const std::string name = want["name"];
    const std::string type = want["type"];
    INFO(path + "/" + name);
    CHECK(got.name == name);
    if (type == "directory") {
      REQUIRE(got.type == S_IFDIR);
      compare_tree(image, got.ino, want["contents"], path + "/" + name);
    } else if (type == "file") {
      CHECK(got.type == S_IFREG);
    } else if (type == "link") {
      REQUIRE(got.type == S_IFLNK);
      auto target = image.read_link(got.ino);
      REQUIRE(target.ok());
      CHECK(*target == want["target"].get<std::string>());
    } else {
      FAIL("unexpected type " << type);
    }
  }
}

std::string md5_hex(const std::vector<uint8_t>& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  REQUIRE(EVP_Digest(data.data(), data.size(), out, &len, EVP_md5(), nullptr) == 1);
  return to_hex({out, len});
}

TEST_CASE("v5 fixtures: tree equals the .result JSON; chunks reproduce the files", "[rafs_v5]") {
  const std::string which = GENERATE(kSha256Fixture, kBlake3Fixture);
  INFO(which);
  auto image = open_ok(fixture(which));
  std::map<std::string, std::string> md5s;
  auto json = load_result_json(fixture(which + ".result"), &md5s);
  REQUIRE(json.is_array());
  REQUIRE(json[0]["type"] == "directory");
  REQUIRE(json[0]["name"] == "");
  compare_tree(*image, image->root(), json[0]["contents"], "");

  // Every regular file: chunks tile the file exactly, each chunk's bytes in
  // the (uncompressed) blob hash to its digest, and the reassembled content
  // has the md5 the .result lists.
  auto blob = read_all(fixture(std::string("repeatable/blobs/") + kBlobId));
  WalkStats st;
  REQUIRE(walk_all(*image, &st, true).ok());
  size_t files = 0;
  size_t refs = 0;
  std::set<uint32_t> unique_chunks;
  for (const auto& [path, ino] : st.paths) {
    auto attr = image->inode(ino);
    REQUIRE(attr.ok());
    if ((attr->mode & S_IFMT) != S_IFREG) continue;
    INFO(path);
    ++files;
    auto chunks = image->chunks(ino, 0, attr->size);
    REQUIRE(chunks.ok());
    std::vector<uint8_t> content;
    for (size_t k = 0; k < chunks->size(); ++k) {
      const ChunkRef& c = (*chunks)[k];
      CHECK(c.file_offset == k * 0x100000);
      CHECK(c.blob_index == 0);
      CHECK_FALSE(c.compressed);
      CHECK_FALSE(c.has_crc32);
      CHECK(c.located);
      CHECK(c.compressed_size == c.uncompressed_size);
      CHECK(c.compressed_offset == c.uncompressed_offset);
      CHECK(c.chunk_index < 23);
      REQUIRE(c.compressed_offset + c.compressed_size <= blob.size());
      std::span<const uint8_t> data(blob.data() + c.compressed_offset, c.compressed_size);
      CHECK(digest(image->super().digester, data) == c.digest);
      content.insert(content.end(), data.begin(), data.end());
      unique_chunks.insert(c.chunk_index);
      ++refs;
    }
    CHECK(content.size() == attr->size);
    REQUIRE(md5s.count(path) == 1);
    CHECK(md5_hex(content) == md5s[path]);
  }
  CHECK(files == 23);
  CHECK(refs == 29);
  CHECK(unique_chunks.size() == 23);
  CHECK(md5s.size() == 23);
}

TEST_CASE("v5 chunks(): ranges are clipped and map to the covering chunks", "[rafs_v5]") {
  auto image = open_ok(fixture(kSha256Fixture));
  const Ino layer = resolve_ok(*image, "normal-file-test/busybox/1f777dbdd68d1c4d554bc0d20e027bfef9ed2dfe2d8d5f029e958552a0e12475/layer.tar");
  const uint64_t size = 1415680;
  auto offsets = [&](uint64_t off, uint64_t len) {
    auto c = image->chunks(layer, off, len);
    REQUIRE(c.ok());
    std::vector<uint64_t> out;
    for (const auto& ref : *c) out.push_back(ref.file_offset);
    return out;
  };
  CHECK(offsets(0, size) == std::vector<uint64_t>{0, 0x100000});
  CHECK(offsets(0, 1) == std::vector<uint64_t>{0});
  CHECK(offsets(0x100000 - 1, 2) == std::vector<uint64_t>{0, 0x100000});
  CHECK(offsets(0x100000, 10) == std::vector<uint64_t>{0x100000});
  CHECK(offsets(size - 1, UINT64_MAX) == std::vector<uint64_t>{0x100000});
  CHECK(offsets(size, 1).empty());
  CHECK(offsets(UINT64_MAX, UINT64_MAX).empty());
  CHECK(offsets(10, 0).empty());
  auto last = image->chunks(layer, 0x100000, 1);
  REQUIRE(last.ok());
  REQUIRE(last->size() == 1);
  CHECK((*last)[0].uncompressed_size == size - 0x100000);

  // A 3-byte file: one short chunk.
  const Ino empty = resolve_ok(*image, "normal-file-test/busybox/1f777dbdd68d1c4d554bc0d20e027bfef9ed2dfe2d8d5f029e958552a0e12475/VERSION");
  auto version = image->chunks(empty, 0, 100);
  REQUIRE(version.ok());
  CHECK(version->size() == 1);
}

TEST_CASE("v5 accessors: error codes, read_dir cookies, parent", "[rafs_v5]") {
  auto image = open_ok(fixture(kSha256Fixture));
  const Ino root = image->root();
  const Ino dir = resolve_ok(*image, "hardlink-test");
  const Ino file = resolve_ok(*image, "hardlink-test/foo");
  const Ino link = resolve_ok(*image, "symlink-test/root");

  CHECK(image->inode(0).status().code() == Code::kNotFound);
  CHECK(image->inode(55).status().code() == Code::kNotFound);
  CHECK(image->inode(UINT64_MAX).status().code() == Code::kNotFound);
  CHECK(image->lookup(root, "nope").status().code() == Code::kNotFound);
  CHECK(image->lookup(root, "").status().code() == Code::kNotFound);
  CHECK(image->lookup(root, std::string(300, 'a')).status().code() == Code::kNotFound);
  CHECK(image->lookup(file, "x").status().code() == Code::kNotDir);
  CHECK(image->lookup(12345, "x").status().code() == Code::kNotFound);
  CHECK(image->read_dir(file, 0, [](const DirEntry&, uint64_t) { return true; }).code() == Code::kNotDir);
  CHECK(image->parent(file).status().code() == Code::kNotDir);
  CHECK(image->chunks(dir, 0, 1).status().code() == Code::kIsDir);
  CHECK(image->chunks(link, 0, 1).status().code() == Code::kInvalidInput);
  CHECK(image->read_link(file).status().code() == Code::kInvalidInput);
  auto xattrs = image->xattrs(file);
  REQUIRE(xattrs.ok());
  CHECK(xattrs->empty());

  CHECK(*image->parent(root) == root);
  CHECK(*image->parent(dir) == root);
  CHECK(*image->lookup(dir, ".") == dir);
  CHECK(*image->lookup(dir, "..") == root);
  CHECK(*image->lookup(root, "..") == root);

  // Cookies: 0 ".", 1 "..", 2+k child k; resuming at any cookie is stable.
  std::vector<std::pair<std::string, uint64_t>> all;
  REQUIRE(image->read_dir(dir, 0, [&](const DirEntry& e, uint64_t next) {
    all.emplace_back(e.name, next);
    return true;
  }).ok());
  REQUIRE(all == std::vector<std::pair<std::string, uint64_t>>{{".", 1}, {"..", 2}, {"foo", 3}, {"test.sh", 4}});
  for (uint64_t cookie = 0; cookie <= 5; ++cookie) {
    std::vector<std::string> names;
    REQUIRE(image->read_dir(dir, cookie, [&](const DirEntry& e, uint64_t) {
      names.push_back(e.name);
      return names.size() < 1;  // stop after one
    }).ok());
    if (cookie < all.size()) {
      REQUIRE(names.size() == 1);
      CHECK(names[0] == all[cookie].first);
    } else {
      CHECK(names.empty());
    }
  }
  std::vector<DirEntry> root_dots;
  REQUIRE(image->read_dir(root, 0, [&](const DirEntry& e, uint64_t) {
    root_dots.push_back(e);
    return root_dots.size() < 2;
  }).ok());
  REQUIRE(root_dots.size() == 2);
  CHECK(root_dots[1].name == "..");
  CHECK(root_dots[1].ino == root);
  CHECK(root_dots[1].type == S_IFDIR);
}

TEST_CASE("v5 inode digests: a changed digest is reported", "[rafs_v5]") {
  auto bytes = read_all(fixture(kBlake3Fixture));
  // Index 5 (hardlink-test/foo) is at table[4] << 3; its only chunk record
  // follows the 128-byte inode and the 8-byte padded name. Changing that
  // chunk's digest breaks index 5's inode digest, nothing earlier.
  uint32_t entry;
  std::memcpy(&entry, bytes.data() + 0x2000 + 4 * 4, 4);
  bytes[(uint64_t{entry} << 3) + 128 + 8] ^= 0x01;
  auto image = Image::from_bytes(bytes, "corrupt-digest");
  REQUIRE(image.ok());  // digests are not checked at open for standard images
  Status s = verify_rafs_v5_inode_digests(**image);
  CHECK(s.code() == Code::kCorrupt);
  CHECK_THAT(s.message(), Catch::Contains("inode index 5 "));
}

// ---------------------------------------------------------------------------
// The legacy variant (rafs-format.md §3.12, §8.4)

TEST_CASE("v5 legacy bootstrap: read with the §3.12 layout, proven by inode digests", "[rafs_v5][legacy]") {
  auto image = open_ok(fixture(kLegacyFixture));
  CHECK(rafs_v5_layout(*image) == RafsV5Layout::kLegacy);
  const SuperInfo& sb = image->super();
  CHECK(sb.flags == 0x1);
  CHECK(sb.chunk_size == 0x100000);
  CHECK(sb.inodes_count == 16816);
  CHECK(sb.compressor == Compressor::kNone);
  CHECK(sb.digester == Digester::kBlake3);
  REQUIRE(image->blobs().size() == 1);
  CHECK(image->blobs()[0].id == "66b413a71ac1dc91c0c331ea16867123924cf5a393b65bb025ec8255531463fe");
  CHECK(image->blobs()[0].chunk_count == 0);  // no extended blob table
  CHECK(image->prefetch_table().empty());

  WalkStats st;
  Status walked = walk_all(*image, &st);
  INFO(walked.message());
  REQUIRE(walked.ok());
  CHECK(st.entries == 16832);
  CHECK(st.regular == 12464);
  CHECK(st.symlinks == 2941);
  CHECK(st.dirs == 1427);
  CHECK(st.other == 0);
  uint64_t hardlinked = 0;
  for (const auto& [ino, names] : st.names_per_ino)
    if (names > 1) hardlinked += names;
  CHECK(hardlinked == 26);

  std::vector<std::string> top;
  REQUIRE(image->read_dir(image->root(), 2, [&](const DirEntry& e, uint64_t) {
    top.push_back(e.name);
    return true;
  }).ok());
  CHECK(top == std::vector<std::string>{".dockerenv", ".pouch.first", "bin", "boot", "dev", "etc", "home",
                                        "lib", "lib64", "media", "mnt", "opt", "proc", "root", "run", "sbin",
                                        "srv", "sys", "tmp", "usr", "var", "work"});
  auto bash = image->inode(resolve_ok(*image, "bin/bash"));
  REQUIRE(bash.ok());
  CHECK(bash->mode == (S_IFREG | 0755));
  CHECK(bash->size == 1021112);
  CHECK(bash->blocks == 1995);
  auto bzcmp = image->read_link(resolve_ok(*image, "bin/bzcmp"));
  REQUIRE(bzcmp.ok());
  CHECK(*bzcmp == "bzdiff");
  const Ino bunzip2 = resolve_ok(*image, "bin/bunzip2");
  CHECK(resolve_ok(*image, "bin/bzcat") == bunzip2);
  CHECK(resolve_ok(*image, "bin/bzip2") == bunzip2);
  CHECK(image->inode(bunzip2)->nlink == 3);

  // Chunks are reported as stored: flagged compressed, c_size < d_size,
  // with the superblock's "none" compressor (the data path refuses them).
  auto chunks = image->chunks(resolve_ok(*image, "bin/bash"), 0, 1021112);
  REQUIRE(chunks.ok());
  REQUIRE(chunks->size() == 1);
  CHECK((*chunks)[0].compressed);
  CHECK((*chunks)[0].compressed_size < (*chunks)[0].uncompressed_size);
  CHECK((*chunks)[0].uncompressed_size == 1021112);

  Status digests = verify_rafs_v5_inode_digests(*image);
  INFO(digests.message());
  CHECK(digests.ok());
}

TEST_CASE("v5 legacy bootstrap: the standard layout refuses it; the legacy layout refuses standard files",
          "[rafs_v5][legacy]") {
  auto legacy = open_rafs_v5_layout(FileBytes::from_bytes(read_all(fixture(kLegacyFixture))), "legacy",
                                    RafsV5Layout::kStandard);
  REQUIRE_FALSE(legacy.ok());
  CHECK(legacy.status().code() == Code::kInvalidInput);
  CHECK_THAT(legacy.status().message(), Catch::StartsWith("bootstrap legacy: root inode: mode"));

  for (const char* which : {kSha256Fixture, kBlake3Fixture}) {
    INFO(which);
    auto forced = open_rafs_v5_layout(FileBytes::from_bytes(read_all(fixture(which))), which,
                                      RafsV5Layout::kLegacy);
    REQUIRE_FALSE(forced.ok());
    CHECK_FALSE(forced.status().message().empty());
    auto detected = open_rafs_v5_layout(FileBytes::from_bytes(read_all(fixture(which))), which,
                                        RafsV5Layout::kDetect);
    REQUIRE(detected.ok());
    CHECK(rafs_v5_layout(**detected) == RafsV5Layout::kStandard);
  }
}

TEST_CASE("v5 legacy bootstrap: refused when its digests do not verify", "[rafs_v5][legacy]") {
  const auto original = read_all(fixture(kLegacyFixture));
  auto record_of = [&](uint32_t index) {
    uint32_t entry;
    std::memcpy(&entry, original.data() + 0x2000 + (index - 1) * 4, 4);
    return uint64_t{entry} << 3;
  };
  SECTION("a chunk digest changed") {
    // bin/bash is index 24 (one chunk); its chunk record starts after the
    // 128-byte inode and the 8-byte padded name.
    auto bytes = original;
    bytes[record_of(24) + 128 + 8] ^= 0x80;
    auto image = Image::from_bytes(bytes, "legacy-chunk");
    REQUIRE_FALSE(image.ok());
    CHECK_THAT(image.status().message(), Catch::StartsWith("bootstrap legacy-chunk: inode records: "));
    CHECK_THAT(image.status().message(), Catch::Contains("legacy RAFS v5 layout"));
    CHECK_THAT(image.status().message(), Catch::Contains("inode index 24"));
  }
  SECTION("an inode's stored digest changed") {
    auto bytes = original;
    bytes[record_of(16832)] ^= 0x01;
    auto image = Image::from_bytes(bytes, "legacy-digest");
    REQUIRE_FALSE(image.ok());
    CHECK_THAT(image.status().message(), Catch::Contains("inode index"));
  }
  SECTION("a symlink target changed") {
    // Changing a byte of bin/bzcmp's target keeps the structure valid; only
    // the digest catches it.
    auto bytes = original;
    const std::string needle = std::string("bzcmp\0\0\0bzdiff\0\0", 16);
    auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
    REQUIRE(it != bytes.end());
    *(it + 8) = 'B';
    auto corrupted = Image::from_bytes(bytes, "legacy-symlink");
    REQUIRE_FALSE(corrupted.ok());
    CHECK_THAT(corrupted.status().message(), Catch::Contains("do not verify"));
  }
}

// ---------------------------------------------------------------------------
// Hand-built images

struct SynChunk {
  uint32_t blob = 0;
  uint32_t flags = 0;
  uint32_t c_size = 0;
  uint32_t d_size = 0;
  uint64_t c_off = 0;
  uint64_t d_off = 0;
  uint64_t f_off = 0;
  uint32_t index = 0;
  uint32_t crc = 0;
  uint8_t digest_byte = 0;
};

struct SynInode {
  std::string name;
  uint32_t mode = 0;
  uint64_t parent = 0;
  uint64_t ino = 0;  // 0: own index
  uint64_t size = 0;
  uint64_t flags = 0;
  uint32_t nlink = 1;
  uint32_t child_index = 0;
  uint32_t child_count = 0;  // regular files: set from chunks unless force_count
  bool force_count = false;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t rdev = 0;
  uint64_t mtime = 0;
  uint32_t mtime_nsec = 0;
  uint16_t symlink_size_override = 0;
  std::string symlink;
  std::vector<std::pair<std::string, std::string>> xattrs;
  std::string raw_xattr;  // written verbatim as the xattr area when non-empty
  std::vector<SynChunk> chunks;
};

struct SynImage {
  uint64_t flags = 0x5 | 0x20 | 0x10;  // none, blake3, xattr, explicit uid/gid
  uint32_t chunk_size = 0x100000;
  std::vector<std::string> blob_ids{std::string(64, 'a')};
  bool ext_table = true;
  uint32_t ext_entries_override = 0;
  uint32_t blob_chunk_count = 100;
  std::vector<uint32_t> prefetch;
  std::vector<SynInode> inodes;  // index order: inodes[0] is index 1
};

template <typename T>
void put(std::vector<uint8_t>& b, uint64_t off, T v) {
  if (b.size() < off + sizeof v) b.resize(off + sizeof v);
  std::memcpy(b.data() + off, &v, sizeof v);
}

void pad8(std::vector<uint8_t>& b) { b.resize((b.size() + 7) & ~size_t{7}); }

std::vector<uint8_t> build(const SynImage& img) {
  std::vector<uint8_t> b(8192, 0);
  const uint32_t n = static_cast<uint32_t>(img.inodes.size());
  put<uint32_t>(b, 0, kRafsV5Magic);
  put<uint32_t>(b, 4, kRafsV5Version);
  put<uint32_t>(b, 8, 8192);
  put<uint32_t>(b, 12, img.chunk_size);
  put<uint64_t>(b, 16, img.flags);
  put<uint64_t>(b, 24, n);
  put<uint64_t>(b, 32, 8192);
  put<uint32_t>(b, 56, n);
  b.resize(8192 + n * 4);
  pad8(b);
  put<uint64_t>(b, 40, b.size());
  put<uint32_t>(b, 60, static_cast<uint32_t>(img.prefetch.size()));
  for (uint32_t p : img.prefetch) put<uint32_t>(b, b.size(), p);
  pad8(b);
  const uint64_t blob_off = b.size();
  put<uint64_t>(b, 48, blob_off);
  for (size_t i = 0; i < img.blob_ids.size(); ++i) {
    if (i) b.push_back(0);
    put<uint64_t>(b, b.size(), 0);
    b.insert(b.end(), img.blob_ids[i].begin(), img.blob_ids[i].end());
  }
  pad8(b);
  put<uint32_t>(b, 64, static_cast<uint32_t>(b.size() - blob_off));
  if (img.ext_table) {
    const uint32_t entries = img.ext_entries_override ? img.ext_entries_override
                                                      : static_cast<uint32_t>(img.blob_ids.size());
    put<uint32_t>(b, 68, entries);
    put<uint64_t>(b, 72, b.size());
    for (uint32_t i = 0; i < entries; ++i) {
      const uint64_t e = b.size();
      b.resize(e + 64);
      put<uint32_t>(b, e, img.blob_chunk_count);
      put<uint64_t>(b, e + 8, 1 << 30);
      put<uint64_t>(b, e + 16, 1 << 30);
    }
  }
  for (uint32_t i = 0; i < n; ++i) {
    const SynInode& in = img.inodes[i];
    const uint64_t off = b.size();
    put<uint32_t>(b, 8192 + i * 4, static_cast<uint32_t>(off >> 3));
    b.resize(off + 128);
    put<uint64_t>(b, off + 32, in.parent);
    put<uint64_t>(b, off + 40, in.ino ? in.ino : i + 1);
    put<uint32_t>(b, off + 48, in.uid);
    put<uint32_t>(b, off + 52, in.gid);
    put<uint32_t>(b, off + 60, in.mode);
    put<uint64_t>(b, off + 64, in.size);
    put<uint64_t>(b, off + 72, (in.size + 511) / 512);
    uint64_t flags = in.flags;
    if (!in.xattrs.empty() || !in.raw_xattr.empty()) flags |= 0x4;
    put<uint64_t>(b, off + 80, flags);
    put<uint32_t>(b, off + 88, in.nlink);
    const bool reg = (in.mode & S_IFMT) == S_IFREG;
    put<uint32_t>(b, off + 92, in.child_index);
    put<uint32_t>(b, off + 96, reg && !in.force_count ? static_cast<uint32_t>(in.chunks.size()) : in.child_count);
    put<uint16_t>(b, off + 100, static_cast<uint16_t>(in.name.size()));
    put<uint16_t>(b, off + 102, in.symlink_size_override ? in.symlink_size_override
                                                         : static_cast<uint16_t>(in.symlink.size()));
    put<uint32_t>(b, off + 104, in.rdev);
    put<uint32_t>(b, off + 108, in.mtime_nsec);
    put<uint64_t>(b, off + 112, in.mtime);
    b.insert(b.end(), in.name.begin(), in.name.end());
    pad8(b);
    b.insert(b.end(), in.symlink.begin(), in.symlink.end());
    pad8(b);
    if (!in.raw_xattr.empty()) {
      put<uint64_t>(b, b.size(), in.raw_xattr.size());
      b.insert(b.end(), in.raw_xattr.begin(), in.raw_xattr.end());
      pad8(b);
    } else if (!in.xattrs.empty()) {
      std::string area;
      for (const auto& [k, v] : in.xattrs) {
        const uint32_t pair = static_cast<uint32_t>(k.size() + 1 + v.size());
        area.append(reinterpret_cast<const char*>(&pair), 4);
        area += k;
        area.push_back('\0');
        area += v;
      }
      put<uint64_t>(b, b.size(), area.size());
      b.insert(b.end(), area.begin(), area.end());
      pad8(b);
    }
    for (const SynChunk& c : in.chunks) {
      const uint64_t q = b.size();
      b.resize(q + 80);
      std::memset(b.data() + q, c.digest_byte, 32);
      put<uint32_t>(b, q + 32, c.blob);
      put<uint32_t>(b, q + 36, c.flags);
      put<uint32_t>(b, q + 40, c.c_size);
      put<uint32_t>(b, q + 44, c.d_size);
      put<uint64_t>(b, q + 48, c.c_off);
      put<uint64_t>(b, q + 56, c.d_off);
      put<uint64_t>(b, q + 64, c.f_off);
      put<uint32_t>(b, q + 72, c.index);
      put<uint32_t>(b, q + 76, c.crc);
    }
  }
  return b;
}

constexpr uint64_t kMiB = 0x100000;

// /            dir, children 2..6
// 2 a-file     regular, 10 bytes, two xattrs, uid/gid/mtime
// 3 b-dev      char device
// 4 c-hole     HAS_HOLE, 5 MiB, chunks at [1, 2) MiB and [3, 3.5) MiB
// 5 d-dir      dir, child 7
// 6 e-fifo     fifo
// 7 d-dir/link-to-a  hardlink of a-file
SynImage sample_image() {
  SynImage img;
  SynChunk small{0, 0, 10, 10, 0, 0, 0, 0, 0, 0x11};
  img.inodes.resize(7);
  img.inodes[0] = {.name = "/", .mode = S_IFDIR | 0755, .nlink = 3, .child_index = 2, .child_count = 5};
  img.inodes[1] = {.name = "a-file", .mode = S_IFREG | 0640, .parent = 1, .size = 10, .nlink = 2,
                   .uid = 1000, .gid = 100, .mtime = 1700000000, .mtime_nsec = 5,
                   .xattrs = {{"user.foo", "bar"}, {"security.capability", std::string("\x01\x00\x02", 3)}},
                   .chunks = {small}};
  img.inodes[2] = {.name = "b-dev", .mode = S_IFCHR | 0620, .parent = 1, .rdev = static_cast<uint32_t>(makedev(5, 1))};
  img.inodes[3] = {.name = "c-hole", .mode = S_IFREG | 0644, .parent = 1, .size = 5 * kMiB, .flags = 0x8,
                   .chunks = {{0, 0, kMiB, kMiB, 100, 4096, kMiB, 1, 0, 0x22},
                              {0, 0x11, 0x1000, kMiB / 2, 200, 8192 + kMiB, 3 * kMiB, 2, 0xdeadbeef, 0x33}}};
  img.inodes[4] = {.name = "d-dir", .mode = S_IFDIR | 0700, .parent = 1, .nlink = 2, .child_index = 7, .child_count = 1};
  img.inodes[5] = {.name = "e-fifo", .mode = S_IFIFO | 0600, .parent = 1};
  img.inodes[6] = img.inodes[1];
  img.inodes[6].name = "link-to-a";
  img.inodes[6].parent = 5;
  img.inodes[6].ino = 2;
  return img;
}

Result<std::unique_ptr<Image>> open_synthetic(const SynImage& img) {
  return Image::from_bytes(build(img), "syn.boot");
}

TEST_CASE("v5 synthetic image: xattrs, devices, holes, hardlinks", "[rafs_v5][synthetic]") {
  SynImage spec = sample_image();
  spec.prefetch = {5, 2};
  auto opened = open_synthetic(spec);
  INFO(opened.status().message());
  REQUIRE(opened.ok());
  const Image& image = **opened;
  CHECK(image.super().explicit_uid_gid);
  CHECK(image.super().has_xattr);
  CHECK(image.prefetch_table() == std::vector<Ino>{5, 2});
  REQUIRE(image.blobs().size() == 1);
  CHECK(image.blobs()[0].chunk_count == 100);
  WalkStats st;
  Status walked = walk_all(image, &st);
  INFO(walked.message());
  REQUIRE(walked.ok());
  CHECK(st.entries == 7);
  CHECK(st.other == 2);

  const Ino a = resolve_ok(image, "a-file");
  CHECK(a == 2);
  CHECK(resolve_ok(image, "d-dir/link-to-a") == a);
  auto attr = image.inode(a);
  REQUIRE(attr.ok());
  CHECK(attr->uid == 1000);
  CHECK(attr->gid == 100);
  CHECK(attr->mtime == 1700000000);
  CHECK(attr->mtime_nsec == 5);
  CHECK(attr->nlink == 2);
  auto xattrs = image.xattrs(a);
  REQUIRE(xattrs.ok());
  REQUIRE(xattrs->size() == 2);
  CHECK((*xattrs)[0].name == "user.foo");
  CHECK((*xattrs)[0].value == "bar");
  CHECK((*xattrs)[1].name == "security.capability");
  CHECK((*xattrs)[1].value == std::string("\x01\x00\x02", 3));

  auto dev = image.inode(resolve_ok(image, "b-dev"));
  REQUIRE(dev.ok());
  CHECK(dev->mode == (S_IFCHR | 0620));
  CHECK(dev->rdev == makedev(5, 1));
  CHECK(image.chunks(dev->ino, 0, 1).status().code() == Code::kInvalidInput);

  const Ino hole = resolve_ok(image, "c-hole");
  auto offsets = [&](uint64_t off, uint64_t len) {
    auto c = image.chunks(hole, off, len);
    REQUIRE(c.ok());
    std::vector<uint64_t> out;
    for (const auto& ref : *c) out.push_back(ref.file_offset);
    return out;
  };
  CHECK(offsets(0, 5 * kMiB) == std::vector<uint64_t>{kMiB, 3 * kMiB});
  CHECK(offsets(0, kMiB).empty());
  CHECK(offsets(0, kMiB + 1) == std::vector<uint64_t>{kMiB});
  CHECK(offsets(2 * kMiB - 1, 1) == std::vector<uint64_t>{kMiB});
  CHECK(offsets(2 * kMiB, kMiB).empty());
  CHECK(offsets(2 * kMiB, kMiB + 1) == std::vector<uint64_t>{3 * kMiB});
  CHECK(offsets(3 * kMiB + kMiB / 2, kMiB).empty());
  CHECK(offsets(kMiB + 5, 3 * kMiB) == std::vector<uint64_t>{kMiB, 3 * kMiB});
  auto second = image.chunks(hole, 3 * kMiB, 1);
  REQUIRE(second.ok());
  REQUIRE(second->size() == 1);
  const ChunkRef& c = (*second)[0];
  CHECK(c.compressed);
  CHECK(c.has_crc32);
  CHECK(c.crc32 == 0xdeadbeef);
  CHECK(c.compressed_size == 0x1000);
  CHECK(c.uncompressed_size == kMiB / 2);
  CHECK(c.compressed_offset == 200);
  CHECK(c.uncompressed_offset == 8192 + kMiB);
  CHECK(c.chunk_index == 2);
  CHECK(c.digest[0] == 0x33);
  CHECK(c.digest[31] == 0x33);
}

TEST_CASE("v5 synthetic image: malformed structures are refused with a message", "[rafs_v5][synthetic]") {
  struct Case {
    const char* what;
    std::function<void(SynImage&)> mutate;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"unknown super flag", [](SynImage& s) { s.flags |= 0x400; }, "superblock: unknown flags"},
      {"chunk size", [](SynImage& s) { s.chunk_size = 0x3000; }, "chunk size"},
      {"chunk size too small", [](SynImage& s) { s.chunk_size = 0x800; }, "chunk size"},
      {"blob id with slash", [](SynImage& s) { s.blob_ids[0] = "../etc"; }, "invalid blob id"},
      {"ext table count", [](SynImage& s) { s.ext_entries_override = 2; }, "extended blob table"},
      {"unsorted children", [](SynImage& s) { std::swap(s.inodes[1].name, s.inodes[2].name); }, "not strictly sorted"},
      {"duplicate names", [](SynImage& s) { s.inodes[2].name = "a-file"; }, "not strictly sorted"},
      {"entry listed twice",
       [](SynImage& s) { s.inodes[4].child_index = 5; }, "listed by directory index"},
      {"cycle to root", [](SynImage& s) { s.inodes[4].child_index = 1; }, "outside inode table"},
      {"children past the table", [](SynImage& s) { s.inodes[4].child_count = 2; }, "outside inode table"},
      {"wrong parent", [](SynImage& s) { s.inodes[6].parent = 1; }, "i_parent"},
      {"root parent", [](SynImage& s) { s.inodes[0].parent = 1; }, "root inode"},
      {"root name", [](SynImage& s) { s.inodes[0].name = "root"; }, "root inode: name"},
      {"root not a dir", [](SynImage& s) { s.inodes[0].mode = S_IFREG | 0755; }, "root inode: mode"},
      {"name with slash", [](SynImage& s) { s.inodes[5].name = "e/fifo"; }, "invalid name"},
      {"name with NUL", [](SynImage& s) { s.inodes[5].name = std::string("e\0fifo", 6); }, "invalid name"},
      {"dot name", [](SynImage& s) { s.inodes[1].name = "."; }, "invalid name"},
      {"empty name", [](SynImage& s) { s.inodes[5].name = ""; }, "name size 0"},
      {"long name", [](SynImage& s) { s.inodes[5].name = "e" + std::string(255, 'x'); }, "name size 256"},
      {"unknown type", [](SynImage& s) { s.inodes[5].mode = 0xF000 | 0644; }, "invalid mode"},
      {"unknown inode flag", [](SynImage& s) { s.inodes[5].flags = 0x100; }, "unknown flags"},
      {"symlink size on a file", [](SynImage& s) { s.inodes[5].symlink = "x"; }, "on a non-symlink"},
      {"symlink without target",
       [](SynImage& s) { s.inodes[5].mode = S_IFLNK | 0777; }, "empty target"},
      {"symlink size differs",
       [](SynImage& s) {
         s.inodes[5].mode = S_IFLNK | 0777;
         s.inodes[5].symlink = "abc";
         s.inodes[5].size = 4;
       },
       "differs from i_size"},
      {"symlink with NUL",
       [](SynImage& s) {
         s.inodes[5].mode = S_IFLNK | 0777;
         s.inodes[5].symlink = std::string("a\0b", 3);
         s.inodes[5].size = 3;
       },
       "NUL"},
      {"xattr pair too long", [](SynImage& s) { s.inodes[5].raw_xattr = std::string("\x20\0\0\0user.x\0v", 12); },
       "runs past the xattr area"},
      {"xattr without NUL", [](SynImage& s) { s.inodes[5].raw_xattr = std::string("\x06\0\0\0user.x", 10); },
       "no NUL"},
      {"xattr empty name", [](SynImage& s) { s.inodes[5].raw_xattr = std::string("\x02\0\0\0\0v", 6); },
       "empty name"},
      {"xattr truncated header", [](SynImage& s) { s.inodes[5].raw_xattr = std::string("\x01\0", 2); },
       "header"},
      {"chunk blob index", [](SynImage& s) { s.inodes[1].chunks[0].blob = 1; }, "blob index 1, image has 1 blobs"},
      {"chunk index past blob", [](SynImage& s) { s.inodes[1].chunks[0].index = 100; }, "blob has 100 chunks"},
      {"chunk flags", [](SynImage& s) { s.inodes[1].chunks[0].flags = 0x40; }, "unknown flags"},
      {"chunk count", [](SynImage& s) { s.inodes[1].size = kMiB + 1; }, "needs 2"},
      {"chunk size mismatch", [](SynImage& s) { s.inodes[1].size = 11; }, "the file needs 11"},
      {"chunk file offset", [](SynImage& s) { s.inodes[1].chunks[0].f_off = 4096; }, "file offset"},
      {"plain chunk sizes differ", [](SynImage& s) { s.inodes[1].chunks[0].c_size = 9; }, "stored uncompressed"},
      {"chunk larger than chunk size",
       [](SynImage& s) {
         s.inodes[3].chunks[0].d_size = 2 * kMiB;
         s.inodes[3].chunks[0].c_size = 2 * kMiB;
       },
       "outside 1..chunk size"},
      {"compressed size too large", [](SynImage& s) { s.inodes[3].chunks[1].c_size = 0x1000001; }, "exceeds 16 MiB"},
      {"chunk offset overflow", [](SynImage& s) { s.inodes[1].chunks[0].c_off = UINT64_MAX - 3; }, "overflows"},
      {"hole chunks overlap", [](SynImage& s) { s.inodes[3].chunks[1].f_off = kMiB + 4096; }, "overlaps"},
      {"hole chunks unsorted",
       [](SynImage& s) { std::swap(s.inodes[3].chunks[0], s.inodes[3].chunks[1]); }, "overlaps"},
      {"hole chunk past EOF", [](SynImage& s) { s.inodes[3].size = 3 * kMiB + 100; }, "past the file size"},
      {"too many chunk records",
       [](SynImage& s) {
         s.inodes[1].force_count = true;
         s.inodes[1].child_count = 1000000;
       },
       "run past the end"},
      {"hardlink to a different size",
       [](SynImage& s) {
         s.inodes[6].size = 9;
         s.inodes[6].chunks[0].d_size = 9;
         s.inodes[6].chunks[0].c_size = 9;
       },
       "hardlink"},
      {"hardlink of a directory", [](SynImage& s) { s.inodes[4].ino = 2; }, "only regular files"},
      {"hardlink to a link", [](SynImage& s) {
         // index 7 (link-to-a) points at 2; make 2 point at 7 as well.
         s.inodes[1].ino = 7;
       },
       "itself a link"},
      {"ino out of range", [](SynImage& s) { s.inodes[5].ino = 99; }, "outside 1..7"},
      {"unreachable entry",
       [](SynImage& s) {
         SynInode extra = s.inodes[5];
         extra.name = "z";
         s.inodes.push_back(extra);
       },
       "inode index 8: not reachable"},
      {"prefetch of a missing inode", [](SynImage& s) { s.prefetch = {42}; }, "prefetch table"},
      {"prefetch of a hardlink index", [](SynImage& s) { s.prefetch = {7}; }, "prefetch table"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    SynImage spec = sample_image();
    c.mutate(spec);
    auto image = open_synthetic(spec);
    REQUIRE_FALSE(image.ok());
    CHECK(image.status().code() == Code::kInvalidInput);
    CHECK_THAT(image.status().message(), Catch::StartsWith("bootstrap syn.boot: "));
    CHECK_THAT(image.status().message(), Catch::Contains(c.expect));
    CHECK(image.status().message().find('\n') == std::string::npos);
  }
  // Sanity: the unmodified image opens.
  CHECK(open_synthetic(sample_image()).ok());
}

TEST_CASE("v5 file-level checks", "[rafs_v5]") {
  const auto good = read_all(fixture(kSha256Fixture));
  auto refused = [](std::vector<uint8_t> bytes, const char* expect) {
    auto image = Image::from_bytes(bytes, "x");
    INFO(expect);
    REQUIRE_FALSE(image.ok());
    CHECK_THAT(image.status().message(), Catch::Contains(expect));
  };
  refused({good.begin(), good.begin() + 8192}, "not larger than");
  refused({good.begin(), good.end() - 4}, "multiple of 8");
  auto b = good;
  b[4] = 0x01;
  refused(b, "version");
  b = good;
  b[8] = 0x01;
  refused(b, "superblock: size");
  b = good;
  put<uint64_t>(b, 48, 0x2000);  // blob table over the inode table
  refused(b, "overlaps");
  b = good;
  put<uint32_t>(b, 56, 0x10000000);
  refused(b, "inode table");
  b = good;
  put<uint32_t>(b, 56, 0);
  refused(b, "inode table: is empty");
  b = good;
  put<uint64_t>(b, 72, good.size() - 32);
  refused(b, "extended blob table");
}

// ---------------------------------------------------------------------------
// Robustness: corrupted variants either fail to open with a message or can
// be walked completely.

struct Tally {
  size_t opened = 0;
  size_t refused = 0;
};

// Corrupted variants log warnings by design (e.g. unknown blob feature
// bits); keep the test output readable.
class QuietLog {
 public:
  QuietLog() : saved_(log::level()) { log::set_level(log::Level::kError); }
  ~QuietLog() { log::set_level(saved_); }

 private:
  log::Level saved_;
};

void check_variant(const std::vector<uint8_t>& bytes, const std::string& label, Tally* tally) {
  auto image = Image::from_bytes(bytes, label);
  if (!image.ok()) {
    ++tally->refused;
    if (image.status().message().empty()) FAIL_CHECK(label << ": refused without a message");
    return;
  }
  ++tally->opened;
  WalkStats st;
  Status s = walk_all(**image, &st);
  if (!s.ok()) FAIL_CHECK(label << ": opened but the walk failed: " << s.message());
  if (rafs_v5_layout(**image) == RafsV5Layout::kLegacy && !verify_rafs_v5_inode_digests(**image).ok())
    FAIL_CHECK(label << ": legacy layout accepted without verified digests");
}

TEST_CASE("v5 robustness: truncation, bit flips, byte writes, table shuffles", "[rafs_v5][robust]") {
  const std::string which = GENERATE(kSha256Fixture, kBlake3Fixture);
  const auto original = read_all(fixture(which));
  const size_t size = original.size();
  QuietLog quiet;
  Tally tally;

  // Truncation at every 8-byte boundary and a few odd lengths.
  std::vector<size_t> lengths;
  for (size_t len = 0; len < 8192; len += 1024) lengths.push_back(len);
  for (size_t len = 8192; len < size; len += 8) lengths.push_back(len);
  for (size_t len : lengths) {
    check_variant({original.begin(), original.begin() + len}, which + " truncated " + std::to_string(len), &tally);
  }
  for (size_t len : {size_t{1}, size_t{8191}, size_t{8193}, size - 1, size - 7})
    check_variant({original.begin(), original.begin() + len}, which + " truncated " + std::to_string(len), &tally);

  // One bit flipped in every byte of the superblock header and of everything
  // after the superblock (the reserved area is not read).
  auto positions = [&]() {
    std::vector<size_t> p;
    for (size_t i = 0; i < 96; ++i) p.push_back(i);
    for (size_t i = 8192; i < size; ++i) p.push_back(i);
    return p;
  }();
  for (size_t pos : positions) {
    auto b = original;
    b[pos] ^= static_cast<uint8_t>(1u << (pos % 8));
    check_variant(b, which + " bit flip at " + std::to_string(pos), &tally);
  }
  // Whole-byte writes at every third position.
  for (size_t i = 0; i < positions.size(); i += 3) {
    for (uint8_t v : {uint8_t{0x00}, uint8_t{0xff}, uint8_t{0x80}}) {
      auto b = original;
      if (b[positions[i]] == v) continue;
      b[positions[i]] = v;
      check_variant(b, which + " byte " + std::to_string(v) + " at " + std::to_string(positions[i]), &tally);
    }
  }
  // Inode table entries swapped or duplicated (record sharing, cycles).
  const uint32_t n = 54;
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t j = i + 1; j < n; j += 3) {
      auto b = original;
      uint32_t ei, ej;
      std::memcpy(&ei, &b[0x2000 + 4 * i], 4);
      std::memcpy(&ej, &b[0x2000 + 4 * j], 4);
      put<uint32_t>(b, 0x2000 + 4 * i, ej);
      put<uint32_t>(b, 0x2000 + 4 * j, (i + j) % 2 ? ei : ej);
      check_variant(b, which + " table swap " + std::to_string(i) + "," + std::to_string(j), &tally);
    }
  }
  // Random multi-byte corruption of the records and tables.
  std::mt19937_64 rng(0x5eed + size);
  for (int round = 0; round < 1500; ++round) {
    auto b = original;
    const int writes = 1 + static_cast<int>(rng() % 6);
    for (int w = 0; w < writes; ++w) {
      const size_t pos = 8192 + rng() % (size - 8192);
      b[pos] = static_cast<uint8_t>(rng());
    }
    check_variant(b, which + " random round " + std::to_string(round), &tally);
  }
  INFO("opened " << tally.opened << ", refused " << tally.refused);
  CHECK(tally.opened > 100);   // many flips hit fields that are not structural
  CHECK(tally.refused > 1000);
}

TEST_CASE("v5 robustness: corrupted legacy bootstrap", "[rafs_v5][robust][legacy]") {
  const auto original = read_all(fixture(kLegacyFixture));
  QuietLog quiet;
  Tally tally;
  std::mt19937_64 rng(0x1e9acc);
  // Superblock and table fields, root record, and random spots in records.
  std::vector<size_t> positions;
  for (size_t i = 0; i < 80; i += 4) positions.push_back(i);
  for (size_t i = 0x2000; i < 0x2000 + 64; i += 4) positions.push_back(i);
  for (size_t i = 0x12748; i < 0x12748 + 136; i += 4) positions.push_back(i);
  for (int k = 0; k < 40; ++k) positions.push_back(0x12748 + rng() % (original.size() - 0x12748));
  for (size_t pos : positions) {
    auto b = original;
    b[pos] ^= static_cast<uint8_t>(1u << (pos % 8));
    check_variant(b, "legacy bit flip at " + std::to_string(pos), &tally);
  }
  for (size_t len : {size_t{8200}, size_t{0x12748}, original.size() / 2, original.size() - 8}) {
    check_variant({original.begin(), original.begin() + len}, "legacy truncated " + std::to_string(len), &tally);
  }
  INFO("opened " << tally.opened << ", refused " << tally.refused);
  CHECK(tally.refused > 0);
}

// Longer structured fuzzing, not run by default:
//   NYDUS_V5_FUZZ_ROUNDS=200000 test_bootstrap_v5 "[fuzz]"
// Each round copies a v5 fixture and overwrites a few inode record fields
// (with small values or the same field of another record), table entries or
// random bytes.
TEST_CASE("v5 structured fuzz", "[.][fuzz][rafs_v5]") {
  const char* env = std::getenv("NYDUS_V5_FUZZ_ROUNDS");
  const long rounds = env ? std::atol(env) : 20000;
  QuietLog quiet;
  for (const char* which : {kSha256Fixture, kBlake3Fixture}) {
    const auto original = read_all(fixture(which));
    std::vector<uint64_t> records;
    for (uint32_t i = 0; i < 54; ++i) {
      uint32_t e;
      std::memcpy(&e, &original[0x2000 + 4 * i], 4);
      records.push_back(uint64_t{e} << 3);
    }
    const uint32_t fields[] = {32, 40, 48, 52, 60, 64, 72, 80, 88, 92, 96, 100, 102, 104};
    std::mt19937_64 rng(std::hash<std::string>{}(which));
    Tally tally;
    for (long round = 0; round < rounds; ++round) {
      auto b = original;
      const int edits = 1 + static_cast<int>(rng() % 3);
      for (int k = 0; k < edits; ++k) {
        const uint64_t rec = records[rng() % records.size()];
        switch (rng() % 4) {
          case 0: {  // a record field := small value
            const uint32_t f = fields[rng() % std::size(fields)];
            const uint32_t v = static_cast<uint32_t>(rng() % 70);
            if (f == 100 || f == 102) put<uint16_t>(b, rec + f, static_cast<uint16_t>(v));
            else put<uint32_t>(b, rec + f, v);
            break;
          }
          case 1: {  // a record field := same field of another record
            const uint32_t f = fields[rng() % std::size(fields)];
            const uint64_t other = records[rng() % records.size()];
            std::memcpy(&b[rec + f], &original[other + f], (f == 100 || f == 102) ? 2 : 4);
            break;
          }
          case 2: {  // a table entry := another entry
            const uint32_t i = static_cast<uint32_t>(rng() % 54);
            const uint32_t j = static_cast<uint32_t>(rng() % 54);
            std::memcpy(&b[0x2000 + 4 * i], &original[0x2000 + 4 * j], 4);
            break;
          }
          default: {  // a random byte in a chunk/record area
            b[8192 + rng() % (b.size() - 8192)] = static_cast<uint8_t>(rng());
            break;
          }
        }
      }
      check_variant(b, std::string(which) + " fuzz round " + std::to_string(round), &tally);
    }
    INFO(which << ": opened " << tally.opened << ", refused " << tally.refused);
    CHECK(tally.refused > 0);
  }
}

}  // namespace
}  // namespace nydus::bootstrap
