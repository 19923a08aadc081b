// BlobCacheFile: the on-disk cache of one blob in `cache.config.work_dir`,
// in upstream nydusd's blobcache/filecache layout (nydusd-contract.md §6;
// upstream storage/src/cache/filecache/mod.rs), so either daemon reuses
// what the other cached:
//   <blob_id>.blob.data            uncompressed chunks at their uncompressed
//                                  offsets; a sparse file of exactly the
//                                  blob's uncompressed size
//   <blob_id>.blob.data.chunk_map  readiness bitmap (backend/chunk_map.h)
//
// Size rules of `.blob.data` (as upstream): a missing or empty file is
// created/extended with ftruncate (sparse); an existing smaller file is
// extended; a larger one is refused ("blob data file size doesn't match").
// When uncompressed_size is 0 any existing size is accepted untouched, as
// upstream does (nothing can be read or committed then).
//
// When `.blob.data` is missing or empty but a `.chunk_map` exists (for
// example the snapshotter's GC was interrupted between the two unlinks),
// the bits cannot describe any data, so the chunk_map is unlinked and
// created afresh. Upstream keeps it and would serve zeros for those chunks.
//
// Visibility contract: commit() writes the chunk's bytes with pwrite and
// only then sets its bit, so a chunk is never visible before its bytes are
// in the page cache, for this process and for any other process using the
// same files. A process killed mid-commit (even SIGKILL) leaves either no
// bit or a bit over complete bytes. Nothing here fsyncs the data file:
// after power loss a bit may outlive its data (upstream behaves the same);
// callers that need more verify digests on read.
//
// Chunks are written whole and once: commit() of a ready chunk returns Ok
// without writing. Two concurrent commits of the same not-yet-ready chunk
// both write; they must carry the same (verified) bytes, which is what the
// caller's single-flight and digest checks guarantee.
//
// Thread-safety: all methods may be called concurrently from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "backend/chunk_map.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace nydus::backend {

// `<work_dir>/<blob_id>.blob.data` and `<work_dir>/<blob_id>.blob.meta`.
std::string blob_data_path(const std::string& work_dir, const std::string& blob_id);
std::string blob_meta_path(const std::string& work_dir, const std::string& blob_id);

// Creates `work_dir` (and its parents) when missing. kNotDir when it exists
// and is not a directory, kIo on other failures.
Status ensure_work_dir(const std::string& work_dir);

class BlobCacheFile {
 public:
  // Creates work_dir if missing, checks blob_id (check_blob_id), then opens
  // or creates the data file and the chunk_map (see the header comment).
  // kInvalidInput for a bad id, a data file larger than uncompressed_size,
  // or a chunk_map of the wrong size or with a bad header; kNotDir when
  // work_dir is not a directory; kIo for system-call failures.
  static Result<std::unique_ptr<BlobCacheFile>> open(const std::string& work_dir, const std::string& blob_id,
                                                     uint64_t uncompressed_size, uint32_t chunk_count);

  BlobCacheFile(const BlobCacheFile&) = delete;
  BlobCacheFile& operator=(const BlobCacheFile&) = delete;

  // True when the chunk's bytes are in the data file. False for an index
  // >= chunk_count().
  bool is_ready(uint32_t chunk_index) const { return map_->is_ready(chunk_index); }

  // Reads dst.size() bytes at uncompressed_offset (the chunk's offset in
  // the uncompressed blob) into dst. kNotFound when the chunk is not ready;
  // kInvalidInput when the range is outside the blob or the index is out of
  // range; kIo on a read error or a short read (the file was truncated
  // behind our back). Never returns partial data as success.
  Status read(uint32_t chunk_index, uint64_t uncompressed_offset, std::span<uint8_t> dst) const;

  // Stores a whole, already verified chunk: pwrite all of `data` at
  // uncompressed_offset (retrying short writes and EINTR), then set the
  // chunk's bit. Ok without writing when the chunk is already ready.
  // kInvalidInput when the range is outside the blob or the index is out of
  // range; kIo when the write fails (the bit stays clear; the chunk can be
  // committed again).
  Status commit(uint32_t chunk_index, uint64_t uncompressed_offset, std::span<const uint8_t> data);

  // Counts the chunk map's bits now (ChunkMap::ready_count: includes
  // chunks other instances on the same files cached).
  uint32_t ready_count() { return map_->ready_count(); }
  // True when every chunk is ready (ChunkMap::all_ready; call ready_count()
  // first to take other instances' chunks into account).
  bool fully_cached() const { return map_->all_ready(); }

  uint32_t chunk_count() const { return map_->chunk_count(); }
  uint64_t uncompressed_size() const { return uncompressed_size_; }
  const std::string& blob_id() const { return blob_id_; }
  const std::string& data_path() const { return data_path_; }
  const ChunkMap& chunk_map() const { return *map_; }

 private:
  BlobCacheFile(std::string blob_id, std::string data_path, UniqueFd fd, uint64_t uncompressed_size,
                std::unique_ptr<ChunkMap> map);

  Status check_range(uint32_t chunk_index, uint64_t offset, uint64_t len, const char* what) const;

  const std::string blob_id_;
  const std::string data_path_;
  // pread/pwrite do not move the file position: the fd needs no lock.
  const UniqueFd fd_;
  const uint64_t uncompressed_size_;
  const std::unique_ptr<ChunkMap> map_;
};

// Persists `<work_dir>/<blob_id>.blob.meta` in upstream's layout: the
// uncompressed chunk-info array at offset 0, zeros up to
// round_up_4k(ci size), then the 4096-byte blob.meta header; total size
// 4096 + round_up_4k(ci size). The header must be a valid blob.meta header
// (both magics 0xb10bb10b; checked with bootstrap::parse_blob_meta_header)
// whose ci_uncompressed_size equals ci_uncompressed.size(); otherwise
// kInvalidInput and nothing is written.
//
// Written to a temporary file in work_dir (`<id>.blob.meta.tmp-…`), fsynced,
// renamed over the final name, then the directory is fsynced: readers see
// the old file, or no file, or the complete new one, never a torn one.
// Processes that have the old file mapped keep their copy. After a crash a
// temporary file may be left behind (never under the final name). Creates
// work_dir when missing. Thread-safe (each call uses its own temp file).
Status write_blob_meta_file(const std::string& work_dir, const std::string& blob_id,
                            std::span<const uint8_t> ci_uncompressed, std::span<const uint8_t> header4096);

}  // namespace nydus::backend
