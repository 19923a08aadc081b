#include "backend/chunk_reader.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "backend/blob_id.h"
#include "backend/compress.h"
#include "bootstrap/blob_meta.h"
#include "common/digest.h"
#include "common/file_bytes.h"
#include "common/uninit_bytes.h"
#include "common/log.h"

namespace nydus::backend {
namespace {

using bootstrap::BlobInfo;
using bootstrap::ChunkRef;
using bootstrap::Compressor;
using bootstrap::Digest;

constexpr uint32_t kMaxChunkSize = 16u << 20;           // rafs-format.md §1.10
constexpr size_t kMaxRetainedScratch = 4u << 20;         // see Scratch
constexpr uint64_t kMaxMetaBytes = 512ull << 20;         // 2^24 chunks x 24 B + zran tables
constexpr uint32_t kMaxTocSize = 1u << 20;               // a ToC is a few 128-byte entries
constexpr size_t kTocEntrySize = 128;
constexpr uint32_t kFeatureInlinedChunkDigest = 0x0000'0020;  // BlobFeatures, §1.5
constexpr uint32_t kFeatureEncrypted = 0x0000'0100;
constexpr uint32_t kFeatureHasToc = 0x2000'0000;

bool is_zero(const Digest& d) {
  return std::all_of(d.begin(), d.end(), [](uint8_t b) { return b == 0; });
}

std::string chunk_name(const BlobInfo& blob, uint32_t chunk_index) {
  return "blob " + blob.id + " chunk " + std::to_string(chunk_index);
}

// `message` without a leading "blob <id>: ", which the parsers and the
// backend already put there, so that adding our own context does not name
// the blob twice.
std::string without_blob_prefix(const std::string& message, const BlobInfo& blob) {
  const std::string prefix = "blob " + blob.id + ": ";
  return message.rfind(prefix, 0) == 0 ? message.substr(prefix.size()) : message;
}

Status in_context(const Status& s, const std::string& where, const BlobInfo& blob) {
  return Status(s.code(), where + ": " + without_blob_prefix(s.message(), blob));
}

// Compressed bytes go through a per-thread buffer that is reused across
// reads, so the hot path allocates only when a chunk is larger than any
// this thread has seen. Buffers above 4 MiB (images with 16 MiB chunks)
// are released after the read: dozens of FUSE threads each pinning 16 MiB
// would cost more than the occasional allocation.
class Scratch {
 public:
  explicit Scratch(size_t n) : n_(n) {
    State& s = state();
    if (s.capacity < n) {
      s.data.reset();  // free first: never hold two large buffers at once
      s.data = std::make_unique_for_overwrite<uint8_t[]>(n);
      s.capacity = n;
    }
  }
  ~Scratch() {
    State& s = state();
    if (s.capacity > kMaxRetainedScratch) {
      s.data.reset();
      s.capacity = 0;
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  std::span<uint8_t> span() const { return {state().data.get(), n_}; }

 private:
  struct State {
    std::unique_ptr<uint8_t[]> data;
    size_t capacity = 0;
  };
  static State& state() {
    thread_local State s;
    return s;
  }
  const size_t n_;
};

// One backend read of blob `blob_index`, recorded in `trace` (when set)
// as it is issued; `chunks` is 0 for the blob's metadata.
Status traced_read(BlobReader& reader, ReadTrace* trace, uint32_t blob_index, uint64_t offset,
                   std::span<uint8_t> dst, uint32_t chunks) {
  if (trace) trace->record(blob_index, offset, dst.size(), chunks);
  return reader.read_exact(offset, dst);
}

// Reads the blob's chunk digest array (blob.digest, 32 bytes per chunk,
// rafs-format.md §5.3) through the ToC at the end of the blob (§5.5). Every
// step is checked: the ToC against the bootstrap's toc_digest, the array
// against the sha256 in its ToC entry.
Result<std::vector<uint8_t>> load_chunk_digests(BlobReader& reader, const BlobInfo& blob, ReadTrace* trace,
                                                uint32_t blob_index) {
  // Without a ToC the digest array can only be found by walking the tar
  // headers backwards; not implemented yet.
  if ((blob.features & kFeatureHasToc) == 0 || blob.toc_size <= bootstrap::kTarHeaderSize)
    return Status::unsupported("the blob has a chunk digest array but no ToC to find it");
  const uint32_t toc_size = blob.toc_size;
  if (toc_size > kMaxTocSize || (toc_size - bootstrap::kTarHeaderSize) % kTocEntrySize != 0)
    return Status::corrupt("ToC size " + std::to_string(toc_size) + " is not 512 + n x 128 bytes");
  NYDUS_ASSIGN(const uint64_t blob_size, reader.size());
  if (blob_size < toc_size)
    return Status::corrupt("blob of " + std::to_string(blob_size) + " bytes cannot hold a " +
                           std::to_string(toc_size) + "-byte ToC");
  std::vector<uint8_t> toc(toc_size);
  NYDUS_TRY(traced_read(reader, trace, blob_index, blob_size - toc_size, toc, 0));
  if (!is_zero(blob.toc_digest)) {
    // toc_digest covers the entries and their trailing tar header.
    const Digest actual = digest(bootstrap::Digester::kSha256, toc);
    if (actual != blob.toc_digest)
      return Status::corrupt("ToC sha256 mismatch: expected " + to_hex(blob.toc_digest) + ", got " +
                             to_hex(actual));
  }
  NYDUS_ASSIGN(auto entries, bootstrap::parse_toc(std::span<const uint8_t>(toc).first(
                                 toc_size - bootstrap::kTarHeaderSize)));
  auto it = std::find_if(entries.begin(), entries.end(),
                         [](const bootstrap::TocEntry& e) { return e.name == "blob.digest"; });
  if (it == entries.end()) return Status::unsupported("the ToC has no blob.digest entry");
  const bootstrap::TocEntry& entry = *it;
  if (blob.chunk_count != 0 && entry.uncompressed_size != uint64_t{blob.chunk_count} * 32)
    return Status::corrupt("blob.digest holds " + std::to_string(entry.uncompressed_size) +
                           " bytes, expected 32 x " + std::to_string(blob.chunk_count) + " chunks");
  if (entry.uncompressed_size % 32 != 0 || entry.uncompressed_size > kMaxMetaBytes ||
      entry.compressed_size > kMaxMetaBytes)
    return Status::corrupt("blob.digest sizes out of range");
  std::vector<uint8_t> raw(entry.compressed_size);
  NYDUS_TRY(traced_read(reader, trace, blob_index, entry.compressed_offset, raw, 0));
  std::vector<uint8_t> digests;
  switch (entry.flags & 0xF) {
    case 0:  // old builders leave the flags empty for plain payloads
    case 0x1:
      if (raw.size() != entry.uncompressed_size)
        return Status::corrupt("plain blob.digest has different compressed and uncompressed sizes");
      digests = std::move(raw);
      break;
    case 0x2:
      digests.resize(entry.uncompressed_size);
      NYDUS_TRY(decompress(Compressor::kZstd, raw, digests).with_context("blob.digest"));
      break;
    default:
      return Status::unsupported("blob.digest compression flags " + std::to_string(entry.flags));
  }
  const Digest actual = digest(bootstrap::Digester::kSha256, digests);
  if (actual != entry.sha256)
    return Status::corrupt("blob.digest sha256 mismatch: expected " + to_hex(entry.sha256) +
                           ", got " + to_hex(actual));
  return digests;
}

// The chunk-info table from the `<blob_id>.blob.meta` cache file, if one
// is there and valid. kNotFound when there is no such file.
Result<std::vector<ChunkRef>> load_table_from_cache_file(const std::string& path,
                                                         const BlobInfo& blob,
                                                         std::span<const uint8_t> digests) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) return Status::not_found(path + " does not exist");
  NYDUS_ASSIGN(FileBytes file, FileBytes::open(path));
  NYDUS_ASSIGN(const bootstrap::BlobMetaHeader header, bootstrap::parse_blob_meta_file(file.bytes(), blob));
  if (header.ci_uncompressed_size > file.size())
    return Status::corrupt(path + ": header says " + std::to_string(header.ci_uncompressed_size) +
                           " bytes of chunk info, the file has " + std::to_string(file.size()));
  return bootstrap::parse_chunk_infos(file.bytes().first(header.ci_uncompressed_size), header, blob,
                                      digests);
}

// The chunk-info table from the blob itself: the ci payload at
// meta_ci_offset, followed by its 4096-byte header (rafs-format.md §5.2).
Result<std::vector<ChunkRef>> load_table_from_blob(BlobReader& reader, const BlobInfo& blob,
                                                   std::span<const uint8_t> digests,
                                                   const std::string& save_to_dir, ReadTrace* trace,
                                                   uint32_t blob_index) {
  if (blob.meta_ci_uncompressed_size == 0)
    return Status::unsupported("the bootstrap does not locate this chunk and the blob table records "
                               "no blob.meta for the blob");
  if (blob.meta_ci_compressed_size > kMaxMetaBytes || blob.meta_ci_uncompressed_size > kMaxMetaBytes)
    return Status::corrupt("blob.meta sizes out of range (" +
                           std::to_string(blob.meta_ci_compressed_size) + " compressed, " +
                           std::to_string(blob.meta_ci_uncompressed_size) + " uncompressed)");
  const uint64_t header_offset = blob.meta_ci_offset + blob.meta_ci_compressed_size;
  if (header_offset < blob.meta_ci_offset) return Status::corrupt("blob.meta offset overflows");
  std::vector<uint8_t> header_bytes(bootstrap::kBlobMetaHeaderSize);
  NYDUS_TRY(traced_read(reader, trace, blob_index, header_offset, header_bytes, 0).with_context("blob.meta header"));
  NYDUS_ASSIGN(const bootstrap::BlobMetaHeader header,
               bootstrap::parse_blob_meta_header(header_bytes, blob));
  std::vector<uint8_t> raw(blob.meta_ci_compressed_size);
  NYDUS_TRY(traced_read(reader, trace, blob_index, blob.meta_ci_offset, raw, 0).with_context("blob.meta"));
  std::vector<uint8_t> payload;
  if (blob.meta_ci_compressor == Compressor::kNone) {
    // Stored plain (keep-if-smaller); decompress() still checks the sizes.
    if (raw.size() != blob.meta_ci_uncompressed_size)
      return Status::corrupt("plain blob.meta has " + std::to_string(raw.size()) + " bytes, expected " +
                             std::to_string(blob.meta_ci_uncompressed_size));
    payload = std::move(raw);
  } else {
    payload.resize(blob.meta_ci_uncompressed_size);
    NYDUS_TRY(decompress(blob.meta_ci_compressor, raw, payload).with_context("blob.meta"));
  }
  NYDUS_ASSIGN(auto table, bootstrap::parse_chunk_infos(payload, header, blob, digests));
  if (!save_to_dir.empty()) {
    // Saved only once it parsed: a later start (ours or upstream's) then
    // needs no request for it.
    if (Status saved = write_blob_meta_file(save_to_dir, blob.id, payload, header_bytes); !saved.ok())
      LOG_WARN("blob %s: cannot save its blob.meta in %s: %s", blob.id.c_str(), save_to_dir.c_str(),
               saved.message().c_str());
  }
  return table;
}

}  // namespace

ChunkReader::ChunkReader(std::vector<BlobInfo> blobs, std::unique_ptr<BlobBackend> backend,
                         ChunkReaderOptions options)
    : blobs_(std::move(blobs)),
      backend_(std::move(backend)),
      options_(std::move(options)),
      metrics_(options_.metrics ? options_.metrics : &own_metrics_) {}

void ChunkReader::note_missing(uint32_t blob_index, const Status& status) {
  bool first;
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool& logged = missing_logged_[blob_index];
    first = !logged;
    logged = true;
  }
  const std::string& id = blobs_[blob_index].id;
  // One clear line per blob: an image with a missing layer keeps serving
  // every other file, and a log line per read would bury everything else.
  if (first)
    LOG_ERROR("blob %s (blob index %u) is missing, reads of its chunks fail with ENOENT: %s",
              id.c_str(), blob_index, status.message().c_str());
  else
    LOG_DEBUG("blob %s is still missing: %s", id.c_str(), status.message().c_str());
}

