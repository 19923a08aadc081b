// OCI / overlayfs whiteouts: recognising them and applying them when layers
// are merged, the way upstream nydus-image does.
//
// What upstream does (dragonflyoss/nydus at 34e6071e, builder/src/…):
//
// * Recognising (core/overlay.rs, Node::whiteout_type): only nodes of an
//   upper layer are checked. With spec `oci` (the default of `create` and
//   `merge`, `--whiteout-spec oci`) a node named exactly ".wh..wh..opq" is
//   an opaque marker and any other name starting with ".wh." removes the
//   sibling named by the rest (".wh.foo" removes "foo"). Both tests only
//   apply to names that are valid UTF-8 (Rust `OsStr::to_str()`), and the
//   node's type does not matter. With `overlayfs` a character device 0/0
//   removes the sibling of the same name, and a directory with xattr
//   "trusted.overlay.opaque" = "y" is opaque. `none` recognises nothing.
//
// * What a layer bootstrap stores:
//   - tar layers (tarball.rs, `--type tar-rafs`/`targz-rafs`): every entry
//     is stored as it is; ".wh.*" entries become ordinary empty regular
//     files in the layer's bootstrap, to be applied by a later merge. The
//     only entries dropped are the eStargz special files
//     "stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark" at
//     the root.
//   - directory layers (directory.rs, FilesystemTreeBuilder::load_children):
//     without `--parent-bootstrap` (layer index 0) every whiteout is
//     skipped — OCI ".wh.*" names and overlayfs 0/0 devices — except
//     overlayfs opaque directories, which are kept with their xattr. With a
//     parent bootstrap they are kept and applied by the merge below.
//
// * Applying (core/tree.rs, Tree::merge_overaly / merge_children), used by
//   `create --parent-bootstrap` and by `merge` (merge.rs) for every layer
//   after the first: the upper root's attributes replace the lower root's;
//   then per directory, first pass over the upper children: an OCI removal
//   deletes the lower child named by the suffix (with its subtree), an OCI
//   opaque deletes every lower child, an overlayfs removal deletes the lower
//   child of the same name, an overlayfs opaque directory empties the lower
//   directory of that name and loses its "trusted.overlay.opaque" xattr.
//   Whiteout entries themselves never reach the merged tree. Second pass
//   over the remaining upper children: a name present below replaces the
//   lower node's attributes — a directory keeps (and merges into) the lower
//   children, anything else drops them — and a new name is added; then the
//   pass recurses into every upper directory, so whiteouts inside newly
//   added directories are dropped too. Because removals run first, an entry
//   that the same layer both whites out and adds survives (OCI: a whiteout
//   only hides lower layers).
//   In `merge` without `--parent-bootstrap` the first (bottom) layer is
//   taken as it is, whiteout entries included; merge_layers() does the same.
//   Hardlinks are matched per layer (key: layer index, source inode, dev),
//   so names in different layers never join one hardlink group.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "builder/tree.h"
#include "common/status.h"

namespace nydus::builder {

enum class WhiteoutSpec { kOci, kOverlayfs, kNone };

// "oci", "overlayfs" or "none", case-insensitive (like upstream).
Result<WhiteoutSpec> parse_whiteout_spec(std::string_view text);
const char* whiteout_spec_name(WhiteoutSpec spec);

enum class WhiteoutType { kNone, kOciOpaque, kOciRemoval, kOverlayfsOpaque, kOverlayfsRemoval };

inline constexpr std::string_view kOciWhiteoutPrefix = ".wh.";
inline constexpr std::string_view kOciWhiteoutOpaque = ".wh..wh..opq";
inline constexpr std::string_view kOverlayfsOpaqueXattr = "trusted.overlay.opaque";

// What `node`, taken as an entry of an upper layer, means under `spec`.
WhiteoutType whiteout_type(const Node& node, WhiteoutSpec spec);

// Removes the entries upstream's directory builder skips for a layer built
// without a parent: every node whose whiteout_type() is not kNone, except
// overlayfs opaque directories. Finalizes the tree again if anything went.
void strip_whiteouts(Tree& tree, WhiteoutSpec spec);

// Applies `upper` (one layer) on top of `lower` as described above; `upper`
// is consumed (left as an empty tree). Hardlink groups of the two stay
// separate. `lower` is finalized on return. Fails only on a malformed tree
// (e.g. a root that is not a directory).
Status merge_layer(Tree& lower, Tree&& upper, WhiteoutSpec spec);

// `nydus-image merge` without --parent-bootstrap: layers in order bottom to
// top; the bottom one is kept as it is (whiteouts included, as upstream),
// each next one is merged with merge_layer(). Fails on an empty list.
Result<std::unique_ptr<Tree>> merge_layers(std::vector<std::unique_ptr<Tree>> layers,
                                           WhiteoutSpec spec);

}  // namespace nydus::builder
