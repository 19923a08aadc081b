#include "builder/tree.h"

#include <algorithm>
#include <iterator>
#include <unordered_map>
#include <utility>

#include "common/text.h"

namespace nydus::builder {

namespace {

constexpr size_t kMaxNameLen = 255;

// Splits `path` into components, dropping empty and "." ones. Refuses the
// components RAFS cannot hold or that would escape the tree.
Status split_path(const std::string& path, std::vector<std::string_view>* out) {
  out->clear();
  std::string_view rest(path);
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    std::string_view part = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      return Status::invalid("tree: path '" + escape_bytes(path) + "' has a '..' component");
    }
    if (part.size() > kMaxNameLen) {
      return Status::invalid("tree: path '" + escape_bytes(path) + "' has a name of " +
                             std::to_string(part.size()) + " bytes (limit 255)");
    }
    if (part.find('\0') != std::string_view::npos) {
      return Status::invalid("tree: path '" + escape_bytes(path) + "' has a NUL byte");
    }
    out->push_back(part);
  }
  return Status::Ok();
}

constexpr size_t kNpos = static_cast<size_t>(-1);
// An unsorted tail shorter than this is only scanned, never merged.
constexpr size_t kMinTail = 32;

bool name_less(const std::unique_ptr<Node>& a, std::string_view b) {
  // std::string_view compares like memcmp (char_traits<char> compares as
  // unsigned char), which is the RAFS order.
  return std::string_view(a->name) < b;
}

bool by_name(const std::unique_ptr<Node>& a, const std::unique_ptr<Node>& b) {
  return std::string_view(a->name) < std::string_view(b->name);
}

// Index of `name` in dir.children or kNpos: binary search over the sorted
// prefix, then a scan of the unsorted tail.
size_t find_child(const Node& dir, std::string_view name) {
  const auto& kids = dir.children;
  const size_t prefix = std::min(dir.sorted_prefix, kids.size());
  auto mid = kids.begin() + static_cast<std::ptrdiff_t>(prefix);
  auto it = std::lower_bound(kids.begin(), mid, name, name_less);
  if (it != mid && (*it)->name == name) return static_cast<size_t>(it - kids.begin());
  for (size_t i = prefix; i < kids.size(); ++i) {
    if (kids[i]->name == name) return i;
  }
  return kNpos;
}

Node* child_of(const Node& dir, std::string_view name) {
  size_t idx = find_child(dir, name);
  return idx == kNpos ? nullptr : dir.children[idx].get();
}

// Sorts kids[prefix, end) and merges it into the sorted prefix. Every
// comparison dereferences two nodes (a cache miss each on big
// directories), so tail entries find their place by binary search
// (t log n comparisons) and the prefix moves over in runs, instead of
// std::inplace_merge's n comparisons.
void merge_tail(std::vector<std::unique_ptr<Node>>& kids, size_t prefix) {
  auto mid = kids.begin() + static_cast<std::ptrdiff_t>(prefix);
  std::sort(mid, kids.end(), by_name);
  std::vector<std::unique_ptr<Node>> tail(std::make_move_iterator(mid), std::make_move_iterator(kids.end()));
  kids.resize(prefix);
  std::vector<std::unique_ptr<Node>> out;
  out.reserve(prefix + tail.size());
  auto pos = kids.begin();
  for (auto& t : tail) {
    auto at = std::lower_bound(pos, kids.end(), std::string_view(t->name), name_less);
    out.insert(out.end(), std::make_move_iterator(pos), std::make_move_iterator(at));
    out.push_back(std::move(t));
    pos = at;
  }
  out.insert(out.end(), std::make_move_iterator(pos), std::make_move_iterator(kids.end()));
  kids = std::move(out);
}