void ChunkReader::note_fetch_failure(uint32_t blob_index, const Status& status) {
  using Clock = std::chrono::steady_clock;
  uint64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    FailureLog& entry = failure_log_[blob_index];
    const auto now = Clock::now();
    if (now - entry.last < std::chrono::seconds(1)) {
      ++entry.suppressed;
      return;
    }
    entry.last = now;
    suppressed = std::exchange(entry.suppressed, 0);
  }
  // At most one line per blob per second: an outage must be visible, but
  // not bury the log under one line per read.
  if (suppressed)
    LOG_ERROR("fetch from blob %s failed (and %llu more since the last report): %s",
              blobs_[blob_index].id.c_str(), static_cast<unsigned long long>(suppressed), status.message().c_str());
  else
    LOG_ERROR("fetch from blob %s failed: %s", blobs_[blob_index].id.c_str(), status.message().c_str());
}

void ChunkReader::warn_once(uint32_t blob_index, const char* key, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool& warned = warned_[std::to_string(blob_index) + "/" + key];
    if (warned) {
      LOG_DEBUG("%s", message.c_str());
      return;
    }
    warned = true;
  }
  LOG_WARN("%s", message.c_str());
}

Result<std::shared_ptr<BlobReader>> ChunkReader::reader_for(uint32_t blob_index) {
  bool was_missing = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = readers_.find(blob_index); it != readers_.end()) return it->second;
    if (auto it = missing_logged_.find(blob_index); it != missing_logged_.end()) was_missing = it->second;
  }
  const BlobInfo& blob = blobs_[blob_index];
  // Not under mu_: opening may be slow (a registry round trip) and must not
  // stall reads of other blobs.
  auto reader = backend_->reader(blob.id);
  if (!reader.ok()) {
    if (reader.status().code() == Code::kNotFound) note_missing(blob_index, reader.status());
    else LOG_DEBUG("blob %s: %s", blob.id.c_str(), reader.status().message().c_str());
    return reader.status();
  }
  std::shared_ptr<BlobReader> shared;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (was_missing) missing_logged_.erase(blob_index);
    // Another thread may have opened it meanwhile; keep the first.
    shared = readers_.emplace(blob_index, std::move(reader).value()).first->second;
  }
  // Said once, so the earlier ERROR line does not stand uncorrected.
  if (was_missing) LOG_INFO("blob %s is available again", blob.id.c_str());
  return shared;
}

