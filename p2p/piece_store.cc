#include "p2p/piece_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <utility>

#include "common/bits.h"
#include "common/fd_io.h"
#include "common/log.h"
#include "common/text.h"
#include "p2p/blob_location.h"
#include "common/unique_fd.h"

namespace nydus::p2p {
namespace {

constexpr std::string_view kDataSuffix = ".piece";
constexpr std::string_view kMapSuffix = ".piece.map";
constexpr std::string_view kTmpSuffix = ".piece.map.tmp";

std::string errno_text() { return std::strerror(errno); }

// "<64 lowercase hex>" from "sha256:<hex>" or "<hex>"; nullopt for anything
// else (digests come from HTTP request paths).
std::optional<std::string> parse_digest(std::string_view digest) {
  constexpr std::string_view kPrefix = "sha256:";
  if (digest.starts_with(kPrefix)) digest.remove_prefix(kPrefix.size());
  if (!is_sha256_hex(digest)) return std::nullopt;
  return std::string(digest);
}



// The whole of a regular file (not following a symlink), at most `limit` bytes.
Result<std::vector<uint8_t>> read_small_file(const std::string& path, uint64_t limit) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return Status::io("cannot open " + path + ": " + errno_text());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::io("cannot stat " + path + ": " + errno_text());
  if (!S_ISREG(st.st_mode)) return Status::invalid(path + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > limit)
    return Status::invalid(path + " is " + std::to_string(st.st_size) + " bytes, more than any map");
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  NYDUS_TRY(pread_all(fd.get(), bytes.data(), bytes.size(), 0, path));
  return bytes;
}

class StoreCore;

// One blob. Lock order: a blob's mu_ is never held while taking the core's
// mutex (the core calls into blobs only to destroy unpinned ones).
class BlobImpl final : public StoredBlob {
 public:
  BlobImpl(std::weak_ptr<StoreCore> core, std::string digest, std::string data_path, std::string map_path,
           UniqueFd data_fd, UniqueFd map_fd, uint64_t size, uint32_t granule_size, std::vector<uint8_t> bitmap)
      : core_(std::move(core)),
        digest_(std::move(digest)),
        data_path_(std::move(data_path)),
        map_path_(std::move(map_path)),
        data_fd_(std::move(data_fd)),
        map_fd_(std::move(map_fd)),
        size_(size),
        gs_(granule_size),
        granules_(div_round_up(size, granule_size)),
        bitmap_(std::move(bitmap)),
        inflight_(bitmap_.size(), 0) {
    uint64_t ready = 0;
    for (uint64_t g = 0; g < granules_; ++g)
      if (test(bitmap_, g)) ready += granule_len(g);
    ready_bytes_ = ready;
  }

  const std::string& digest() const override { return digest_; }
  uint64_t size() const override { return size_; }
  int data_fd() const override { return data_fd_.get(); }
  const std::string& data_path() const { return data_path_; }
  const std::string& map_path() const { return map_path_; }
  int map_fd() const { return map_fd_.get(); }

  uint64_t ready_run(uint64_t offset, uint64_t max) const override {
    std::lock_guard lock(mu_);
    return ready_run_locked(offset, max);
  }

  bool is_covered(uint64_t offset, uint64_t length) const override {
    if (!in_range(offset, length)) return false;
    if (length == 0) return true;
    std::lock_guard lock(mu_);
    for (uint64_t g = offset / gs_, last = div_round_up(offset + length, gs_); g < last; ++g)
      if (!test(bitmap_, g) && !test(inflight_, g)) return false;
    return true;
  }

  std::vector<ByteRange> missing(uint64_t offset, uint64_t length) const override {
    std::vector<ByteRange> out;
    if (offset >= size_ || length == 0) return out;
    const uint64_t end = offset + std::min(length, size_ - offset);
    std::lock_guard lock(mu_);
    for (uint64_t g = offset / gs_, last = div_round_up(end, gs_); g < last;) {
      if (test(bitmap_, g)) {
        ++g;
        continue;
      }
      uint64_t h = g;
      while (h < last && !test(bitmap_, h)) ++h;
      out.push_back(granules_range(g, h));
      g = h;
    }
    return out;
  }

