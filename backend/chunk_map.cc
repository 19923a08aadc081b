#include "backend/chunk_map.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#include "common/bits.h"
#include "common/log.h"

namespace nydus::backend {
namespace {

// Header field offsets.
constexpr size_t kMagicOff = 0;
constexpr size_t kVersionOff = 4;
constexpr size_t kMagic2Off = 8;
constexpr size_t kAllReadyOff = 12;

constexpr uint32_t to_le(uint32_t v) {
  if constexpr (std::endian::native == std::endian::big) return __builtin_bswap32(v);
  return v;
}

// The header fields are read through atomic_ref: another process (or our
// own mark_all_ready) may write all_ready while we look at it.
uint32_t load_header_u32(uint8_t* base, size_t off) {
  return to_le(std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(base + off))
                   .load(std::memory_order_acquire));
}

std::string errno_text() { return std::strerror(errno); }

Status write_all_at(int fd, const uint8_t* data, size_t len, uint64_t offset, const std::string& path) {
  while (len > 0) {
    const ssize_t n = ::pwrite(fd, data, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::io("cannot write " + std::to_string(len) + " bytes at offset " +
                        std::to_string(offset) + " of " + path + ": " + errno_text());
    }
    if (n == 0) return Status::io("write to " + path + " made no progress");
    data += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status fsync_file(int fd, const std::string& path) {
  if (::fsync(fd) != 0) return Status::io("cannot fsync " + path + ": " + errno_text());
  return Status::Ok();
}

// Upstream's write_header: size first, then the header, each step synced,
// so a crash leaves either an all-zero file (repaired on the next open) or
// a complete header.
Status write_header(int fd, const std::string& path, uint64_t file_size) {
  if (::ftruncate(fd, static_cast<off_t>(file_size)) != 0)
    return Status::io("cannot set the size of chunk_map file " + path + " to " +
                      std::to_string(file_size) + ": " + errno_text());
  NYDUS_TRY(fsync_file(fd, path));
  std::array<uint8_t, kChunkMapHeaderSize> header{};
  const uint32_t fields[4] = {to_le(kChunkMapMagic), to_le(kChunkMapVersion), to_le(kChunkMapMagic2), 0};
  std::memcpy(header.data(), fields, sizeof fields);
  NYDUS_TRY(write_all_at(fd, header.data(), header.size(), 0, path));
  return fsync_file(fd, path);
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// Owns a mapping until it is handed to a ChunkMap.
struct Mapping {
  uint8_t* base = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (base != nullptr) ::munmap(base, size);
  }
  uint8_t* release() { return std::exchange(base, nullptr); }
};

// Set bits among the first `chunk_count` of the bitmap after the header
// (padding bits of the last byte mean nothing). Atomic byte loads: other
// threads and processes set bits concurrently.
uint32_t set_bits_in(uint8_t* base, uint32_t chunk_count) {
  uint32_t ready = 0;
  const uint64_t full_bytes = chunk_count / 8;
  for (uint64_t i = 0; i < full_bytes; ++i)
    ready += std::popcount(std::atomic_ref<uint8_t>(base[kChunkMapHeaderSize + i]).load(std::memory_order_acquire));
  if (chunk_count % 8 != 0) {
    const uint8_t mask = static_cast<uint8_t>(0xFF00u >> (chunk_count % 8));
    ready += std::popcount(static_cast<uint8_t>(
        std::atomic_ref<uint8_t>(base[kChunkMapHeaderSize + full_bytes]).load(std::memory_order_acquire) & mask));
  }
  return ready;
}

}  // namespace

std::string chunk_map_path(const std::string& work_dir, const std::string& blob_id) {
  std::string dir = work_dir;
  if (!dir.empty() && dir.back() != '/') dir += '/';
  return dir + blob_id + ".blob.data.chunk_map";
}

Result<std::unique_ptr<ChunkMap>> ChunkMap::open(const std::string& path, uint32_t chunk_count) {
  if (chunk_count == 0)
    return std::unique_ptr<ChunkMap>(new ChunkMap(path, UniqueFd(), nullptr, 0, 0, kChunkMapVersion, 0));

  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666));
  if (!fd.valid()) return Status::io("cannot open or create chunk_map file " + path + ": " + errno_text());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::io("cannot stat chunk_map file " + path + ": " + errno_text());
  if (!S_ISREG(st.st_mode)) return Status::invalid("chunk_map file " + path + " is not a regular file");

  const uint64_t bitmap_size = div_round_up(chunk_count, 8);
  const uint64_t expected = kChunkMapHeaderSize + bitmap_size;
  bool fresh = false;
  if (st.st_size == 0) {
    NYDUS_TRY(write_header(fd.get(), path, expected));
    fresh = true;
  } else if (static_cast<uint64_t>(st.st_size) != expected) {
    // Too risky to trust a bitmap of another size: it belongs to another
    // chunk count, or was cut short.
    return Status::invalid("chunk_map file " + path + " has " + std::to_string(st.st_size) +
                           " bytes, expected " + std::to_string(expected) + " (4096-byte header + " +
                           std::to_string(bitmap_size) + "-byte bitmap for " +
                           std::to_string(chunk_count) + " chunks)");
  }

