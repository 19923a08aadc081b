#include "builder/whiteout.h"

#include <algorithm>
#include <cctype>
#include <string>

namespace nydus::builder {

namespace {

// Strict UTF-8 check matching Rust's str validation (no overlongs, no
// surrogates, nothing above U+10FFFF): upstream only recognises OCI
// whiteouts in names that pass it.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (cc < lo || cc > hi) : (cc < 0x80 || cc > 0xbf)) return false;
    }
    i += len;
  }
  return true;
}

const bootstrap::Xattr* find_xattr(const Node& node, std::string_view name) {
  for (const auto& x : node.xattrs) {
    if (x.name == name) return &x;
  }
  return nullptr;
}

void remove_xattr(Node& node, std::string_view name) {
  auto& xs = node.xattrs;
  xs.erase(std::remove_if(xs.begin(), xs.end(), [&](const bootstrap::Xattr& x) { return x.name == name; }),
           xs.end());
}

using Children = std::vector<std::unique_ptr<Node>>;

bool by_name(const std::unique_ptr<Node>& a, const std::unique_ptr<Node>& b) {
  return std::string_view(a->name) < std::string_view(b->name);
}

// Index of `name` in the sorted `kids`, or kids.size().
size_t index_of(const Children& kids, std::string_view name) {
  auto it = std::lower_bound(kids.begin(), kids.end(), name,
                             [](const std::unique_ptr<Node>& a, std::string_view b) {
                               return std::string_view(a->name) < b;
                             });
  return it != kids.end() && (*it)->name == name ? static_cast<size_t>(it - kids.begin()) : kids.size();
}

// Tree::merge_children of upstream (core/tree.rs), for one directory:
// `dir` holds the lower children (sorted), `upper` the upper ones (sorted).
void merge_dir(Node& dir, Children upper, WhiteoutSpec spec) {
  Children& lower = dir.children;
  std::vector<bool> gone(lower.size(), false);
  Children modified;
  modified.reserve(upper.size());
  for (auto& u : upper) {
    switch (whiteout_type(*u, spec)) {
      case WhiteoutType::kOciRemoval: {
        size_t idx = index_of(lower, std::string_view(u->name).substr(kOciWhiteoutPrefix.size()));
        if (idx < lower.size()) gone[idx] = true;
        break;
      }
      case WhiteoutType::kOciOpaque:
        std::fill(gone.begin(), gone.end(), true);
        break;
      case WhiteoutType::kOverlayfsRemoval: {
        size_t idx = index_of(lower, u->name);
        if (idx < lower.size()) gone[idx] = true;
        break;
      }
      case WhiteoutType::kOverlayfsOpaque: {
        size_t idx = index_of(lower, u->name);
        if (idx < lower.size()) lower[idx]->children.clear();
        remove_xattr(*u, kOverlayfsOpaqueXattr);
        modified.push_back(std::move(u));
        break;
      }
      case WhiteoutType::kNone:
        modified.push_back(std::move(u));
        break;
    }
  }

  // Second pass as one sorted merge (both sides are sorted), so a directory
  // with n entries costs O(n), not O(n^2) insertions.
  Children merged;
  merged.reserve(lower.size() + modified.size());
  std::vector<std::pair<Node*, Children>> recurse;
  size_t i = 0, j = 0;
  while (i < lower.size() || j < modified.size()) {
    if (i < lower.size() && gone[i]) {
      ++i;
      continue;
    }
    int cmp;
    if (i == lower.size()) {
      cmp = 1;
    } else if (j == modified.size()) {
      cmp = -1;
    } else {
      cmp = std::string_view(lower[i]->name).compare(modified[j]->name);
    }
    if (cmp < 0) {
      merged.push_back(std::move(lower[i++]));
      continue;
    }
    std::unique_ptr<Node> u = std::move(modified[j++]);
    Children upper_kids = std::move(u->children);
    u->children.clear();
    if (cmp == 0) {
      // Same name: upper attributes win; a directory keeps the lower
      // children to merge into, anything else drops them.
      if (u->is_dir()) {
        u->children = std::move(lower[i]->children);
        u->sorted_prefix = u->children.size();
      }
      ++i;
    }
    if (u->is_dir()) recurse.emplace_back(u.get(), std::move(upper_kids));
    merged.push_back(std::move(u));
  }
  lower = std::move(merged);
  dir.sorted_prefix = lower.size();
  for (auto& [child, kids] : recurse) merge_dir(*child, std::move(kids), spec);
}

uint64_t max_group(Tree& tree) {
  uint64_t m = 0;
  tree.walk([&m](const Node& n) { m = std::max(m, n.hardlink_group); });
  return m;
}

}  // namespace