  uint64_t ready_bytes() const override {
    std::lock_guard lock(mu_);
    return ready_bytes_;
  }

  Status ensure(uint64_t offset, uint64_t length, const FetchFn& fetch, Clock::time_point deadline) override;
  Result<uint64_t> wait_ready(uint64_t offset, uint64_t max, Clock::time_point deadline) override;
  Status read(uint64_t offset, std::span<uint8_t> dst) const override;
  Status write(uint64_t offset, std::span<const uint8_t> data) override;
  void invalidate(uint64_t offset, uint64_t length) override;

  // Granules [first, last) claimed by one fetch or write: marked ready as
  // their bytes land, released (in-flight mark cleared) on destruction if
  // still unfilled, so an error or an exception hands them to a waiter.
  class Claim;

 private:
  static bool test(const std::vector<uint8_t>& bits, uint64_t g) { return (bits[g >> 3] >> (g & 7)) & 1; }
  static void set(std::vector<uint8_t>& bits, uint64_t g, bool v) {
    if (v)
      bits[g >> 3] |= static_cast<uint8_t>(1u << (g & 7));
    else
      bits[g >> 3] &= static_cast<uint8_t>(~(1u << (g & 7)));
  }
  uint64_t granule_len(uint64_t g) const { return std::min<uint64_t>(gs_, size_ - g * gs_); }
  ByteRange granules_range(uint64_t first, uint64_t last) const {
    const uint64_t off = first * gs_;
    return {off, std::min(last * gs_, size_) - off};
  }
  bool in_range(uint64_t offset, uint64_t length) const { return offset <= size_ && length <= size_ - offset; }

  uint64_t ready_run_locked(uint64_t offset, uint64_t max) const {
    if (offset >= size_ || max == 0) return 0;
    const uint64_t limit = offset + std::min(max, size_ - offset);
    uint64_t g = offset / gs_;
    while (g < granules_ && g * gs_ < limit && test(bitmap_, g)) ++g;
    const uint64_t end = std::min(g * gs_, limit);
    return end > offset ? end - offset : 0;
  }

  // Claims the maximal run of granules that are neither ready nor in
  // flight, starting at the first such granule in [first, last). Returns
  // false when there is none. mu_ held.
  bool claim_run_locked(uint64_t first, uint64_t last, uint64_t* run_first, uint64_t* run_last) {
    uint64_t g = first;
    while (g < last && (test(bitmap_, g) || test(inflight_, g))) ++g;
    if (g == last) return false;
    uint64_t h = g;
    while (h < last && !test(bitmap_, h) && !test(inflight_, h)) set(inflight_, h++, true);
    *run_first = g;
    *run_last = h;
    return true;
  }

  // Marks [first, last) ready (their bytes are in the data file), persists
  // the changed bitmap bytes and wakes waiters. Returns the bytes added.
  uint64_t mark_ready(uint64_t first, uint64_t last);
  // Clears the in-flight marks of [first, last) and wakes waiters.
  void release(uint64_t first, uint64_t last);
  // Writes bitmap bytes [byte_first, byte_last] to the map file. mu_ held.
  void persist_bits_locked(uint64_t byte_first, uint64_t byte_last);
  // Tells the store the ready bytes changed (may evict other blobs). Called
  // without mu_.
  void account(int64_t delta);

  // Fetches granules [first, last) (claimed by this caller) with one call.
  Status fetch_run(uint64_t first, uint64_t last, const FetchFn& fetch);

