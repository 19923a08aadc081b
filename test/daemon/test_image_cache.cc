// ImageCache: one parsed bootstrap per unchanged file, a new parse when the
// file changes, nothing kept once unused.
#include <sys/stat.h>
#include <utime.h>

#include <filesystem>

#include <catch2/catch.hpp>

#include "daemon/image_cache.h"
#include "test_util.h"

using nydus::daemon::ImageCache;
namespace test = nydus::test;

TEST_CASE("image cache: shared while unchanged, reparsed when the file changes, dropped when unused") {
  test::TempDir dir("image-cache");
  const std::string path = dir / "image.boot";
  std::filesystem::copy_file(test::fixture("bootstrap/rafs-v6-2.2.boot"), path);
  {
    auto first = ImageCache::open(path);
    REQUIRE(first.ok());
    auto second = ImageCache::open(path);
    REQUIRE(second.ok());
    CHECK(first->get() == second->get());
    CHECK(ImageCache::live_images() == 1);

    // Rewritten in place (new mtime/ctime): parsed again, the old parse
    // stays with whoever holds it.
    struct utimbuf times {1000000, 1000000};
    REQUIRE(utime(path.c_str(), &times) == 0);
    auto third = ImageCache::open(path);
    REQUIRE(third.ok());
    CHECK(third->get() != first->get());
    CHECK((*third)->super().version == (*first)->super().version);

    // Replaced by another file under the same name: a different inode.
    const std::string other = dir / "other.boot";
    std::filesystem::copy_file(test::fixture("repeatable/sha256-nocompress-repeatable"), other);
    std::filesystem::rename(other, path);
    auto fourth = ImageCache::open(path);
    REQUIRE(fourth.ok());
    CHECK((*fourth)->super().version == 5);
  }
  CHECK(ImageCache::live_images() == 0);

  // Errors are the bootstrap reader's.
  auto missing = ImageCache::open(dir / "missing.boot");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find("missing.boot") != std::string::npos);
}
