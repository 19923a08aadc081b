// FileBytes: the whole content of a file, read once into memory. Move-only.
// The bytes are immutable for the life of the object, so concurrent reads
// from any thread are safe.
//
// Why a copy and not mmap: the bootstrap is untrusted and may be truncated
// or rewritten by someone else while mounted; a mapped page past the new
// end would kill the daemon with SIGBUS. Readers cap the size (RAFS
// metadata <= 2 GiB) before trusting anything inside.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/status.h"

namespace nydus {

class FileBytes {
 public:
  FileBytes() = default;
  FileBytes(FileBytes&& other) noexcept : owned_(std::move(other.owned_)), size_(other.size_) { other.size_ = 0; }
  FileBytes& operator=(FileBytes&& other) noexcept {
    owned_ = std::move(other.owned_);
    size_ = other.size_;
    other.size_ = 0;
    return *this;
  }
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;

  // Reads `path`. Fails with a message naming the path on any error.
  static Result<FileBytes> open(const std::string& path);
  // Wraps a copy of `bytes` (tests and fuzzers).
  static FileBytes from_bytes(std::span<const uint8_t> bytes);

  std::span<const uint8_t> bytes() const { return {owned_.get(), size_}; }
  size_t size() const { return size_; }

 private:
  // Not zero-filled before the read overwrites it: for a 20 MiB bootstrap
  // the fill alone was a fifth of the daemon's start-up time.
  std::unique_ptr<uint8_t[]> owned_;
  size_t size_ = 0;
};

}  // namespace nydus