  const std::weak_ptr<StoreCore> core_;
  const std::string digest_;
  const std::string data_path_;
  const std::string map_path_;
  const UniqueFd data_fd_;
  const UniqueFd map_fd_;
  const uint64_t size_;
  const uint64_t gs_;
  const uint64_t granules_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<uint8_t> bitmap_;    // guarded by mu_; mirrors the map file's bitmap
  std::vector<uint8_t> inflight_;  // guarded by mu_; same layout, granules someone is filling
  uint64_t ready_bytes_ = 0;       // guarded by mu_
  bool map_write_warned_ = false;  // guarded by mu_
};

class BlobImpl::Claim {
 public:
  Claim(BlobImpl* blob, uint64_t first, uint64_t last) : blob_(blob), next_(first), last_(last) {}
  ~Claim() {
    if (next_ < last_) blob_->release(next_, last_);
  }
  Claim(const Claim&) = delete;
  Claim& operator=(const Claim&) = delete;

  uint64_t next() const { return next_; }
  uint64_t last() const { return last_; }
  // The granules [next(), upto) now hold their bytes.
  void filled(uint64_t upto) {
    if (upto <= next_) return;
    const uint64_t added = blob_->mark_ready(next_, upto);
    next_ = upto;
    blob_->account(static_cast<int64_t>(added));
  }

 private:
  BlobImpl* blob_;
  uint64_t next_;
  uint64_t last_;
};

// State shared by the PieceStore and its blobs (blobs hold it weakly, so a
// blob outliving its store only stops being accounted).
class StoreCore {
 public:
  explicit StoreCore(PieceStoreOptions options) : options_(std::move(options)) {}

  const PieceStoreOptions& options() const { return options_; }

  // Loads the blobs found in the directory (dropping damaged ones).
  Status load(const std::shared_ptr<StoreCore>& self);
  Result<std::shared_ptr<StoredBlob>> open_blob(const std::shared_ptr<StoreCore>& self, const std::string& digest,
                                                uint64_t size);
  std::shared_ptr<StoredBlob> find(const std::string& digest);

  void account(const BlobImpl* blob, int64_t delta) {
    std::lock_guard lock(mu_);
    auto it = blobs_.find(blob->digest());
    if (it == blobs_.end() || it->second.blob.get() != blob) return;  // evicted or replaced
    it->second.accounted = static_cast<uint64_t>(static_cast<int64_t>(it->second.accounted) + delta);
    used_ = static_cast<uint64_t>(static_cast<int64_t>(used_) + delta);
    it->second.tick = ++tick_;
    if (delta > 0) evict_locked(blob);
  }

  uint64_t used_bytes() const {
    std::lock_guard lock(mu_);
    return used_;
  }
  uint64_t evicted_blobs() const {
    std::lock_guard lock(mu_);
    return evicted_;
  }

 private:
  struct Entry {
    std::shared_ptr<BlobImpl> blob;
    uint64_t tick = 0;       // last use; larger = more recent
    uint64_t accounted = 0;  // ready bytes counted in used_
  };

  std::string path_of(const std::string& hex, std::string_view suffix) const {
    return options_.dir + "/" + hex + std::string(suffix);
  }
  // Loads one blob's files; any problem is returned (the caller drops the blob).
  Result<std::shared_ptr<BlobImpl>> load_blob(const std::shared_ptr<StoreCore>& self, const std::string& hex);
  // Evicts least recently used unpinned blobs (never `keep`) while used_
  // exceeds the capacity. mu_ held.
  void evict_locked(const BlobImpl* keep);
  // Marks a use: in memory and, for the next start, in the map's mtime.
  void touch_locked(Entry& entry) {
    entry.tick = ++tick_;
    ::futimens(entry.blob->map_fd(), nullptr);
  }

  const PieceStoreOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> blobs_;  // guarded by mu_
  uint64_t used_ = 0;                   // guarded by mu_
  uint64_t evicted_ = 0;                // guarded by mu_
  uint64_t tick_ = 0;                   // guarded by mu_