Result<ChunkReader::ChunkTable> ChunkReader::load_chunk_table(uint32_t blob_index) {
  const BlobInfo& blob = blobs_[blob_index];
  if (blob.features & kFeatureEncrypted)
    return Status::unsupported("encrypted blobs are not supported");
  NYDUS_ASSIGN(auto reader, reader_for(blob_index));

  ChunkTable table;
  std::vector<uint8_t> digests;
  if (options_.validate_digest && (blob.features & kFeatureInlinedChunkDigest)) {
    auto loaded = load_chunk_digests(*reader, blob, options_.trace, blob_index);
    if (loaded.ok()) {
      digests = std::move(loaded).value();
      table.has_digests = true;
    } else if (loaded.status().code() == Code::kUnsupported) {
      // A layout we cannot read yet: validate what we can rather than
      // refuse the blob (read_chunk warns that digests are not checked).
      warn_once(blob_index, "digests",
                "blob " + blob.id + ": cannot use its chunk digest array: " +
                    loaded.status().message());
    } else {
      // The blob promises digests but they are corrupt or unreadable:
      // with validation on, that is a failure, not a reason to skip it.
      return loaded.status().with_context("chunk digest array");
    }
  }

  if (!options_.work_dir.empty()) {
    NYDUS_TRY(check_blob_id(blob.id));
    const std::string path = options_.work_dir + "/" + blob.id + ".blob.meta";
    auto cached = load_table_from_cache_file(path, blob, digests);
    if (cached.ok()) {
      table.chunks = std::move(cached).value();
      return table;
    }
    if (cached.status().code() != Code::kNotFound)
      warn_once(blob_index, "meta-file",
                "ignoring " + path + ", reading the chunk-info table from the blob instead: " +
                cached.status().message());
  }
  NYDUS_ASSIGN(table.chunks,
               load_table_from_blob(*reader, blob, digests, options_.cache ? options_.work_dir : "",
                                    options_.trace, blob_index));
  return table;
}

