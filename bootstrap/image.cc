#include "bootstrap/image.h"

#include <cstring>

#include "bootstrap/rafs_v5.h"
#include "bootstrap/rafs_v6.h"
#include "common/file_bytes.h"

namespace nydus::bootstrap {

const char* compressor_name(Compressor c) {
  switch (c) {
    case Compressor::kNone: return "none";
    case Compressor::kLz4Block: return "lz4_block";
    case Compressor::kGzip: return "gzip";
    case Compressor::kZstd: return "zstd";
  }
  return "unknown";
}

const char* digester_name(Digester d) {
  switch (d) {
    case Digester::kBlake3: return "blake3";
    case Digester::kSha256: return "sha256";
  }
  return "unknown";
}

namespace {

uint32_t load_u32(std::span<const uint8_t> bytes, size_t offset) {
  uint32_t v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

Result<std::unique_ptr<Image>> open_detected(FileBytes file, const std::string& name) {
  auto bytes = file.bytes();
  if (bytes.size() >= kErofsSuperOffset + 4 && load_u32(bytes, kErofsSuperOffset) == kErofsMagic)
    return open_rafs_v6(std::move(file), name);
  if (bytes.size() >= 8 && load_u32(bytes, 0) == kRafsV5Magic) return open_rafs_v5(std::move(file), name);
  return Status::invalid("bootstrap " + name + ": not a RAFS image (no RAFS v5 magic at 0, no EROFS magic at 1024)");
}

}  // namespace

Result<std::unique_ptr<Image>> Image::open(const std::string& path) {
  auto file = FileBytes::open(path);
  if (!file.ok()) return file.status().with_context("bootstrap");
  return open_detected(std::move(file).value(), path);
}

Result<std::unique_ptr<Image>> Image::from_bytes(std::span<const uint8_t> bytes, const std::string& name) {
  return open_detected(FileBytes::from_bytes(bytes), name);
}

}  // namespace nydus::bootstrap