  friend class PieceStoreImpl;
};

// ---- BlobImpl ----

uint64_t BlobImpl::mark_ready(uint64_t first, uint64_t last) {
  uint64_t added = 0;
  {
    std::lock_guard lock(mu_);
    for (uint64_t g = first; g < last; ++g) {
      set(inflight_, g, false);
      if (!test(bitmap_, g)) {
        set(bitmap_, g, true);
        added += granule_len(g);
      }
    }
    ready_bytes_ += added;
    if (first < last) persist_bits_locked(first >> 3, (last - 1) >> 3);
  }
  cv_.notify_all();
  return added;
}

void BlobImpl::release(uint64_t first, uint64_t last) {
  {
    std::lock_guard lock(mu_);
    for (uint64_t g = first; g < last; ++g) set(inflight_, g, false);
  }
  cv_.notify_all();
}

void BlobImpl::persist_bits_locked(uint64_t byte_first, uint64_t byte_last) {
  // No fsync: bits and data live in the page cache alike, so a crashed
  // process loses neither; after power loss the map may be newer than the
  // data (as with upstream's chunk_map). Peers' bytes are verified by
  // whoever uses them.
  const Status st = pwrite_all(map_fd_.get(), bitmap_.data() + byte_first, byte_last - byte_first + 1,
                               kPieceMapHeaderSize + byte_first, map_path_);
  if (!st.ok() && !map_write_warned_) {
    map_write_warned_ = true;
    LOG_WARN("piece store: %s (readiness of blob %s will not survive a restart)", st.message().c_str(),
             digest_.c_str());
  }
}

void BlobImpl::account(int64_t delta) {
  if (delta == 0) return;
  if (auto core = core_.lock()) core->account(this, delta);
}

Status BlobImpl::fetch_run(uint64_t first, uint64_t last, const FetchFn& fetch) {
  Claim claim(this, first, last);
  const ByteRange run = granules_range(first, last);
  // Bytes are written straight from the sink's span where they cover whole
  // granules; a partial granule waits in `partial` until its last byte
  // arrives. `written` is granule-aligned (or at the blob's end).
  uint64_t written = 0;
  std::vector<uint8_t> partial;
  bool overrun = false;
  Status sink_error;
  const Sink sink = [&](std::span<const uint8_t> data) -> Status {
    if (!sink_error.ok()) return sink_error;
    if (data.size() > run.length - written - partial.size()) {
      overrun = true;
      sink_error = Status::io("fetch of " + std::to_string(run.length) + " bytes at offset " +
                              std::to_string(run.offset) + " of blob " + digest_ + " delivered more bytes");
      return sink_error;
    }
    while (!data.empty()) {
      const uint64_t g = first + written / gs_;
      const uint64_t glen = granule_len(g);
      if (partial.empty() && data.size() >= glen) {
        // Whole granules, straight from the caller's buffer.
        const uint64_t remaining = run.length - written;
        const uint64_t n = data.size() >= remaining ? remaining : data.size() - data.size() % gs_;
        if (Status st = pwrite_all(data_fd_.get(), data.data(), n, run.offset + written, data_path_); !st.ok())
          return sink_error = st;
        written += n;
        data = data.subspan(n);
        claim.filled(first + div_round_up(written, gs_));
        continue;
      }
      const size_t take = static_cast<size_t>(std::min<uint64_t>(glen - partial.size(), data.size()));
      partial.insert(partial.end(), data.begin(), data.begin() + static_cast<ptrdiff_t>(take));
      data = data.subspan(take);
      if (partial.size() == glen) {
        if (Status st = pwrite_all(data_fd_.get(), partial.data(), partial.size(), run.offset + written, data_path_);
            !st.ok())
          return sink_error = st;
        written += glen;
        partial.clear();
        claim.filled(g + 1);
      }
    }
    return Status::Ok();
  };
  const Status st = fetch(run.offset, run.length, sink);
  if (claim.next() == claim.last()) return overrun ? sink_error : Status::Ok();
  const std::string what = "fetch of " + std::to_string(run.length) + " bytes at offset " +
                           std::to_string(run.offset) + " of blob " + digest_;
  if (!sink_error.ok()) return sink_error;
  if (!st.ok()) return st.with_context(what);
  return Status::io(what + " delivered only " + std::to_string(written + partial.size()) + " bytes");
}

Status BlobImpl::ensure(uint64_t offset, uint64_t length, const FetchFn& fetch, Clock::time_point deadline) {
  if (!in_range(offset, length))
    return Status::invalid("range " + std::to_string(offset) + "+" + std::to_string(length) + " is past the end of blob " +
                           digest_ + " (" + std::to_string(size_) + " bytes)");
  if (length == 0) return Status::Ok();
  const uint64_t first = offset / gs_;
  const uint64_t last = div_round_up(offset + length, gs_);
  std::unique_lock lock(mu_);
  for (;;) {
    uint64_t run_first = 0;
    uint64_t run_last = 0;
    if (claim_run_locked(first, last, &run_first, &run_last)) {
      lock.unlock();
      NYDUS_TRY(fetch_run(run_first, run_last, fetch));
      lock.lock();
      continue;
    }
    uint64_t g = first;
    while (g < last && test(bitmap_, g)) ++g;
    if (g == last) return Status::Ok();
    // Everything missing is being fetched by others: wait for them (or for
    // a failure that lets us take over).
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && Clock::now() >= deadline) {
      g = first;
      while (g < last && test(bitmap_, g)) ++g;
      if (g == last) return Status::Ok();
      return Status::timeout("waited past the deadline for bytes at offset " + std::to_string(g * gs_) +
                             " of blob " + digest_ + " another request is fetching");
    }
  }
}