Result<std::shared_ptr<const ChunkReader::ChunkTable>> ChunkReader::chunk_table(uint32_t blob_index) {
  std::shared_ptr<std::mutex> load_mu;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = chunk_infos_.find(blob_index); it != chunk_infos_.end()) return it->second;
    auto& slot = table_load_mu_[blob_index];
    if (!slot) slot = std::make_shared<std::mutex>();
    load_mu = slot;
  }
  std::lock_guard<std::mutex> load_lock(*load_mu);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = chunk_infos_.find(blob_index); it != chunk_infos_.end()) return it->second;
  }
  // Failures are not cached: a missing blob may appear, a transport error
  // may pass. A missing blob is already logged once by reader_for().
  auto loaded = load_chunk_table(blob_index);
  if (!loaded.ok()) {
    if (loaded.status().code() != Code::kNotFound)
      warn_once(blob_index, "table",
                "blob " + blobs_[blob_index].id + ": cannot load its chunk-info table: " +
                    without_blob_prefix(loaded.status().message(), blobs_[blob_index]));
    return loaded.status();
  }
  auto table = std::make_shared<const ChunkTable>(std::move(loaded).value());
  std::lock_guard<std::mutex> lock(mu_);
  chunk_infos_[blob_index] = table;
  return std::shared_ptr<const ChunkTable>(table);
}

Result<ChunkRef> ChunkReader::locate(const ChunkRef& chunk, bool* digest_known) {
  const BlobInfo& blob = blobs_[chunk.blob_index];
  NYDUS_ASSIGN(auto table, chunk_table(chunk.blob_index));
  if (chunk.chunk_index >= table->chunks.size())
    return Status::corrupt("chunk index " + std::to_string(chunk.chunk_index) +
                           " is outside the chunk-info table of blob " + blob.id + " (" +
                           std::to_string(table->chunks.size()) + " entries)");
  ChunkRef out = table->chunks[chunk.chunk_index];
  if (out.uncompressed_offset != chunk.uncompressed_offset)
    return Status::corrupt("blob.meta places chunk " + std::to_string(chunk.chunk_index) +
                           " at uncompressed offset " + std::to_string(out.uncompressed_offset) +
                           ", the bootstrap at " + std::to_string(chunk.uncompressed_offset));
  if (out.uncompressed_size != chunk.uncompressed_size)
    return Status::corrupt("blob.meta gives chunk " + std::to_string(chunk.chunk_index) + " " +
                           std::to_string(out.uncompressed_size) + " bytes, the bootstrap " +
                           std::to_string(chunk.uncompressed_size));
  out.blob_index = chunk.blob_index;
  out.chunk_index = chunk.chunk_index;
  out.file_offset = chunk.file_offset;
  out.located = true;
  *digest_known = table->has_digests;
  return out;
}

namespace {

uint64_t flight_key(const ChunkRef& c) { return (uint64_t{c.blob_index} << 32) | c.chunk_index; }

// Counts an on-demand fetch for the time it is in flight (prefetch waits
// while any are).
class DemandFetch {
 public:
  explicit DemandFetch(std::atomic<int>& counter) : counter_(counter) { counter_.fetch_add(1); }
  ~DemandFetch() { counter_.fetch_sub(1); }
  DemandFetch(const DemandFetch&) = delete;
  DemandFetch& operator=(const DemandFetch&) = delete;

