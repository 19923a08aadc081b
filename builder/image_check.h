// `nydus-image check` and `inspect`: validate an image against its blobs
// and describe it.
//
// check_image():
//   1. opens the bootstrap with our reader (which validates every
//      structure) and walks the whole tree: every inode, directory,
//      symlink, xattr list and chunk list is decoded;
//   2. with a blob directory, for every blob of the blob table: the file
//      must exist and hold at least the blob table's compressed size; every
//      chunk any file references is read, decompressed and checked against
//      its digest (and CRC-32C when recorded), once per chunk, in file
//      order, so a failure names the first file that uses the bad chunk;
//   3. then the blob tail: the ToC (its sha256 against the bootstrap's
//      toc_digest, and the sha256 of every section it lists), the blob.meta
//      header and chunk-info table against the bootstrap's chunk records
//      (v6), the blob.digest array against the chunk digests, and the blob
//      id against the sha256 of the blob (the whole file, or, for blobs with
//      a ToC, every byte but the blob.digest payload, as nydus-image 2.2+
//      computes it).
// The first failure ends the check with one Status naming the blob, chunk
// and file ("file '/a/b': blob 1a2b…, chunk 3 at offset 0x1000: digest
// mismatch …").
//
// walk_image() and the inspect functions only read the bootstrap.
// Everything here is single-threaded and reads its inputs only.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::builder {

struct ImageStats {
  uint64_t entries = 0;      // names, root included
  uint64_t inodes = 0;       // distinct inodes
  uint64_t dirs = 0;
  uint64_t files = 0;        // regular file names
  uint64_t hardlinks = 0;    // names of regular files beyond the first of each inode
  uint64_t symlinks = 0;
  uint64_t char_devices = 0;
  uint64_t block_devices = 0;
  uint64_t fifos = 0;
  uint64_t sockets = 0;
  uint64_t xattrs = 0;       // name/value pairs over all inodes
  uint64_t file_bytes = 0;   // sizes of distinct regular inodes
  uint64_t chunk_refs = 0;   // chunk references of distinct regular inodes
  uint64_t unique_chunks = 0;  // distinct (blob, chunk) pairs referenced
};

// One entry of the tree as the walk sees it.
struct ImageEntry {
  std::string path;  // "/" for the root, "/a/b" below
  bootstrap::Ino ino = 0;
  bootstrap::InodeAttr attr;
  bool first_name = true;  // false for later names of a hardlinked inode
};

// Pre-order walk over every entry (children in the image's sorted order).
// Stops at the first error of `fn` or of the reader.
Status walk_image(const bootstrap::Image& image, const std::function<Status(const ImageEntry&)>& fn);

// Counts over the whole tree (also decodes every xattr list and chunk list).
Result<ImageStats> image_stats(const bootstrap::Image& image);

struct CheckOptions {
  std::string bootstrap;
  std::string blob_dir;  // "" = check the bootstrap only
  // --verbose: called once per entry with a line describing it.
  std::function<void(const std::string& line)> verbose;
};

struct CheckReport {
  bootstrap::SuperInfo super;
  std::vector<bootstrap::BlobInfo> blobs;
  ImageStats stats;
  bool blobs_checked = false;
  uint64_t chunks_verified = 0;
  uint64_t bytes_verified = 0;  // uncompressed bytes of the chunks verified
};

Result<CheckReport> check_image(const CheckOptions& options);

// `inspect` without --request: superblock, blob table, prefetch table,
// the tree (one line per entry) and statistics, as text.
Result<std::string> inspect_text(const bootstrap::Image& image);

// The same as one JSON document (--output-json, and --request with
// "stats", "blobs", "prefetch", "tree" or "" for everything). kInvalidInput
// for an unknown request.
Result<std::string> inspect_json(const bootstrap::Image& image, const std::string& bootstrap_path,
                                 std::string_view request);

// The check report as JSON: upstream's fields (version, bootstrap, blobs,
// fs_version, compressor) plus what was verified and the statistics.
std::string check_report_json(const CheckReport& report, const std::string& bootstrap_path,
                              const std::string& version);

// `s` with valid UTF-8 kept and any other byte (and '\') written as the text
// "\xNN", so JSON output never fails on the raw names RAFS allows.
std::string json_safe(std::string_view s);

// Mode string like ls -l ("drwxr-xr-x", "-rwsr-sr-t").
std::string mode_string(uint32_t mode);

}  // namespace nydus::builder
