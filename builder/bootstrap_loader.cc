#include "builder/bootstrap_loader.h"

#include <sys/stat.h>

#include <algorithm>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/text.h"

namespace nydus::builder {

namespace {

using bootstrap::ChunkRef;
using bootstrap::Ino;

void set_attributes(Node& node, const bootstrap::InodeAttr& a) {
  node.mode = a.mode;
  node.uid = a.uid;
  node.gid = a.gid;
  node.size = a.size;
  node.rdev = a.rdev;
  node.mtime = a.mtime;
  node.mtime_nsec = a.mtime_nsec;
  node.nlink = a.nlink;
}

class Loader {
 public:
  Loader(const bootstrap::Image& image, const LoadOptions& options)
      : image_(image), options_(options), name_(options.name.empty() ? "bootstrap" : options.name) {}

  Result<std::unique_ptr<Tree>> run();

 private:
  Status fail(const std::string& path, const Status& s) const {
    return s.with_context("load " + name_ + ": '/" + escape_bytes(path) + "'");
  }
  // Fills `node` (attributes, xattrs, target, chunks) from inode `ino`.
  Status fill(Node& node, Ino ino, const std::string& path);

  const bootstrap::Image& image_;
  const LoadOptions& options_;
  const std::string name_;
  // Chunks of the hardlinked regular files seen so far, by inode.
  std::unordered_map<Ino, std::vector<ChunkRef>> file_chunks_;
};

Status Loader::fill(Node& node, Ino ino, const std::string& path) {
  auto attr = image_.inode(ino);
  if (!attr.ok()) return fail(path, attr.status());
  set_attributes(node, *attr);
  auto xattrs = image_.xattrs(ino);
  if (!xattrs.ok()) return fail(path, xattrs.status());
  node.xattrs = std::move(xattrs).value();
  std::sort(node.xattrs.begin(), node.xattrs.end(),
            [](const bootstrap::Xattr& a, const bootstrap::Xattr& b) { return a.name < b.name; });
  if (node.is_symlink()) {
    auto target = image_.read_link(ino);
    if (!target.ok()) return fail(path, target.status());
    node.symlink_target = std::move(target).value();
  } else if (node.is_reg()) {
    if (attr->nlink > 1) {
      node.hardlink_group = ino + 1;  // any non-zero id shared by the names
      if (auto it = file_chunks_.find(ino); it != file_chunks_.end()) {
        node.chunks = it->second;
        return Status::Ok();
      }
    }
    auto chunks = image_.chunks(ino, 0, attr->size);
    if (!chunks.ok()) return fail(path, chunks.status());
    for (ChunkRef& c : *chunks) {
      if (options_.blob_index_map.empty()) break;
      if (c.blob_index >= options_.blob_index_map.size())
        return fail(path, Status::invalid("chunk refers to blob index " + std::to_string(c.blob_index) +
                                          " outside the blob table"));
      c.blob_index = options_.blob_index_map[c.blob_index];
    }
    node.chunks = std::move(chunks).value();
    if (attr->nlink > 1) file_chunks_.emplace(ino, node.chunks);
  }
  return Status::Ok();
}

Result<std::unique_ptr<Tree>> Loader::run() {
  auto tree = std::make_unique<Tree>();
  const Ino root = image_.root();
  NYDUS_TRY(fill(tree->root(), root, ""));
  if (!tree->root().is_dir()) return fail("", Status::invalid("the root is not a directory"));

  struct Pending {
    Ino ino;
    Node* node;
    std::string path;
  };
  std::vector<Pending> stack{{root, &tree->root(), ""}};
  // The reader refuses cycles at open; this only keeps a bad reader from
  // making the loader loop.
  std::unordered_set<Ino> dirs_seen{root};
  while (!stack.empty()) {
    Pending p = std::move(stack.back());
    stack.pop_back();
    std::vector<bootstrap::DirEntry> entries;
    Status s = image_.read_dir(p.ino, 0, [&entries](const bootstrap::DirEntry& e, uint64_t) {
      if (e.name != "." && e.name != "..") entries.push_back(e);
      return true;
    });
    if (!s.ok()) return fail(p.path, s);
    p.node->children.reserve(entries.size());
    for (auto& e : entries) {
      std::string path = p.path.empty() ? e.name : p.path + "/" + e.name;
      auto child = std::make_unique<Node>();
      child->name = std::move(e.name);
      NYDUS_TRY(fill(*child, e.ino, path));
      if (child->is_dir()) {
        if (!dirs_seen.insert(e.ino).second)
          return fail(path, Status::invalid("directory inode " + std::to_string(e.ino) + " appears twice"));
        stack.push_back({e.ino, child.get(), std::move(path)});
      }
      p.node->children.push_back(std::move(child));
    }
  }
  tree->finalize();
  return tree;
}

}  // namespace

Result<std::unique_ptr<Tree>> load_bootstrap(const bootstrap::Image& image, const LoadOptions& options) {
  Loader loader(image, options);
  return loader.run();
}

}  // namespace nydus::builder