 private:
  std::atomic<int>& counter_;
};

constexpr auto kPrefetchYieldLimit = std::chrono::seconds(30);

}  // namespace

Result<ChunkRef> ChunkReader::located(const ChunkRef& in) {
  if (in.blob_index >= blobs_.size())
    return Status::invalid("chunk " + std::to_string(in.chunk_index) + " refers to blob index " +
                           std::to_string(in.blob_index) + ", the image has " +
                           std::to_string(blobs_.size()) + " blobs");
  if (in.located) return in;
  const BlobInfo& blob = blobs_[in.blob_index];
  bool digest_known = false;
  auto found = locate(in, &digest_known);
  if (!found.ok()) return in_context(found.status(), chunk_name(blob, in.chunk_index), blob);
  ChunkRef out = std::move(found).value();
  // An all-zero digest marks "unknown": verification then relies on
  // decompression and CRC-32C (see verify()).
  if (!digest_known) out.digest = Digest{};
  return out;
}

BlobCacheFile* ChunkReader::cache_for(uint32_t blob_index) {
  if (!options_.cache) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = caches_.find(blob_index); it != caches_.end()) return it->second.get();
  const BlobInfo& blob = blobs_[blob_index];
  auto& slot = caches_[blob_index];
  if (blob.chunk_count == 0 || blob.uncompressed_size == 0) {
    // Old v5 blob tables carry neither; upstream keeps such a blob's map
    // in memory only. We serve it uncached rather than guess a layout.
    LOG_INFO("blob %s: the bootstrap records no chunk count or size for it; served without the blob cache",
             blob.id.c_str());
    return nullptr;
  }
  // Opening takes a few system calls once per blob; holding mu_ keeps
  // two threads from racing to create the same files.
  auto opened = BlobCacheFile::open(options_.work_dir, blob.id, blob.uncompressed_size, blob.chunk_count);
  if (!opened.ok()) {
    LOG_WARN("blob %s: cannot use the blob cache in %s, serving it uncached: %s", blob.id.c_str(),
             options_.work_dir.c_str(), opened.status().message().c_str());
    return nullptr;
  }
  slot = std::move(opened).value();
  return slot.get();
}

Status ChunkReader::verify(const ChunkRef& chunk, std::span<const uint8_t> data) {
  const BlobInfo& blob = blobs_[chunk.blob_index];
  const std::string where = chunk_name(blob, chunk.chunk_index);
  if (!is_zero(chunk.digest)) {
    const Digest actual = digest(blob.digester, data);
    if (actual != chunk.digest)
      return Status::corrupt(where + ": " + bootstrap::digester_name(blob.digester) +
                             " digest mismatch: expected " + to_hex(chunk.digest) + ", got " + to_hex(actual));
  } else {
    warn_once(chunk.blob_index, "no-digest",
              "blob " + blob.id + ": the blob carries no chunk digests; its chunks are checked by "
              "decompression and CRC-32C only");
  }
  if (chunk.has_crc32) {
    const uint32_t actual = crc32c(data);
    if (actual != chunk.crc32) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "expected %08x, got %08x", chunk.crc32, actual);
      return Status::corrupt(where + ": CRC-32C mismatch: " + buf);
    }
  }
  return Status::Ok();
}

Status ChunkReader::read_from_cache(BlobCacheFile& cache, const ChunkRef& in, std::span<uint8_t> dst) {
  NYDUS_TRY(cache.read(in.chunk_index, in.uncompressed_offset, dst));
  if (!options_.cache_validate && !options_.validate_digest) return Status::Ok();
  NYDUS_ASSIGN(const ChunkRef chunk, located(in));
  return verify(chunk, dst);
}

Status ChunkReader::decode_checked(const ChunkRef& chunk, std::span<const uint8_t> raw,
                                   std::span<uint8_t> out, bool from_network) {
  const BlobInfo& blob = blobs_[chunk.blob_index];
  const std::string where = chunk_name(blob, chunk.chunk_index);
  if (!chunk.compressed) {
    if (raw.size() != out.size())
      return Status::corrupt(where + ": stored uncompressed, but compressed size " +
                             std::to_string(raw.size()) + " != uncompressed size " + std::to_string(out.size()));
    std::memcpy(out.data(), raw.data(), raw.size());
  } else {
    Status s = decompress(blob.compressor, raw, out);
    if (!s.ok()) return in_context(s, where, blob);
  }
  if (!verify_wanted(from_network)) return Status::Ok();
  return verify(chunk, out);
}

