// Helpers shared by the Catch2 unit tests.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace nydus::test {

// Root of the upstream-made images: $NYDUS_FIXTURES, else the
// ../shared/fixtures/nydus next to the source tree (set at build time).
inline std::string fixtures_dir() {
  if (const char* env = std::getenv("NYDUS_FIXTURES"); env && *env) return env;
  return NYDUS_DEFAULT_FIXTURES;
}

inline std::string fixture(const std::string& relative) { return fixtures_dir() + "/" + relative; }

// True under CI ($CI set): tests that need root, /dev/fuse or a tool must
// then fail when it is missing, never skip.
inline bool in_ci() { return std::getenv("CI") != nullptr; }

// The whole file at `path`; throws (a test failure) naming it when it
// cannot be read.
inline std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Replaces the file at `path` with `data`; throws naming it on failure.
inline void write_file(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!out.good()) throw std::runtime_error("cannot write " + path);
}

// A fresh directory under the system temp dir, removed with its contents
// when the object goes away. Throws (a test failure) if it cannot be made.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "nydus-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

}  // namespace nydus::test
