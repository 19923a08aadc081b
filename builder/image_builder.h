// Image builder: the driver behind `nydus-image create` and `merge`.
//
// build_image() turns a finalized Tree into a nydus image:
//   1. chunking: every regular file that still has content to read (a node
//      with a ContentSource and no chunks; for a hardlink group only its
//      first name, the others share its chunks) is cut into chunk_size
//      pieces in tree pre-order and each piece goes into one new data blob
//      through BlobWriter, which stores identical chunks once. Holes of
//      sparse files become zero chunks (they all dedup to one stored chunk):
//      upstream nydusd does not zero-fill gaps between chunks, so every
//      chunk slot of a file is filled. A chunk whose digest is in
//      `parent_chunks` is not stored again: the file references the
//      parent's blob.
//      Digests, CRCs and compression run on `threads` worker threads; the
//      chunks are appended in the fixed order above, so the output does not
//      depend on thread timing.
//   2. the blob table is `base_blobs` plus the new blob (omitted when it
//      holds no chunk); the bootstrap (RAFS v5 or v6) is laid out, checked
//      by opening it with our reader, and written.
// Outputs: the blob goes to `<blob_dir>/<blob id>` or `blob_file`, the
// bootstrap to `bootstrap_path`; both are written to temporary files in
// their target directories and renamed at the end. On failure nothing is
// left: temporary files are removed, and a blob renamed before the
// bootstrap failed is removed again unless that file existed before.
//
// create_image() and merge_images() read the inputs (a directory or an
// OCI layer tarball, a parent bootstrap, layer bootstraps) and call
// build_image(). Every function returns one Status naming what failed.
// Not thread-safe on the same Tree; separate builds may run in parallel.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bootstrap/image.h"
#include "builder/tree.h"
#include "builder/whiteout.h"
#include "common/status.h"

namespace nydus::builder {

enum class SourceType { kDirectory, kTar, kTarGz };

// "dir-rafs" (or "directory"), "tar-rafs", "targz-rafs".
Result<SourceType> parse_source_type(std::string_view text);
const char* source_type_name(SourceType type);

// Parses a chunk size: "0x100000" (hex) or "1048576"; a power of two in
// 4 KiB..16 MiB.
Result<uint32_t> parse_chunk_size(std::string_view text);

struct BuildProgress {
  uint64_t files_done = 0;
  uint64_t files_total = 0;
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
};

struct BuildStats {
  uint64_t entries = 0;           // nodes of the image (root included)
  uint64_t files = 0;             // regular files chunked (a hardlink group once)
  uint64_t bytes_in = 0;          // file bytes chunked (holes included)
  uint64_t chunks = 0;            // chunk references made for those files
  uint64_t chunks_stored = 0;     // of which stored in the new blob
  uint64_t chunks_from_parent = 0;  // of which found in the parent image
  uint64_t stored_uncompressed = 0;  // uncompressed bytes of the stored chunks
  uint64_t blob_size = 0;         // bytes of the new blob file (0: none)
  uint64_t bootstrap_size = 0;
  double seconds = 0;
  // bytes_in / stored_uncompressed: how much deduplication saved (1 = none).
  double dedup_ratio() const {
    return stored_uncompressed == 0 ? (bytes_in == 0 ? 1.0 : 0.0)
                                    : static_cast<double>(bytes_in) / static_cast<double>(stored_uncompressed);
  }
};

struct BuildOptions {
  uint32_t fs_version = 6;
  bootstrap::Compressor compressor = bootstrap::Compressor::kZstd;
  bootstrap::Digester digester = bootstrap::Digester::kBlake3;
  uint32_t chunk_size = 1 << 20;
  bool explicit_uid_gid = true;             // false with --repeatable, like upstream
  std::vector<std::string> prefetch_paths;  // "/a/b", in order
  std::string bootstrap_path;               // required
  std::string blob_dir;                     // the blob goes to <blob_dir>/<id> ...
  std::string blob_file;                    // ... or to this file (one of the two)
  unsigned threads = 0;                     // 0: one per CPU
  // Called on the calling thread as chunks are written (often: callers
  // throttle their output).
  std::function<void(const BuildProgress&)> progress;
};

struct BuildResult {
  std::string bootstrap_path;
  std::vector<bootstrap::BlobInfo> blobs;  // the image's blob table
  std::string blob_id;                     // the new blob; "" when none was written
  std::string blob_path;
  BuildStats stats;
};

struct DigestHash {
  size_t operator()(const bootstrap::Digest& d) const noexcept {
    size_t h = 0;
    for (size_t i = 0; i < sizeof h; ++i) h = (h << 8) | d[i];
    return h;
  }
};

// Chunks of existing images by digest (one digester), for dedup.
using ChunkDict = std::unordered_map<bootstrap::Digest, bootstrap::ChunkRef, DigestHash>;

// Adds every located chunk of `tree` to `dict` (the first one per digest
// in pre-order wins).
void add_tree_chunks(const Tree& tree, ChunkDict* dict);

Result<BuildResult> build_image(Tree& tree, const std::vector<bootstrap::BlobInfo>& base_blobs,
                                const ChunkDict* parent_chunks, const BuildOptions& options);

struct CreateOptions {
  std::string source;
  SourceType type = SourceType::kDirectory;
  WhiteoutSpec whiteout_spec = WhiteoutSpec::kOci;
  std::string parent_bootstrap;  // "" = none
  BuildOptions build;
};

// `nydus-image create`. With a parent, the parent's tree is loaded, the new
// layer merged over it (whiteouts applied), and the blob table is the
// parent's blobs plus the new one. The parent must agree on fs version,
// chunk size and explicit uid/gid (and, for v5, digester and compressor:
// v5 has one of each per image), as upstream requires; chunks are
// deduplicated against it when the digesters match.
Result<BuildResult> create_image(const CreateOptions& options);

struct MergeOptions {
  std::vector<std::string> layers;  // bootstraps, bottom to top
  std::string bootstrap_path;
  std::string blob_dir;             // if set, every referenced blob must be in it
  WhiteoutSpec whiteout_spec = WhiteoutSpec::kOci;
  std::vector<std::string> prefetch_paths;
  // `--blob-digests`: one sha256 (64 hex digits, "sha256:" already
  // stripped) per layer, or empty. Each layer's own data blob (the one blob
  // of its table that no lower layer references) gets that digest as its id
  // in the merged blob table, as upstream's merge does, so that an image
  // whose blob is pushed to a registry under sha256(blob file) can name it
  // by that digest. A layer without a blob of its own ignores its digest;
  // a layer with more than one is refused. Blob files keep their names
  // (`blob_dir` is checked for the original ids).
  std::vector<std::string> blob_digests;
  std::function<void(const BuildProgress&)> progress;
};

// `nydus-image merge`: the layers' trees merged bottom to top (the bottom
// one as it is, whiteouts applied above), referencing every blob of every
// layer (deduplicated by blob id, in layer order). Format settings come
// from the layers; they must agree on fs version, chunk size and explicit
// uid/gid (and for v5 digester and compressor); compressor and digester of
// the superblock are the top layer's, like upstream.
Result<BuildResult> merge_images(const MergeOptions& options);

}  // namespace nydus::builder