Status ChunkReader::decode_and_verify(const ChunkRef& chunk, std::span<const uint8_t> raw,
                                      std::span<uint8_t> out, bool from_network) {
  Status s = decode_checked(chunk, raw, out, from_network);
  // Tell the reader which fetched bytes were wrong (a relaying backend, P2P,
  // drops them and does not ask their source again) and which were proven
  // right (it may keep and share those).
  if (from_network && (s.ok() ? verify_wanted(true) : s.code() == Code::kCorrupt)) {
    if (auto reader = reader_for(chunk.blob_index); reader.ok()) {
      if (s.ok()) (*reader)->report_good(chunk.compressed_offset, chunk.compressed_size);
      else (*reader)->report_bad(chunk.compressed_offset, chunk.compressed_size);
    }
  }
  return s;
}

Status ChunkReader::fetch_single(const ChunkRef& chunk, std::span<uint8_t> out) {
  const BlobInfo& blob = blobs_[chunk.blob_index];
  NYDUS_ASSIGN(auto reader, reader_for(chunk.blob_index));
  Scratch raw(chunk.compressed_size);
  Status s = traced_read(*reader, options_.trace, chunk.blob_index, chunk.compressed_offset, raw.span(), 1);
  metrics_->backend_fetches.fetch_add(1, std::memory_order_relaxed);
  metrics_->backend_chunks.fetch_add(1, std::memory_order_relaxed);
  metrics_->backend_bytes.fetch_add(chunk.compressed_size, std::memory_order_relaxed);
  if (!s.ok()) return in_context(s, chunk_name(blob, chunk.chunk_index), blob);
  return decode_and_verify(chunk, raw.span(), out, true);
}

std::pair<std::shared_ptr<ChunkReader::Flight>, bool> ChunkReader::claim(uint64_t key) {
  std::lock_guard<std::mutex> lock(flights_mu_);
  auto [it, inserted] = flights_.try_emplace(key);
  if (inserted) it->second = std::make_shared<Flight>();
  return {it->second, inserted};
}

void ChunkReader::finish(uint64_t key, const std::shared_ptr<Flight>& flight, Status status, ChunkBytes data) {
  {
    // Leave the map first: from here on a new reader finds the chunk in
    // the cache (committed before this call) or starts a fresh fetch after
    // a failure.
    std::lock_guard<std::mutex> lock(flights_mu_);
    if (auto it = flights_.find(key); it != flights_.end() && it->second == flight) flights_.erase(it);
  }
  {
    std::lock_guard<std::mutex> lock(flight->mu);
    flight->status = std::move(status);
    flight->data = std::move(data);
    flight->done = true;
  }
  flight->cv.notify_all();
}

Status ChunkReader::wait_for(Flight& flight, const ChunkRef& chunk, std::span<uint8_t> dst) {
  metrics_->singleflight_waits.fetch_add(1, std::memory_order_relaxed);
  std::unique_lock<std::mutex> lock(flight.mu);
  if (!flight.cv.wait_for(lock, options_.wait_deadline, [&] { return flight.done; }))
    return Status::timeout(chunk_name(blobs_[chunk.blob_index], chunk.chunk_index) + ": waited " +
                           std::to_string(options_.wait_deadline.count()) + " ms for the fetch in flight");
  if (!flight.status.ok()) return flight.status;
  if (flight.data.size != dst.size())
    return Status::corrupt(chunk_name(blobs_[chunk.blob_index], chunk.chunk_index) + ": fetched " +
                           std::to_string(flight.data.size) + " bytes, expected " + std::to_string(dst.size()));
  std::memcpy(dst.data(), flight.data.bytes.get(), dst.size());
  return Status::Ok();
}

size_t ChunkReader::extend_group(std::vector<ChunkRef>& group, std::vector<std::shared_ptr<Flight>>& flights,
                                 std::span<const ChunkRef> candidates, BlobCacheFile& cache, uint64_t limit) {
  const uint32_t blob_index = group.front().blob_index;
  uint64_t end = group.back().compressed_offset + group.back().compressed_size;
  uint64_t total = end - group.front().compressed_offset;
  size_t consumed = 0;
  for (const ChunkRef& candidate : candidates) {
    if (candidate.blob_index != blob_index) break;
    // The same chunk twice in a row (a file repeating a block) is already
    // in the group.
    const bool duplicate = std::any_of(group.begin(), group.end(), [&](const ChunkRef& g) {
      return g.chunk_index == candidate.chunk_index;
    });
    if (duplicate) {
      ++consumed;
      continue;
    }
    if (cache.is_ready(candidate.chunk_index)) break;
    auto next = located(candidate);
    if (!next.ok()) break;
    if (next->compressed_offset != end || next->compressed_size > kMaxChunkSize ||
        next->uncompressed_size > kMaxChunkSize || total + next->compressed_size > limit)
      break;
    auto [flight, leader] = claim(flight_key(*next));
    if (!leader) break;  // another thread is fetching it
    end += next->compressed_size;
    total += next->compressed_size;
    group.push_back(std::move(next).value());
    flights.push_back(std::move(flight));
    ++consumed;
  }
  return consumed;
}