Result<uint64_t> BlobImpl::wait_ready(uint64_t offset, uint64_t max, Clock::time_point deadline) {
  if (offset >= size_)
    return Status::invalid("offset " + std::to_string(offset) + " is past the end of blob " + digest_ + " (" +
                           std::to_string(size_) + " bytes)");
  if (max == 0) return uint64_t{0};
  const uint64_t g = offset / gs_;
  std::unique_lock lock(mu_);
  for (;;) {
    if (test(bitmap_, g)) return ready_run_locked(offset, max);
    if (!test(inflight_, g))
      return Status::io("bytes at offset " + std::to_string(offset) + " of blob " + digest_ +
                        " are neither stored nor being fetched");
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && !test(bitmap_, g))
      return Status::timeout("waited past the deadline for bytes at offset " + std::to_string(offset) +
                             " of blob " + digest_);
  }
}

Status BlobImpl::read(uint64_t offset, std::span<uint8_t> dst) const {
  if (!in_range(offset, dst.size()))
    return Status::invalid("read of " + std::to_string(dst.size()) + " bytes at offset " + std::to_string(offset) +
                           " is past the end of blob " + digest_);
  if (ready_run(offset, dst.size()) != dst.size())
    return Status::invalid("read of " + std::to_string(dst.size()) + " bytes at offset " + std::to_string(offset) +
                           " of blob " + digest_ + " covers bytes not stored");
  return pread_all(data_fd_.get(), dst.data(), dst.size(), offset, data_path_);
}

Status BlobImpl::write(uint64_t offset, std::span<const uint8_t> data) {
  if (!in_range(offset, data.size()))
    return Status::invalid("write of " + std::to_string(data.size()) + " bytes at offset " + std::to_string(offset) +
                           " is past the end of blob " + digest_);
  const uint64_t end = offset + data.size();
  const uint64_t first = div_round_up(offset, gs_);
  const uint64_t last = end == size_ ? granules_ : end / gs_;
  // Granules someone is fetching are left to them: a granule's bytes are
  // only ever written by the caller that claimed it.
  for (uint64_t g = first; g < last;) {
    uint64_t run_first = 0;
    uint64_t run_last = 0;
    {
      std::lock_guard lock(mu_);
      if (!claim_run_locked(g, last, &run_first, &run_last)) break;
    }
    Claim claim(this, run_first, run_last);
    const ByteRange r = granules_range(run_first, run_last);
    NYDUS_TRY(pwrite_all(data_fd_.get(), data.data() + (r.offset - offset), r.length, r.offset, data_path_));
    claim.filled(run_last);
    g = run_last;
  }
  return Status::Ok();
}

