// fs::Filesystem driven directly (no mount) on the upstream fixtures.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <string>
#include <vector>

#include "backend/localfs_backend.h"
#include "common/digest.h"
#include "fs/filesystem.h"
#include "test/test_util.h"

using namespace nydus;

namespace {

std::unique_ptr<fs::Filesystem> open_fs(const std::string& boot, const std::string& blob_dir, bool validate) {
  auto image = bootstrap::Image::open(nydus::test::fixture(boot));
  REQUIRE(image.ok());
  backend::LocalFsConfig local;
  local.dir = nydus::test::fixture(blob_dir);
  backend::ChunkReaderOptions options;
  options.validate_digest = validate;
  auto reader = std::make_unique<backend::ChunkReader>((*image)->blobs(), backend::make_localfs_backend(local),
                                                       options);
  fs::FsOptions fs_options;
  fs_options.enable_xattr = true;
  fs_options.default_uid = 4242;
  fs_options.default_gid = 4343;
  return std::make_unique<fs::Filesystem>(std::move(image).value(), std::move(reader), fs_options);
}

std::string read_all(const fs::Filesystem& f, fs::NodeId node, size_t piece) {
  std::string out;
  std::vector<uint8_t> buf(piece);
  for (uint64_t off = 0;; off += piece) {
    auto n = f.read(node, off, buf);
    REQUIRE(n.ok());
    out.append(reinterpret_cast<const char*>(buf.data()), *n);
    if (*n < piece) break;
  }
  return out;
}

std::string sha256_hex(const std::string& s) {
  return to_hex(digest(bootstrap::Digester::kSha256, {reinterpret_cast<const uint8_t*>(s.data()), s.size()}));
}

}  // namespace

TEST_CASE("v6: root is node 1, children map to nid+2, contents are byte-exact") {
  auto f = open_fs("bootstrap/rafs-v6-2.2.boot", "blobs", true);
  auto root = f->getattr(fs::kRootNode);
  REQUIRE(root.ok());
  CHECK(S_ISDIR(root->st_mode));
  CHECK(root->st_ino == 128);

  auto lib = f->lookup(fs::kRootNode, "lib.rs");
  REQUIRE(lib.ok());
  CHECK(lib->node == 133 + 2);
  CHECK(lib->attr.st_ino == 133);
  CHECK(lib->attr.st_size == 16931);
  CHECK(lib->attr.st_mtim.tv_nsec == 628661334);
  // EXPLICIT_UID_GID is set in this image: ids come from the image.
  CHECK(lib->attr.st_uid != 4242);

  for (size_t piece : {size_t{1} << 20, size_t{4096}, size_t{1000}}) {
    CHECK(sha256_hex(read_all(*f, lib->node, piece)) ==
          "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69");
  }
  auto sync = f->lookup(fs::kRootNode, "sync_io.rs");
  REQUIRE(sync.ok());
  CHECK(sha256_hex(read_all(*f, sync->node, 8192)) ==
        "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96");

  // Reads past EOF return 0 bytes, reads across EOF are clipped.
  std::vector<uint8_t> buf(100);
  CHECK(*f->read(lib->node, 16931, buf) == 0);
  CHECK(*f->read(lib->node, 16900, buf) == 31);

  CHECK(f->lookup(fs::kRootNode, "missing").status().code() == Code::kNotFound);
  CHECK(f->open(fs::kRootNode).code() == Code::kIsDir);
  CHECK(f->open(lib->node).ok());
  CHECK(f->getattr(0).status().code() != Code::kOk);
}

TEST_CASE("v6: readdir lists . .. and files, and resumes at any cookie") {
  auto f = open_fs("bootstrap/rafs-v6-2.2.boot", "blobs", false);
  std::vector<std::pair<std::string, uint64_t>> all;
  REQUIRE(f->readdir(fs::kRootNode, 0, true, [&](std::string_view name, fs::NodeId node, const struct stat& st,
                                                  uint64_t next) {
    all.emplace_back(std::string(name), next);
    if (name == "." || name == "..") CHECK(node == fs::kRootNode);
    CHECK(st.st_ino != 0);
    return true;
  }).ok());
  REQUIRE(all.size() == 4);
  CHECK(all[0].first == ".");
  CHECK(all[1].first == "..");
  CHECK(all[2].first == "lib.rs");
  CHECK(all[3].first == "sync_io.rs");
  // Resuming from each entry's next cookie yields exactly the rest.
  for (size_t i = 0; i < all.size(); ++i) {
    std::vector<std::string> rest;
    REQUIRE(f->readdir(fs::kRootNode, all[i].second, false, [&](std::string_view name, fs::NodeId, const struct stat&,
                                                                 uint64_t) {
      rest.emplace_back(name);
      return true;
    }).ok());
    CHECK(rest.size() == all.size() - i - 1);
  }
}

TEST_CASE("v5: owners fall back to the daemon's ids, hardlinks share a node, symlinks resolve") {
  auto f = open_fs("repeatable/sha256-nocompress-repeatable", "repeatable/blobs", true);
  auto dir = f->lookup(fs::kRootNode, "hardlink-test");
  REQUIRE(dir.ok());
  auto foo = f->lookup(dir->node, "foo");
  auto sh = f->lookup(dir->node, "test.sh");
  REQUIRE(foo.ok());
  REQUIRE(sh.ok());
  CHECK(foo->node == sh->node);
  CHECK(foo->attr.st_nlink == 3);
  CHECK(foo->attr.st_uid == 4242);  // no EXPLICIT_UID_GID in this image
  CHECK(foo->attr.st_gid == 4343);
  CHECK(read_all(*f, foo->node, 4096).size() == static_cast<size_t>(foo->attr.st_size));

  auto up = f->lookup(dir->node, "..");
  REQUIRE(up.ok());
  CHECK(up->node == fs::kRootNode);

  auto link_dir = f->lookup(fs::kRootNode, "symlink-test");
  REQUIRE(link_dir.ok());
  bool saw_link = false;
  REQUIRE(f->readdir(link_dir->node, 0, true, [&](std::string_view, fs::NodeId node, const struct stat& st, uint64_t) {
    if (S_ISLNK(st.st_mode)) {
      auto target = f->readlink(node);
      REQUIRE(target.ok());
      CHECK(target->size() == static_cast<size_t>(st.st_size));
      saw_link = true;
    }
    return true;
  }).ok());
  CHECK(saw_link);
  CHECK(f->listxattr(fs::kRootNode).ok());
  CHECK(f->getxattr(fs::kRootNode, "user.none").status().code() == Code::kNoData);
}