  Mapping map;
  void* p = ::mmap(nullptr, expected, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return Status::io("cannot mmap chunk_map file " + path + ": " + errno_text());
  map.base = static_cast<uint8_t*>(p);
  map.size = expected;
  uint8_t* const base = map.base;

  const uint32_t magic = load_header_u32(base, kMagicOff);
  if (magic != kChunkMapMagic) {
    // All zero: a crash between ftruncate and the header write (ours or
    // upstream's). Anything else is not a chunk_map.
    for (uint64_t i = 0; i < expected; ++i) {
      if (std::atomic_ref<uint8_t>(base[i]).load(std::memory_order_relaxed) != 0)
        return Status::invalid("chunk_map file " + path + " has an invalid header (magic " + hex32(magic) +
                               ", expected " + hex32(kChunkMapMagic) + ")");
    }
    LOG_INFO("chunk_map file %s has an all-zero header (interrupted creation); rewriting it", path.c_str());
    NYDUS_TRY(write_header(fd.get(), path, expected));
    fresh = true;
  }

  const uint32_t version = load_header_u32(base, kVersionOff);
  if (version >= 1 && load_header_u32(base, kMagic2Off) != kChunkMapMagic2)
    return Status::invalid("chunk_map file " + path + " has an invalid header (magic2 " +
                           hex32(load_header_u32(base, kMagic2Off)) + ", expected " +
                           hex32(kChunkMapMagic2) + ")");

  uint32_t not_ready = chunk_count;
  if (version >= 1 && load_header_u32(base, kAllReadyOff) == kChunkMapAllReady) {
    not_ready = 0;
  } else if (!fresh) {
    not_ready = chunk_count - set_bits_in(base, chunk_count);
    if (not_ready == 0 && version >= 1) {
      std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(base + kAllReadyOff))
          .store(to_le(kChunkMapAllReady), std::memory_order_release);
      // Upstream ignores a failure here too: all_ready is only a shortcut.
      if (::fsync(fd.get()) != 0)
        LOG_WARN("cannot fsync chunk_map file %s after marking it all ready: %s", path.c_str(),
                 errno_text().c_str());
    }
  }

  // Pull the bitmap in now rather than one page fault at a time.
  (void)::posix_fadvise(fd.get(), 0, static_cast<off_t>(expected), POSIX_FADV_WILLNEED);
  return std::unique_ptr<ChunkMap>(
      new ChunkMap(path, std::move(fd), map.release(), expected, chunk_count, version, not_ready));
}

ChunkMap::ChunkMap(std::string path, UniqueFd fd, uint8_t* base, size_t size, uint32_t count,
                   uint32_t version, uint32_t not_ready)
    : path_(std::move(path)),
      fd_(std::move(fd)),
      base_(base),
      size_(size),
      count_(count),
      version_(version),
      not_ready_(not_ready) {}

ChunkMap::~ChunkMap() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

bool ChunkMap::header_all_ready() const {
  return base_ != nullptr && version_ >= 1 && load_header_u32(base_, kAllReadyOff) == kChunkMapAllReady;
}

bool ChunkMap::is_ready(uint32_t index) const {
  if (index >= count_) return false;
  const uint8_t mask = static_cast<uint8_t>(0x80u >> (index & 7));
  const uint8_t byte =
      std::atomic_ref<uint8_t>(base_[kChunkMapHeaderSize + (index >> 3)]).load(std::memory_order_acquire);
  if (byte & mask) return true;
  return all_ready();
}

Status ChunkMap::set_ready(uint32_t index) {
  if (index >= count_)
    return Status::invalid("chunk index " + std::to_string(index) + " exceeds chunk count " +
                           std::to_string(count_) + " of chunk_map file " + path_);
  const uint8_t mask = static_cast<uint8_t>(0x80u >> (index & 7));
  // fetch_or is the compare-and-swap loop upstream writes by hand: only the
  // one caller that turns the bit from 0 to 1 counts it.
  const uint8_t old = std::atomic_ref<uint8_t>(base_[kChunkMapHeaderSize + (index >> 3)])
                          .fetch_or(mask, std::memory_order_acq_rel);
  if (old & mask) return Status::Ok();
  // Never below zero: a header that said all_ready over a missing bit
  // started the counter at 0.
  uint32_t cur = not_ready_.load(std::memory_order_acquire);
  while (cur != 0 && !not_ready_.compare_exchange_weak(cur, cur - 1, std::memory_order_acq_rel)) {
  }
  if (cur == 1) mark_all_ready();
  return Status::Ok();
}

void ChunkMap::mark_all_ready() {
  if (version_ < 1) return;  // a version-0 header has no all_ready field
  // Bits first, then the header that summarises them.
  if (::msync(base_, size_, MS_SYNC) != 0) {
    LOG_WARN("cannot msync chunk_map file %s: %s", path_.c_str(), errno_text().c_str());
    return;
  }
  std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(base_ + kAllReadyOff))
      .store(to_le(kChunkMapAllReady), std::memory_order_release);
  if (::msync(base_, kChunkMapHeaderSize, MS_SYNC) != 0)
    LOG_WARN("cannot msync the header of chunk_map file %s: %s", path_.c_str(), errno_text().c_str());
}

bool ChunkMap::all_ready() const {
  return not_ready_.load(std::memory_order_acquire) == 0 || header_all_ready();
}

uint32_t ChunkMap::count_set_bits() const { return base_ ? set_bits_in(base_, count_) : 0; }

uint32_t ChunkMap::ready_count() {
  if (all_ready()) return count_;
  const uint32_t not_ready_now = count_ - count_set_bits();
  // Only ever lower the counter (set_ready() may lower it meanwhile); the
  // caller that takes it to 0 writes the header, as in set_ready().
  uint32_t cur = not_ready_.load(std::memory_order_acquire);
  while (cur > not_ready_now && !not_ready_.compare_exchange_weak(cur, not_ready_now, std::memory_order_acq_rel)) {
  }
  if (cur > not_ready_now && not_ready_now == 0) mark_all_ready();
  return count_ - std::min(cur, not_ready_now);
}

}  // namespace nydus::backend
