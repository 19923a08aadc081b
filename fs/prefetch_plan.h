// Prefetch plans: which chunks of an image to fetch ahead of any read
// (nydusd-contract.md §2.6). In priority order the daemon uses
//   1. the files named by --prefetch-files / the mount's prefetch_files
//      (a directory stands for every file below it),
//   2. the bootstrap's prefetch table (inodes),
//   3. with `prefetch_all`, every chunk of every blob.
// A plan lists each chunk once (by blob and chunk index), in the order the
// files were given, each file's chunks in file order; the whole-image plan
// is in blob order, which merges best. Pure functions of the image.
#pragma once

#include <string>
#include <vector>

#include "bootstrap/image.h"
#include "common/status.h"

namespace nydus::fs {

// Paths that do not exist are skipped and named in *missing (a prefetch
// list naming a missing file is not an error upstream either).
Result<std::vector<bootstrap::ChunkRef>> prefetch_plan_for_paths(const bootstrap::Image& image,
                                                                 const std::vector<std::string>& paths,
                                                                 std::vector<std::string>* missing);

Result<std::vector<bootstrap::ChunkRef>> prefetch_plan_for_inodes(const bootstrap::Image& image,
                                                                  const std::vector<bootstrap::Ino>& inodes);

Result<std::vector<bootstrap::ChunkRef>> prefetch_plan_all(const bootstrap::Image& image);

}  // namespace nydus::fs