// Appends a child whose name is not present yet. In-order names extend the
// sorted prefix; out-of-order ones wait in the tail, which is sorted and
// merged in once it reaches ~sqrt(n): an insert into the middle of a
// 100,000-entry vector for every name would be O(n^2).
void insert_child(Node& dir, std::unique_ptr<Node> child) {
  auto& kids = dir.children;
  const size_t prefix = std::min(dir.sorted_prefix, kids.size());
  const bool in_order =
      prefix == kids.size() && (kids.empty() || std::string_view(kids.back()->name) < std::string_view(child->name));
  kids.push_back(std::move(child));
  if (in_order) {
    dir.sorted_prefix = kids.size();
    return;
  }
  const size_t tail = kids.size() - prefix;
  if (tail >= kMinTail && tail * tail >= kids.size()) {
    merge_tail(kids, prefix);
    dir.sorted_prefix = kids.size();
  }
}

std::unique_ptr<Node> make_dir(std::string_view name) {
  auto dir = std::make_unique<Node>();
  dir->name = std::string(name);
  dir->mode = 0040755;
  dir->nlink = 2;
  return dir;
}

// Puts `node` in place of `old`: a childless directory replacing a
// directory inherits its children.
void adopt(Node& old, Node& node) {
  if (node.is_dir() && old.is_dir() && node.children.empty()) {
    node.children = std::move(old.children);
    node.sorted_prefix = old.sorted_prefix;
  }
}

// Pre-order list of every node.
template <typename NodeT>
void preorder(NodeT* root, std::vector<NodeT*>* out) {
  std::vector<NodeT*> stack{root};
  while (!stack.empty()) {
    NodeT* n = stack.back();
    stack.pop_back();
    out->push_back(n);
    for (auto it = n->children.rbegin(); it != n->children.rend(); ++it) stack.push_back(it->get());
  }
}

}  // namespace

Tree::Tree() : root_(make_dir("")) {}

Result<Node*> Tree::add(const std::string& path, std::unique_ptr<Node> node) {
  if (!node) return Status::invalid("tree: add '" + escape_bytes(path) + "' without a node");
  std::vector<std::string_view> parts;
  NYDUS_TRY(split_path(path, &parts));
  if (parts.empty()) {
    if (!node->is_dir()) {
      return Status::invalid("tree: the root '" + escape_bytes(path) + "' must be a directory");
    }
    node->name.clear();
    adopt(*root_, *node);
    root_ = std::move(node);
    return root_.get();
  }
  Node* dir = root_.get();
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    Node* next = child_of(*dir, parts[i]);
    if (next == nullptr) {
      auto made = make_dir(parts[i]);
      next = made.get();
      insert_child(*dir, std::move(made));
    } else if (!next->is_dir()) {
      std::string prefix;
      for (size_t k = 0; k <= i; ++k) prefix += (k ? "/" : "") + std::string(parts[k]);
      return Status::invalid("tree: cannot add '" + escape_bytes(path) + "': '" +
                             escape_bytes(prefix) + "' is not a directory");
    }
    dir = next;
  }
  node->name = std::string(parts.back());
  Node* raw = node.get();
  size_t idx = find_child(*dir, raw->name);
  if (idx != kNpos) {
    adopt(*dir->children[idx], *node);
    dir->children[idx] = std::move(node);
  } else {
    insert_child(*dir, std::move(node));
  }
  return raw;
}

const Node* Tree::find(const std::string& path) const {
  std::vector<std::string_view> parts;
  if (!split_path(path, &parts).ok()) return nullptr;
  const Node* n = root_.get();
  for (auto part : parts) {
    if (!n->is_dir()) return nullptr;
    n = child_of(*n, part);
    if (!n) return nullptr;
  }
  return n;
}

Node* Tree::find(const std::string& path) {
  return const_cast<Node*>(static_cast<const Tree*>(this)->find(path));
}