void ChunkReader::fetch_group(const std::vector<ChunkRef>& group,
                              const std::vector<std::shared_ptr<Flight>>& flights) {
  const ChunkRef& first = group.front();
  const BlobInfo& blob = blobs_[first.blob_index];
  const uint64_t start = first.compressed_offset;
  const uint64_t total = group.back().compressed_offset + group.back().compressed_size - start;

  auto fail_all = [&](const Status& s) {
    if (s.code() != Code::kNotFound) note_fetch_failure(first.blob_index, s);
    for (size_t i = 0; i < group.size(); ++i)
      finish(flight_key(group[i]), flights[i], in_context(s, chunk_name(blob, group[i].chunk_index), blob),
             ChunkBytes());
  };
  auto reader = reader_for(first.blob_index);
  if (!reader.ok()) return fail_all(reader.status());
  Scratch raw(total);
  Status s = traced_read(**reader, options_.trace, first.blob_index, start, raw.span(),
                         static_cast<uint32_t>(group.size()));
  metrics_->backend_fetches.fetch_add(1, std::memory_order_relaxed);
  metrics_->backend_chunks.fetch_add(group.size(), std::memory_order_relaxed);
  metrics_->backend_bytes.fetch_add(total, std::memory_order_relaxed);
  if (!s.ok()) {
    if (s.code() == Code::kNotFound) note_missing(first.blob_index, s);
    return fail_all(s);
  }

  BlobCacheFile* cache = cache_for(first.blob_index);
  for (size_t i = 0; i < group.size(); ++i) {
    const ChunkRef& chunk = group[i];
    ChunkBytes data(chunk.uncompressed_size);
    Status cs = decode_and_verify(chunk, raw.span().subspan(chunk.compressed_offset - start, chunk.compressed_size),
                                  data.span(), true);
    // Wrong bytes from the network are fetched again, alone; they are
    // never cached or returned.
    for (uint32_t attempt = 1; !cs.ok() && cs.code() == Code::kCorrupt && attempt < options_.fetch_attempts;
         ++attempt) {
      metrics_->corrupt_fetches.fetch_add(1, std::memory_order_relaxed);
      LOG_WARN("%s; fetching it again (attempt %u of %u)", cs.message().c_str(), attempt + 1,
               options_.fetch_attempts);
      cs = fetch_single(chunk, data.span());
    }
    if (!cs.ok() && cs.code() == Code::kCorrupt) metrics_->corrupt_fetches.fetch_add(1, std::memory_order_relaxed);
    if (cs.ok() && cache) {
      if (Status committed = cache->commit(chunk.chunk_index, chunk.uncompressed_offset, data.span());
          !committed.ok())
        warn_once(chunk.blob_index, "commit",
                  "blob " + blob.id + ": cannot write to the blob cache (reads go on uncached): " +
                      committed.message());
    }
    if (!cs.ok()) cs = in_context(cs, chunk_name(blob, chunk.chunk_index), blob);
    finish(flight_key(chunk), flights[i], std::move(cs), std::move(data));
  }
}

Status ChunkReader::read_chunk(const ChunkRef& in, std::span<uint8_t> dst, std::span<const ChunkRef> following) {
  if (in.blob_index >= blobs_.size())
    return Status::invalid("chunk " + std::to_string(in.chunk_index) + " refers to blob index " +
                           std::to_string(in.blob_index) + ", the image has " +
                           std::to_string(blobs_.size()) + " blobs");
  const BlobInfo& blob = blobs_[in.blob_index];
  const std::string where = chunk_name(blob, in.chunk_index);
  if (dst.size() != in.uncompressed_size)
    return Status::invalid(where + ": buffer of " + std::to_string(dst.size()) +
                           " bytes for a chunk of " + std::to_string(in.uncompressed_size));
  metrics_->chunk_reads.fetch_add(1, std::memory_order_relaxed);

  BlobCacheFile* cache = cache_for(in.blob_index);
  if (cache && cache->is_ready(in.chunk_index)) {
    Status s = read_from_cache(*cache, in, dst);
    if (s.ok()) {
      metrics_->cache_hits.fetch_add(1, std::memory_order_relaxed);
      metrics_->cache_hit_bytes.fetch_add(dst.size(), std::memory_order_relaxed);
      return s;
    }
    // The cached copy is unreadable or wrong: serve this read from the
    // backend (the bad copy stays until the cache files are removed).
    warn_once(in.blob_index, "cache-read", "blob " + blob.id + ": bad cached chunk, reading it from the backend: " +
                                               s.message());
  }

  NYDUS_ASSIGN(const ChunkRef chunk, located(in));
  // The bootstrap reader validates these, but a size here sizes an
  // allocation, so do not trust any one source of ChunkRefs blindly.
  if (chunk.uncompressed_size > kMaxChunkSize || chunk.compressed_size > kMaxChunkSize)
    return Status::corrupt(where + ": sizes out of range (" + std::to_string(chunk.compressed_size) +
                           " compressed, " + std::to_string(chunk.uncompressed_size) + " uncompressed)");

  auto [flight, leader] = claim(flight_key(chunk));
  if (!leader) return wait_for(*flight, chunk, dst);
  std::vector<ChunkRef> group{chunk};
  std::vector<std::shared_ptr<Flight>> flights{flight};
  if (cache && options_.merge_bytes > 0) extend_group(group, flights, following, *cache, options_.merge_bytes);
  {
    DemandFetch demand(demand_fetches_);
    fetch_group(group, flights);
  }
  std::lock_guard<std::mutex> lock(flight->mu);
  if (!flight->status.ok()) return flight->status;
  std::memcpy(dst.data(), flight->data.bytes.get(), dst.size());
  return Status::Ok();
}