Result<WhiteoutSpec> parse_whiteout_spec(std::string_view text) {
  std::string lower(text);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "oci") return WhiteoutSpec::kOci;
  if (lower == "overlayfs") return WhiteoutSpec::kOverlayfs;
  if (lower == "none") return WhiteoutSpec::kNone;
  return Status::invalid("invalid whiteout spec '" + std::string(text) +
                         "' (expected oci, overlayfs or none)");
}

const char* whiteout_spec_name(WhiteoutSpec spec) {
  switch (spec) {
    case WhiteoutSpec::kOci: return "oci";
    case WhiteoutSpec::kOverlayfs: return "overlayfs";
    case WhiteoutSpec::kNone: return "none";
  }
  return "none";
}

WhiteoutType whiteout_type(const Node& node, WhiteoutSpec spec) {
  switch (spec) {
    case WhiteoutSpec::kOci: {
      std::string_view name(node.name);
      if (!name.starts_with(kOciWhiteoutPrefix) || !valid_utf8(name)) return WhiteoutType::kNone;
      return name == kOciWhiteoutOpaque ? WhiteoutType::kOciOpaque : WhiteoutType::kOciRemoval;
    }
    case WhiteoutSpec::kOverlayfs: {
      if ((node.mode & 0170000) == 0020000 && node.rdev == 0) return WhiteoutType::kOverlayfsRemoval;
      if (node.is_dir()) {
        const bootstrap::Xattr* x = find_xattr(node, kOverlayfsOpaqueXattr);
        if (x != nullptr && x->value == "y") return WhiteoutType::kOverlayfsOpaque;
      }
      return WhiteoutType::kNone;
    }
    case WhiteoutSpec::kNone:
      return WhiteoutType::kNone;
  }
  return WhiteoutType::kNone;
}

void strip_whiteouts(Tree& tree, WhiteoutSpec spec) {
  if (spec == WhiteoutSpec::kNone) return;
  bool changed = false;
  // Own traversal (not Tree::walk): children are removed on the way, and a
  // removed whiteout directory is not descended into.
  std::vector<Node*> stack{&tree.root()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    auto& kids = n->children;
    auto keep_end = std::remove_if(kids.begin(), kids.end(), [&](const std::unique_ptr<Node>& c) {
      WhiteoutType t = whiteout_type(*c, spec);
      return t != WhiteoutType::kNone && t != WhiteoutType::kOverlayfsOpaque;
    });
    if (keep_end != kids.end()) {
      kids.erase(keep_end, kids.end());
      changed = true;
    }
    for (auto& c : kids) {
      if (c->is_dir()) stack.push_back(c.get());
    }
  }
  if (changed) tree.finalize();
}

Status merge_layer(Tree& lower, Tree&& upper, WhiteoutSpec spec) {
  if (!lower.root().is_dir() || !upper.root().is_dir()) {
    return Status::invalid("merge: a layer's root is not a directory");
  }
  // finalize() turns hand-set hardlink_of pointers into group ids and sorts
  // children; then the upper ids are shifted past the lower ones so the two
  // layers' groups never join (upstream keys them by layer index).
  lower.finalize();
  upper.finalize();
  uint64_t base = max_group(lower);
  upper.walk([base](Node& n) {
    if (n.hardlink_group != 0) n.hardlink_group += base;
  });
  lower.walk([](Node& n) { n.hardlink_of = nullptr; });
  upper.walk([](Node& n) { n.hardlink_of = nullptr; });

  Children upper_kids = std::move(upper.root().children);
  upper.root().children.clear();
  auto new_root = std::make_unique<Node>(std::move(upper.root()));
  new_root->children.clear();
  upper.root() = Node();
  upper.root().mode = 0040755;
  // add("") with a childless directory keeps the lower root's children.
  auto added = lower.add("", std::move(new_root));
  if (!added.ok()) return added.status();
  std::sort(upper_kids.begin(), upper_kids.end(), by_name);
  merge_dir(lower.root(), std::move(upper_kids), spec);
  lower.finalize();
  return Status::Ok();
}

Result<std::unique_ptr<Tree>> merge_layers(std::vector<std::unique_ptr<Tree>> layers,
                                           WhiteoutSpec spec) {
  if (layers.empty()) return Status::invalid("merge: no layers");
  std::unique_ptr<Tree> tree = std::move(layers[0]);
  if (!tree) return Status::invalid("merge: layer 0 is null");
  tree->finalize();
  for (size_t i = 1; i < layers.size(); ++i) {
    if (!layers[i]) return Status::invalid("merge: layer " + std::to_string(i) + " is null");
    Status s = merge_layer(*tree, std::move(*layers[i]), spec);
    if (!s.ok()) return s.with_context("layer " + std::to_string(i));
  }
  return tree;
}

}  // namespace nydus::builder
