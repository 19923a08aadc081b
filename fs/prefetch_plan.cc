#include "fs/prefetch_plan.h"

#include <sys/stat.h>

#include <algorithm>
#include <unordered_set>

namespace nydus::fs {
namespace {

using bootstrap::ChunkRef;
using bootstrap::Image;
using bootstrap::Ino;

// Collects chunks once each, remembering which inodes were visited (hard
// links and repeated list entries are walked once).
class PlanBuilder {
 public:
  explicit PlanBuilder(const Image& image) : image_(image) {}

  // Adds a file's chunks, or everything below a directory.
  Status add_tree(Ino start) {
    std::vector<Ino> stack{start};
    while (!stack.empty()) {
      const Ino ino = stack.back();
      stack.pop_back();
      if (!visited_.insert(ino).second) continue;
      NYDUS_ASSIGN(const bootstrap::InodeAttr attr, image_.inode(ino));
      if (S_ISREG(attr.mode)) {
        NYDUS_TRY(add_file(ino, attr.size));
      } else if (S_ISDIR(attr.mode)) {
        std::vector<Ino> children;
        NYDUS_TRY(image_.read_dir(ino, 0, [&](const bootstrap::DirEntry& e, uint64_t) {
          if (e.name != "." && e.name != "..") children.push_back(e.ino);
          return true;
        }));
        // Reversed so the stack pops them in directory order.
        stack.insert(stack.end(), children.rbegin(), children.rend());
      }
    }
    return Status::Ok();
  }

  std::vector<ChunkRef> take() { return std::move(plan_); }

 private:
  Status add_file(Ino ino, uint64_t size) {
    if (size == 0) return Status::Ok();
    NYDUS_ASSIGN(auto chunks, image_.chunks(ino, 0, size));
    for (ChunkRef& c : chunks) {
      const uint64_t key = (uint64_t{c.blob_index} << 32) | c.chunk_index;
      if (seen_chunks_.insert(key).second) plan_.push_back(std::move(c));
    }
    return Status::Ok();
  }

  const Image& image_;
  std::unordered_set<Ino> visited_;
  std::unordered_set<uint64_t> seen_chunks_;
  std::vector<ChunkRef> plan_;
};

Result<Ino> resolve(const Image& image, const std::string& path) {
  Ino ino = image.root();
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    if (i >= path.size()) break;
    const size_t end = std::min(path.find('/', i), path.size());
    const std::string_view name(path.data() + i, end - i);
    if (name == ".") {
    } else if (name == "..") {
      NYDUS_ASSIGN(ino, image.parent(ino));
    } else {
      NYDUS_ASSIGN(ino, image.lookup(ino, name));
    }
    i = end;
  }
  return ino;
}

}  // namespace

Result<std::vector<ChunkRef>> prefetch_plan_for_paths(const Image& image, const std::vector<std::string>& paths,
                                                      std::vector<std::string>* missing) {
  PlanBuilder builder(image);
  for (const std::string& path : paths) {
    auto ino = resolve(image, path);
    if (!ino.ok()) {
      if (ino.status().code() != Code::kNotFound && ino.status().code() != Code::kNotDir) return ino.status();
      if (missing) missing->push_back(path);
      continue;
    }
    NYDUS_TRY(builder.add_tree(*ino));
  }
  return builder.take();
}

Result<std::vector<ChunkRef>> prefetch_plan_for_inodes(const Image& image, const std::vector<Ino>& inodes) {
  PlanBuilder builder(image);
  for (Ino ino : inodes) NYDUS_TRY(builder.add_tree(ino).with_context("prefetch table inode " + std::to_string(ino)));
  return builder.take();
}

Result<std::vector<ChunkRef>> prefetch_plan_all(const Image& image) {
  PlanBuilder builder(image);
  NYDUS_TRY(builder.add_tree(image.root()));
  auto plan = builder.take();
  std::sort(plan.begin(), plan.end(), [](const ChunkRef& a, const ChunkRef& b) {
    return a.blob_index != b.blob_index ? a.blob_index < b.blob_index
                                        : a.uncompressed_offset < b.uncompressed_offset;
  });
  return plan;
}

}  // namespace nydus::fs