Status ChunkReader::read_chunk_range(const ChunkRef& chunk, uint64_t offset_in_chunk, std::span<uint8_t> dst,
                                     std::span<const ChunkRef> following) {
  if (offset_in_chunk > chunk.uncompressed_size || dst.size() > chunk.uncompressed_size - offset_in_chunk)
    return Status::invalid("range [" + std::to_string(offset_in_chunk) + ", +" + std::to_string(dst.size()) +
                           ") is outside chunk " + std::to_string(chunk.chunk_index) + " of " +
                           std::to_string(chunk.uncompressed_size) + " bytes");
  if (chunk.blob_index < blobs_.size() && !options_.cache_validate && !options_.validate_digest) {
    BlobCacheFile* cache = cache_for(chunk.blob_index);
    if (cache && cache->is_ready(chunk.chunk_index) &&
        cache->read(chunk.chunk_index, chunk.uncompressed_offset + offset_in_chunk, dst).ok()) {
      metrics_->chunk_reads.fetch_add(1, std::memory_order_relaxed);
      metrics_->cache_hits.fetch_add(1, std::memory_order_relaxed);
      metrics_->cache_hit_bytes.fetch_add(dst.size(), std::memory_order_relaxed);
      return Status::Ok();
    }
  }
  // One buffer per thread: a chunk is at most 16 MiB and FUSE reads are
  // usually smaller than the chunk.
  thread_local UninitBytes whole;
  whole.resize(chunk.uncompressed_size);
  NYDUS_TRY(read_chunk(chunk, whole, following));
  std::memcpy(dst.data(), whole.data() + offset_in_chunk, dst.size());
  return Status::Ok();
}

Status ChunkReader::ensure_cached(std::span<const ChunkRef> chunks, uint64_t merge_bytes, uint64_t* fetched_bytes) {
  Status first_error;
  size_t i = 0;
  while (i < chunks.size()) {
    const ChunkRef& in = chunks[i];
    if (in.blob_index >= blobs_.size()) return Status::invalid("prefetch: chunk refers to a blob the image lacks");
    BlobCacheFile* cache = cache_for(in.blob_index);
    if (!cache || cache->is_ready(in.chunk_index)) {
      ++i;
      continue;
    }
    // On-demand reads first: wait while any is fetching (bounded, so a
    // steady stream of reads delays prefetch but cannot wedge it).
    const auto yield_until = std::chrono::steady_clock::now() + kPrefetchYieldLimit;
    while (demand_fetches_.load() > 0 && std::chrono::steady_clock::now() < yield_until)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    auto chunk = located(in);
    if (!chunk.ok()) {
      if (first_error.ok()) first_error = chunk.status();
      ++i;
      continue;
    }
    auto [flight, leader] = claim(flight_key(*chunk));
    if (!leader) {
      ++i;
      continue;
    }
    std::vector<ChunkRef> group{*chunk};
    std::vector<std::shared_ptr<Flight>> flights{flight};
    const size_t consumed = merge_bytes > 0 ? extend_group(group, flights, chunks.subspan(i + 1), *cache, merge_bytes) : 0;
    {
      PrefetchScope ahead;
      fetch_group(group, flights);
    }
    metrics_->prefetch_requests.fetch_add(1, std::memory_order_relaxed);
    for (size_t k = 0; k < group.size(); ++k) {
      std::lock_guard<std::mutex> lock(flights[k]->mu);
      if (flights[k]->status.ok()) {
        metrics_->prefetch_chunks.fetch_add(1, std::memory_order_relaxed);
        metrics_->prefetch_bytes.fetch_add(group[k].uncompressed_size, std::memory_order_relaxed);
        if (fetched_bytes) *fetched_bytes += group[k].compressed_size;
      } else if (first_error.ok()) {
        first_error = flights[k]->status;
      }
    }
    i += consumed + 1;
  }
  return first_error;
}

std::vector<BlobCacheState> ChunkReader::cache_state() {
  std::vector<BlobCacheState> out;
  for (uint32_t i = 0; i < blobs_.size(); ++i) {
    BlobCacheState st;
    st.blob_id = blobs_[i].id;
    st.chunk_count = blobs_[i].chunk_count;
    if (BlobCacheFile* cache = cache_for(i)) {
      st.cached = true;
      st.ready_chunks = cache->ready_count();
      st.fully_cached = cache->fully_cached();
      st.data_path = cache->data_path();
    }
    out.push_back(std::move(st));
  }
  return out;
}

}  // namespace nydus::backend
