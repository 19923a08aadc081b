// The image build driver (image_builder.h), the bootstrap loader and check:
// trees written as images read back into the same tree, parents dedup,
// builds are repeatable, and failures leave no files.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bootstrap/image.h"
#include "bootstrap/writer.h"
#include "builder/bootstrap_loader.h"
#include "builder/image_builder.h"
#include "builder/image_check.h"
#include "test/test_util.h"

namespace nydus::test {
namespace {

namespace fs = std::filesystem;
using builder::BuildOptions;
using builder::Node;
using builder::Tree;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "nydus-imgb-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<uint8_t> read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary);
  out << data;
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// A small tree with every kind the loader must carry over.
void make_tree(const fs::path& root) {
  fs::create_directories(root / "d" / "e");
  write_all(root / "empty", "");
  write_all(root / "small", "hello\n");
  write_all(root / "multi", random_bytes(3 * 65536 + 17, 1));
  write_all(root / "d" / "dup", random_bytes(70000, 2));
  write_all(root / "d" / "e" / "dup2", random_bytes(70000, 2));
  fs::create_hard_link(root / "small", root / "d" / "hardlink");
  fs::create_symlink("../small", root / "d" / "link");
  REQUIRE(::mkfifo((root / "fifo").c_str(), 0600) == 0);
  ::chmod((root / "multi").c_str(), 04755);
}

BuildOptions options_for(const fs::path& out, uint32_t version) {
  BuildOptions o;
  o.fs_version = version;
  o.chunk_size = 0x10000;
  o.bootstrap_path = (out / "image.boot").string();
  o.blob_dir = out.string();
  o.threads = 2;
  return o;
}

TEST_CASE("a built image loads back into a tree that writes the same bootstrap") {
  for (uint32_t version : {5u, 6u}) {
    DYNAMIC_SECTION("v" << version) {
      TempDir src, out;
      make_tree(src.path());
      builder::CreateOptions co;
      co.source = src.path().string();
      co.build = options_for(out.path(), version);
      auto built = builder::create_image(co);
      REQUIRE(built.ok());
      CHECK(built->stats.files == 4);  // small (its hardlink not again), multi, dup, dup2; not the empty one
      CHECK(built->stats.chunks_stored + 2 == built->stats.chunks);  // dup chunks stored once

      auto image = bootstrap::Image::open(co.build.bootstrap_path);
      REQUIRE(image.ok());
      auto tree = builder::load_bootstrap(**image);
      REQUIRE(tree.ok());
      const Node* multi = (*tree)->find("multi");
      REQUIRE(multi != nullptr);
      CHECK(multi->mode == (S_IFREG | 04755));
      CHECK(multi->chunks.size() == 4);
      const Node* link = (*tree)->find("d/link");
      REQUIRE(link != nullptr);
      CHECK(link->symlink_target == "../small");
      CHECK((*tree)->find("d/hardlink")->hardlink_group != 0);
      CHECK((*tree)->find("d/hardlink")->hardlink_group == (*tree)->find("small")->hardlink_group);
      CHECK((*tree)->find("small")->nlink == 2);

      bootstrap::WriterOptions wo;
      wo.chunk_size = co.build.chunk_size;
      auto again = version == 5 ? bootstrap::write_rafs_v5(**tree, (*image)->blobs(), wo)
                                : bootstrap::write_rafs_v6(**tree, (*image)->blobs(), wo);
      REQUIRE(again.ok());
      CHECK(*again == read_all(co.build.bootstrap_path));

      builder::CheckOptions check;
      check.bootstrap = co.build.bootstrap_path;
      check.blob_dir = out.path().string();
      auto report = builder::check_image(check);
      REQUIRE(report.ok());
      CHECK(report->chunks_verified == built->stats.chunks_stored);
    }
  }
}

TEST_CASE("a parent's chunks are referenced, not stored again") {
  TempDir lower, upper, out;
  write_all(lower.path() / "base", random_bytes(200000, 3));
  write_all(upper.path() / "copy", random_bytes(200000, 3));
  write_all(upper.path() / "fresh", random_bytes(1000, 4));
  builder::CreateOptions co;
  co.source = lower.path().string();
  co.build = options_for(out.path(), 6);
  co.build.bootstrap_path = (out.path() / "lower.boot").string();
  auto first = builder::create_image(co);
  REQUIRE(first.ok());

  co.source = upper.path().string();
  co.parent_bootstrap = co.build.bootstrap_path;
  co.build.bootstrap_path = (out.path() / "upper.boot").string();
  auto second = builder::create_image(co);
  REQUIRE(second.ok());
  CHECK(second->stats.chunks_from_parent == 4);
  CHECK(second->stats.chunks_stored == 1);
  REQUIRE(second->blobs.size() == 2);
  CHECK(second->blobs[0].id == first->blob_id);
  CHECK(second->blobs[1].chunk_count == 1);

  SECTION("a parent of another chunk size is refused") {
    co.build.chunk_size = 0x100000;
    co.build.bootstrap_path = (out.path() / "bad.boot").string();
    auto bad = builder::create_image(co);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.status().message().find("chunk size") != std::string::npos);
    CHECK_FALSE(fs::exists(co.build.bootstrap_path));
  }
}

TEST_CASE("builds are repeatable whatever the thread count") {
  TempDir src, a, b;
  make_tree(src.path());
  std::vector<std::vector<uint8_t>> boots, blobs;
  for (auto [dir, threads] : {std::pair{&a, 1u}, std::pair{&b, 3u}}) {
    builder::CreateOptions co;
    co.source = src.path().string();
    co.build = options_for(dir->path(), 6);
    co.build.threads = threads;
    auto r = builder::create_image(co);
    REQUIRE(r.ok());
    boots.push_back(read_all(co.build.bootstrap_path));
    blobs.push_back(read_all(r->blob_path));
  }
  CHECK(boots[0] == boots[1]);
  CHECK(blobs[0] == blobs[1]);
}

TEST_CASE("a failed build leaves no files") {
  TempDir out;
  builder::CreateOptions co;
  co.source = (out.path() / "missing").string();
  co.build = options_for(out.path(), 6);
  CHECK_FALSE(builder::create_image(co).ok());

  // A tree whose second file fails to read after the first was chunked.
  Tree tree;
  for (const char* name : {"a", "b"}) {
    auto n = std::make_unique<Node>();
    n->mode = S_IFREG | 0644;
    n->size = 100000;
    const bool fails = std::strcmp(name, "b") == 0;
    n->content.read = [fails](uint64_t, std::span<uint8_t> dst) -> Status {
      if (fails) return Status::io("injected read failure");
      std::memset(dst.data(), 'x', dst.size());
      return Status::Ok();
    };
    REQUIRE(tree.add(name, std::move(n)).ok());
  }
  tree.finalize();
  auto r = builder::build_image(tree, {}, nullptr, options_for(out.path(), 6));
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("'/b'") != std::string::npos);
  CHECK(fs::is_empty(out.path()));
}

TEST_CASE("chunk sizes parse like upstream's") {
  CHECK(*builder::parse_chunk_size("0x100000") == 0x100000);
  CHECK(*builder::parse_chunk_size("4096") == 4096);
  CHECK(*builder::parse_chunk_size("0X1000000") == 0x1000000);
  for (const char* bad : {"0x800", "0x2000000", "0x1234", "abc", "", "0x", "-4096", "99999999999"})
    CHECK_FALSE(builder::parse_chunk_size(bad).ok());
}

TEST_CASE("check passes on the upstream fixtures that have blobs") {
  for (auto [boot, blobs] : {std::pair{"bootstrap/rafs-v6-2.2.boot", "blobs"},
                             std::pair{"repeatable/sha256-nocompress-repeatable", "repeatable/blobs"}}) {
    builder::CheckOptions o;
    o.bootstrap = fixture(boot);
    o.blob_dir = fixture(blobs);
    auto r = builder::check_image(o);
    INFO(boot);
    REQUIRE(r.ok());
    CHECK(r->chunks_verified > 0);
  }
}

}  // namespace
}  // namespace nydus::test