void BlobImpl::invalidate(uint64_t offset, uint64_t length) {
  if (offset >= size_ || length == 0) return;
  const uint64_t end = offset + std::min(length, size_ - offset);
  uint64_t removed = 0;
  {
    std::lock_guard lock(mu_);
    const uint64_t first = offset / gs_;
    const uint64_t last = div_round_up(end, gs_);
    for (uint64_t g = first; g < last; ++g) {
      if (test(bitmap_, g)) {
        set(bitmap_, g, false);
        removed += granule_len(g);
      }
    }
    ready_bytes_ -= removed;
    if (removed > 0) persist_bits_locked(first >> 3, (last - 1) >> 3);
  }
  account(-static_cast<int64_t>(removed));
}

// ---- StoreCore ----

Result<std::shared_ptr<BlobImpl>> StoreCore::load_blob(const std::shared_ptr<StoreCore>& self, const std::string& hex) {
  const std::string map_path = path_of(hex, kMapSuffix);
  const std::string data_path = path_of(hex, kDataSuffix);
  NYDUS_ASSIGN(std::vector<uint8_t> bytes,
               read_small_file(map_path, kPieceMapHeaderSize + piece_map_bitmap_bytes(kMaxGranules * kMinGranuleSize,
                                                                                        kMinGranuleSize)));
  auto parsed = parse_piece_map(bytes);
  if (!parsed.ok()) return parsed.status();
  PieceMap map = std::move(parsed).value();
  if (map.granule_size != options_.granule_size)
    return Status::invalid("granule size " + std::to_string(map.granule_size) + " is not the store's " +
                           std::to_string(options_.granule_size));
  UniqueFd data_fd(::open(data_path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (!data_fd.valid()) return Status::io("cannot open " + data_path + ": " + errno_text());
  struct stat st {};
  if (::fstat(data_fd.get(), &st) != 0) return Status::io("cannot stat " + data_path + ": " + errno_text());
  if (!S_ISREG(st.st_mode)) return Status::invalid(data_path + " is not a regular file");
  // The data file must hold every ready granule.
  const uint64_t granules = div_round_up(map.blob_size, map.granule_size);
  uint64_t needed = 0;
  for (uint64_t g = granules; g > 0; --g) {
    if ((map.bitmap[(g - 1) >> 3] >> ((g - 1) & 7)) & 1) {
      needed = std::min<uint64_t>(g * map.granule_size, map.blob_size);
      break;
    }
  }
  if (static_cast<uint64_t>(st.st_size) < needed)
    return Status::invalid(data_path + " is " + std::to_string(st.st_size) + " bytes, shorter than its ready granules (" +
                           std::to_string(needed) + ")");
  UniqueFd map_fd(::open(map_path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (!map_fd.valid()) return Status::io("cannot open " + map_path + ": " + errno_text());
  return std::make_shared<BlobImpl>(self, hex, data_path, map_path, std::move(data_fd), std::move(map_fd),
                                    map.blob_size, map.granule_size, std::move(map.bitmap));
}

Status StoreCore::load(const std::shared_ptr<StoreCore>& self) {
  std::error_code ec;
  std::filesystem::create_directories(options_.dir, ec);
  if (ec) return Status::io("cannot create piece store directory " + options_.dir + ": " + ec.message());
  DIR* dir = ::opendir(options_.dir.c_str());
  if (dir == nullptr) return Status::io("cannot open piece store directory " + options_.dir + ": " + errno_text());
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir)) names.emplace_back(e->d_name);
  ::closedir(dir);
  std::sort(names.begin(), names.end());

  auto remove_file = [](const std::string& path) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      LOG_WARN("piece store: cannot remove %s: %s", escape_bytes(path).c_str(), errno_text().c_str());
  };
  struct Loaded {
    std::shared_ptr<BlobImpl> blob;
    struct timespec mtime;
  };
  std::vector<Loaded> loaded;
  for (const std::string& name : names) {
    std::string_view n = name;
    if (n.ends_with(kTmpSuffix)) {
      remove_file(options_.dir + "/" + name);  // an interrupted creation
      continue;
    }
    if (n.ends_with(kDataSuffix)) {
      // A data file without its map is the trace of an interrupted creation.
      const std::string_view hex = n.substr(0, n.size() - kDataSuffix.size());
      if (is_sha256_hex(hex) && !std::binary_search(names.begin(), names.end(), std::string(hex) + std::string(kMapSuffix))) {
        LOG_WARN("piece store: removing %s, which has no map", escape_bytes(name).c_str());
        remove_file(options_.dir + "/" + name);
      }
      continue;
    }
    if (!n.ends_with(kMapSuffix)) continue;
    const std::string_view hex_view = n.substr(0, n.size() - kMapSuffix.size());
    if (!is_sha256_hex(hex_view)) continue;
    const std::string hex(hex_view);
    auto blob = load_blob(self, hex);
    if (!blob.ok()) {
      LOG_WARN("piece store: dropping blob %s: %s", hex.c_str(), blob.status().message().c_str());
      remove_file(path_of(hex, kMapSuffix));
      remove_file(path_of(hex, kDataSuffix));
      continue;
    }
    struct stat st {};
    if (::fstat((*blob)->map_fd(), &st) != 0) st.st_mtim = {};
    loaded.push_back({std::move(blob).value(), st.st_mtim});
  }
  std::sort(loaded.begin(), loaded.end(), [](const Loaded& a, const Loaded& b) {
    if (a.mtime.tv_sec != b.mtime.tv_sec) return a.mtime.tv_sec < b.mtime.tv_sec;
    return a.mtime.tv_nsec < b.mtime.tv_nsec;
  });
  std::lock_guard lock(mu_);
  for (Loaded& l : loaded) {
    Entry entry;
    entry.accounted = l.blob->ready_bytes();
    entry.tick = ++tick_;
    used_ += entry.accounted;
    entry.blob = std::move(l.blob);
    blobs_.emplace(entry.blob->digest(), std::move(entry));
  }
  evict_locked(nullptr);  // the capacity may have shrunk since the last run
  return Status::Ok();
}

void StoreCore::evict_locked(const BlobImpl* keep) {
  while (options_.capacity_bytes != 0 && used_ > options_.capacity_bytes) {
    auto victim = blobs_.end();
    for (auto it = blobs_.begin(); it != blobs_.end(); ++it) {
      const Entry& e = it->second;
      if (e.blob.get() == keep || e.blob.use_count() != 1 || e.accounted == 0) continue;
      if (victim == blobs_.end() || e.tick < victim->second.tick) victim = it;
    }
    if (victim == blobs_.end()) return;  // everything left is pinned
    const Entry& e = victim->second;
    LOG_INFO("piece store: evicting blob %s (%llu bytes)", e.blob->digest().c_str(),
             static_cast<unsigned long long>(e.accounted));
    for (const std::string& path : {e.blob->map_path(), e.blob->data_path()})
      if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        LOG_WARN("piece store: cannot remove %s: %s", path.c_str(), errno_text().c_str());
    used_ -= e.accounted;
    ++evicted_;
    blobs_.erase(victim);
  }
}

Result<std::shared_ptr<StoredBlob>> StoreCore::open_blob(const std::shared_ptr<StoreCore>& self,
                                                         const std::string& digest, uint64_t size) {
  const auto hex = parse_digest(digest);
  if (!hex) return Status::invalid("invalid blob digest \"" + escape_bytes(digest, 80) + "\"");
  const uint32_t gs = options_.granule_size;
  if (div_round_up(size, gs) > kMaxGranules)
    return Status::invalid("blob " + *hex + " size " + std::to_string(size) + " is too large for the piece store");
  std::lock_guard lock(mu_);
  if (auto it = blobs_.find(*hex); it != blobs_.end()) {
    if (it->second.blob->size() != size)
      return Status::invalid("blob " + *hex + " is stored with size " + std::to_string(it->second.blob->size()) +
                             ", not " + std::to_string(size));
    touch_locked(it->second);
    return std::shared_ptr<StoredBlob>(it->second.blob);
  }
  // Data file first, then the map (written whole under a temporary name and
  // renamed), so a map never names a missing data file.
  const std::string data_path = path_of(*hex, kDataSuffix);
  const std::string map_path = path_of(*hex, kMapSuffix);
  const std::string tmp_path = path_of(*hex, kTmpSuffix);
  UniqueFd data_fd(::open(data_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!data_fd.valid()) return Status::io("cannot create " + data_path + ": " + errno_text());
  if (::ftruncate(data_fd.get(), static_cast<off_t>(size)) != 0) {
    const Status st = Status::io("cannot set the size of " + data_path + ": " + errno_text());
    ::unlink(data_path.c_str());
    return st;
  }
  PieceMap map;
  map.granule_size = gs;
  map.blob_size = size;
  map.bitmap.assign(piece_map_bitmap_bytes(size, gs), 0);
  const std::vector<uint8_t> bytes = serialize_piece_map(map);
  UniqueFd map_fd(::open(tmp_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  Status st = map_fd.valid() ? pwrite_all(map_fd.get(), bytes.data(), bytes.size(), 0, tmp_path)
                             : Status::io("cannot create " + tmp_path + ": " + errno_text());
  if (st.ok() && ::rename(tmp_path.c_str(), map_path.c_str()) != 0)
    st = Status::io("cannot rename " + tmp_path + " to " + map_path + ": " + errno_text());
  if (!st.ok()) {
    ::unlink(tmp_path.c_str());
    ::unlink(data_path.c_str());
    return st;
  }
  auto blob = std::make_shared<BlobImpl>(self, *hex, data_path, map_path, std::move(data_fd), std::move(map_fd), size,
                                         gs, std::move(map.bitmap));
  Entry entry;
  entry.blob = blob;
  entry.tick = ++tick_;
  blobs_.emplace(*hex, std::move(entry));
  return std::shared_ptr<StoredBlob>(std::move(blob));
}

std::shared_ptr<StoredBlob> StoreCore::find(const std::string& digest) {
  const auto hex = parse_digest(digest);
  if (!hex) return nullptr;
  std::lock_guard lock(mu_);
  auto it = blobs_.find(*hex);
  if (it == blobs_.end()) return nullptr;
  touch_locked(it->second);
  return it->second.blob;
}

class PieceStoreImpl final : public PieceStore {
 public:
  explicit PieceStoreImpl(std::shared_ptr<StoreCore> core) : core_(std::move(core)) {}

  Result<std::shared_ptr<StoredBlob>> open_blob(const std::string& digest, uint64_t size) override {
    return core_->open_blob(core_, digest, size);
  }
  std::shared_ptr<StoredBlob> find(const std::string& digest) override { return core_->find(digest); }
  uint64_t used_bytes() const override { return core_->used_bytes(); }
  uint64_t evicted_blobs() const override { return core_->evicted_blobs(); }
  uint32_t granule_size() const override { return core_->options().granule_size; }

 private:
  std::shared_ptr<StoreCore> core_;
};

}  // namespace

Result<std::unique_ptr<PieceStore>> PieceStore::open(PieceStoreOptions options) {
  if (options.dir.empty()) return Status::invalid("piece store: no directory given");
  if (!valid_granule_size(options.granule_size))
    return Status::invalid("piece store: granule size " + std::to_string(options.granule_size) +
                           " is not a power of two between 512 and 1 MiB");
  while (options.dir.size() > 1 && options.dir.back() == '/') options.dir.pop_back();
  auto core = std::make_shared<StoreCore>(std::move(options));
  NYDUS_TRY(core->load(core));
  return std::unique_ptr<PieceStore>(new PieceStoreImpl(std::move(core)));
}

}  // namespace nydus::p2p