bool Tree::remove(const std::string& path) {
  std::vector<std::string_view> parts;
  if (!split_path(path, &parts).ok() || parts.empty()) return false;
  Node* dir = root_.get();
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    dir = child_of(*dir, parts[i]);
    if (!dir || !dir->is_dir()) return false;
  }
  size_t idx = find_child(*dir, parts.back());
  if (idx == kNpos) return false;
  dir->children.erase(dir->children.begin() + static_cast<std::ptrdiff_t>(idx));
  // Erasing keeps the relative order: the prefix just loses one entry.
  if (idx < dir->sorted_prefix) --dir->sorted_prefix;
  return true;
}

void Tree::finalize() {
  // Children first: the pre-order below depends on their order.
  std::vector<Node*> order;
  {
    std::vector<Node*> stack{root_.get()};
    root_->parent = nullptr;
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      order.push_back(n);
      std::stable_sort(n->children.begin(), n->children.end(), by_name);
      n->sorted_prefix = n->children.size();
      for (auto it = n->children.rbegin(); it != n->children.rend(); ++it) {
        (*it)->parent = n;
        stack.push_back(it->get());
      }
    }
  }

  // Union-find over regular files (positions in pre-order); the root of a
  // set is always its smallest position, i.e. the first name in pre-order.
  std::unordered_map<const Node*, size_t> pos_of;
  std::vector<size_t> up(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    up[i] = i;
    if (order[i]->is_reg()) pos_of.emplace(order[i], i);
  }
  auto find_root = [&up](size_t x) {
    while (up[x] != x) {
      up[x] = up[up[x]];
      x = up[x];
    }
    return x;
  };
  auto unite = [&](size_t a, size_t b) {
    a = find_root(a);
    b = find_root(b);
    if (a == b) return;
    if (a < b) up[b] = a; else up[a] = b;
  };
  std::unordered_map<uint64_t, size_t> first_of_group;
  for (size_t i = 0; i < order.size(); ++i) {
    Node* n = order[i];
    if (!n->is_reg()) continue;
    if (n->hardlink_group != 0) {
      auto [it, inserted] = first_of_group.emplace(n->hardlink_group, i);
      if (!inserted) unite(it->second, i);
    }
    // A hand-set pointer counts only if it names a regular file still in
    // the tree; anything else is never dereferenced.
    if (n->hardlink_of != nullptr) {
      auto it = pos_of.find(n->hardlink_of);
      if (it != pos_of.end()) unite(it->second, i);
    }
  }
  std::vector<uint32_t> group_size(order.size(), 0);
  for (size_t i = 0; i < order.size(); ++i) {
    if (order[i]->is_reg()) ++group_size[find_root(i)];
  }

  std::vector<uint64_t> group_id(order.size(), 0);
  uint64_t next_group = 1;
  for (size_t i = 0; i < order.size(); ++i) {
    Node* n = order[i];
    if (n->is_symlink()) n->size = n->symlink_target.size();
    if (n->is_dir()) {
      uint32_t subdirs = 0;
      for (const auto& c : n->children) subdirs += c->is_dir() ? 1 : 0;
      n->nlink = 2 + subdirs;
      n->hardlink_of = nullptr;
      n->hardlink_group = 0;
      continue;
    }
    if (!n->is_reg()) {
      n->nlink = 1;
      n->hardlink_of = nullptr;
      n->hardlink_group = 0;
      continue;
    }
    size_t root = find_root(i);
    uint32_t size = group_size[root];
    n->nlink = size;
    n->hardlink_of = root == i ? nullptr : order[root];
    if (size > 1 && group_id[root] == 0) group_id[root] = next_group++;
    n->hardlink_group = size > 1 ? group_id[root] : 0;
  }
}

void Tree::walk(const std::function<void(Node&)>& fn) {
  std::vector<Node*> order;
  preorder(root_.get(), &order);
  for (Node* n : order) fn(*n);
}

void Tree::walk(const std::function<void(const Node&)>& fn) const {
  std::vector<const Node*> order;
  preorder<const Node>(root_.get(), &order);
  for (const Node* n : order) fn(*n);
}

}  // namespace nydus::builder
