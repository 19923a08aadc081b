// fs::Vfs on the upstream fixtures: instances attached at paths behave
// exactly like the Filesystems they wrap, modulo node-id encoding; "/" is a
// pass-through; mount/umount race requests safely.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <atomic>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "backend/localfs_backend.h"
#include "fs/filesystem.h"
#include "fs/vfs.h"
#include "test/test_util.h"

using namespace nydus;
using fs::NodeId;
using fs::Vfs;

namespace {

constexpr char kV6Boot[] = "bootstrap/rafs-v6-2.2.boot";
constexpr char kV6Blobs[] = "blobs";
constexpr char kV5Boot[] = "repeatable/sha256-nocompress-repeatable";
constexpr char kV5Blobs[] = "repeatable/blobs";

std::shared_ptr<fs::Filesystem> make_fs(std::unique_ptr<bootstrap::Image> image, const std::string& blob_dir,
                                        bool enable_xattr = true) {
  backend::LocalFsConfig local;
  local.dir = blob_dir;
  backend::ChunkReaderOptions options;
  options.validate_digest = true;
  auto reader = std::make_unique<backend::ChunkReader>(image->blobs(), backend::make_localfs_backend(local), options);
  fs::FsOptions fs_options;
  fs_options.enable_xattr = enable_xattr;
  fs_options.default_uid = 4242;
  fs_options.default_gid = 4343;
  return std::make_shared<fs::Filesystem>(std::move(image), std::move(reader), fs_options);
}

std::shared_ptr<fs::Filesystem> open_fs(const std::string& boot, const std::string& blob_dir) {
  auto image = bootstrap::Image::open(nydus::test::fixture(boot));
  REQUIRE(image.ok());
  return make_fs(std::move(image).value(), nydus::test::fixture(blob_dir));
}

struct Listed {
  std::string name;
  NodeId node;
  struct stat st;
  uint64_t next;
  uint64_t generation;
};

std::vector<Listed> list_vfs(const Vfs& vfs, NodeId dir, bool full, uint64_t cookie = 0) {
  std::vector<Listed> out;
  Status s = vfs.readdir(dir, cookie, full, [&](std::string_view name, NodeId node, const struct stat& st,
                                                uint64_t next, uint64_t gen) {
    out.push_back({std::string(name), node, st, next, gen});
    return true;
  });
  REQUIRE(s.ok());
  return out;
}

std::vector<Listed> list_fs(const fs::Filesystem& f, NodeId dir, bool full) {
  std::vector<Listed> out;
  Status s = f.readdir(dir, 0, full, [&](std::string_view name, NodeId node, const struct stat& st, uint64_t next) {
    out.push_back({std::string(name), node, st, next, 0});
    return true;
  });
  REQUIRE(s.ok());
  return out;
}

std::string read_all_vfs(const Vfs& vfs, NodeId node) {
  std::string out;
  std::vector<uint8_t> buf(7000);  // odd size: crosses chunk boundaries
  for (uint64_t off = 0;; off += buf.size()) {
    auto n = vfs.read(node, off, buf);
    REQUIRE(n.ok());
    out.append(reinterpret_cast<const char*>(buf.data()), *n);
    if (*n < buf.size()) break;
  }
  return out;
}

std::string read_all_fs(const fs::Filesystem& f, NodeId node) {
  std::string out;
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0;; off += buf.size()) {
    auto n = f.read(node, off, buf);
    REQUIRE(n.ok());
    out.append(reinterpret_cast<const char*>(buf.data()), *n);
    if (*n < buf.size()) break;
  }
  return out;
}

void check_same_attr(const struct stat& v, const struct stat& f, bool same_ino) {
  CHECK(v.st_mode == f.st_mode);
  CHECK(v.st_nlink == f.st_nlink);
  CHECK(v.st_uid == f.st_uid);
  CHECK(v.st_gid == f.st_gid);
  CHECK(v.st_size == f.st_size);
  CHECK(v.st_blocks == f.st_blocks);
  CHECK(v.st_rdev == f.st_rdev);
  CHECK(v.st_mtim.tv_sec == f.st_mtim.tv_sec);
  CHECK(v.st_mtim.tv_nsec == f.st_mtim.tv_nsec);
  if (same_ino) CHECK(v.st_ino == f.st_ino);
}

// Walks the subtree at (vfs `vdir`, filesystem `fdir`) and checks that the
// Vfs shows exactly what the Filesystem does, with node ids mapped by `map`.
// Returns the number of entries compared.
template <typename Map>
size_t compare_tree(const Vfs& vfs, NodeId vdir, const fs::Filesystem& f, NodeId fdir, const Map& map,
                    uint64_t generation, bool same_ino, std::set<NodeId>& seen) {
  size_t compared = 0;
  auto v = list_vfs(vfs, vdir, true);
  auto d = list_fs(f, fdir, true);
  REQUIRE(v.size() == d.size());
  for (size_t i = 0; i < v.size(); ++i) {
    INFO("entry " << d[i].name);
    CHECK(v[i].name == d[i].name);
    CHECK(v[i].next == d[i].next);
    if (v[i].name == "." || v[i].name == "..") continue;
    CHECK(v[i].node == map(d[i].node));
    CHECK(v[i].generation == generation);
    check_same_attr(v[i].st, d[i].st, same_ino);
    if (!same_ino) CHECK(v[i].st.st_ino == v[i].node);
    ++compared;

    auto ve = vfs.lookup(vdir, v[i].name);
    auto fe = f.lookup(fdir, d[i].name);
    REQUIRE(ve.ok());
    REQUIRE(fe.ok());
    CHECK(ve->node == map(fe->node));
    CHECK(ve->generation == generation);
    check_same_attr(ve->attr, fe->attr, same_ino);
    auto va = vfs.getattr(ve->node);
    REQUIRE(va.ok());
    check_same_attr(*va, fe->attr, same_ino);
    if (!same_ino) CHECK(va->st_ino == ve->node);

    auto vx = vfs.listxattr(ve->node);
    auto fx = f.listxattr(fe->node);
    REQUIRE(vx.ok());
    REQUIRE(fx.ok());
    CHECK(*vx == *fx);
    for (const auto& name : *fx) CHECK(*vfs.getxattr(ve->node, name) == *f.getxattr(fe->node, name));

    if (!seen.insert(fe->node).second) continue;  // hardlink already compared
    if (S_ISDIR(fe->attr.st_mode)) {
      CHECK(vfs.open(ve->node).code() == Code::kIsDir);
      compared += compare_tree(vfs, ve->node, f, fe->node, map, generation, same_ino, seen);
    } else if (S_ISREG(fe->attr.st_mode)) {
      CHECK(vfs.open(ve->node).ok());
      CHECK(read_all_vfs(vfs, ve->node) == read_all_fs(f, fe->node));
    } else if (S_ISLNK(fe->attr.st_mode)) {
      CHECK(*vfs.readlink(ve->node) == *f.readlink(fe->node));
    }
  }
  return compared;
}

size_t compare_instance(const Vfs& vfs, const fs::MountInfo& m, const fs::Filesystem& f) {
  std::set<NodeId> seen;
  return compare_tree(
      vfs, m.root, f, fs::kRootNode, [&](NodeId n) { return fs::encode_node(m.index, n); }, m.generation, false,
      seen);
}

std::vector<std::string> names(const std::vector<Listed>& l) {
  std::vector<std::string> out;
  for (const auto& e : l) out.push_back(e.name);
  return out;
}

// A v5-style image whose only file has an inode number >= 2^56.
struct HugeIno : bootstrap::Image {
  bootstrap::SuperInfo sup;
  std::vector<bootstrap::BlobInfo> no_blobs;
  std::vector<bootstrap::Ino> no_prefetch;
  static constexpr bootstrap::Ino kBig = bootstrap::Ino{1} << 57;
  HugeIno() {
    sup.version = 5;
    sup.chunk_size = 1 << 20;
    sup.inodes_count = 2;
  }
  const bootstrap::SuperInfo& super() const override { return sup; }
  const std::vector<bootstrap::BlobInfo>& blobs() const override { return no_blobs; }
  const std::vector<bootstrap::Ino>& prefetch_table() const override { return no_prefetch; }
  bootstrap::Ino root() const override { return 1; }
  Result<bootstrap::InodeAttr> inode(bootstrap::Ino ino) const override {
    bootstrap::InodeAttr a;
    a.ino = ino;
    a.nlink = 1;
    if (ino == 1) a.mode = S_IFDIR | 0755;
    else if (ino == kBig) a.mode = S_IFREG | 0644;
    else return Status::not_found("no inode");
    return a;
  }
  Result<bootstrap::Ino> parent(bootstrap::Ino) const override { return bootstrap::Ino{1}; }
  Result<bootstrap::Ino> lookup(bootstrap::Ino dir, std::string_view name) const override {
    if (dir == 1 && name == "big") return kBig;
    return Status::not_found("no entry");
  }
  Status read_dir(bootstrap::Ino dir, uint64_t cookie, const DirVisitor& fn) const override {
    std::vector<bootstrap::DirEntry> all = {{".", 1, S_IFDIR}, {"..", 1, S_IFDIR}, {"big", kBig, S_IFREG}};
    (void)dir;
    for (uint64_t i = cookie; i < all.size(); ++i)
      if (!fn(all[i], i + 1)) break;
    return Status::Ok();
  }
  Result<std::string> read_link(bootstrap::Ino) const override { return Status::invalid("no"); }
  Result<std::vector<bootstrap::Xattr>> xattrs(bootstrap::Ino) const override {
    return std::vector<bootstrap::Xattr>{};
  }
  Result<std::vector<bootstrap::ChunkRef>> chunks(bootstrap::Ino, uint64_t, uint64_t) const override {
    return std::vector<bootstrap::ChunkRef>{};
  }
};

}  // namespace

TEST_CASE("vfs: two instances and a nested one, walked through the pseudo tree") {
  auto v6 = open_fs(kV6Boot, kV6Blobs);
  auto v5 = open_fs(kV5Boot, kV5Blobs);
  auto v6b = open_fs(kV6Boot, kV6Blobs);
  Vfs vfs;
  auto i1 = vfs.mount("/1", v6);
  auto i2 = vfs.mount("/2", v5);
  auto i3 = vfs.mount("/a/b", v6b);
  REQUIRE(i1.ok());
  REQUIRE(i2.ok());
  REQUIRE(i3.ok());
  CHECK(*i1 == 1);
  CHECK(*i2 == 2);
  CHECK(*i3 == 3);
  CHECK_FALSE(vfs.dedicated());

  // The pseudo root lists the mounted names.
  auto root = list_vfs(vfs, fs::kRootNode, true);
  REQUIRE(names(root) == std::vector<std::string>{".", "..", "1", "2", "a"});
  CHECK(root[0].node == fs::kRootNode);
  CHECK(root[1].node == fs::kRootNode);
  CHECK(S_ISDIR(root[0].st.st_mode));
  CHECK(root[2].node == fs::encode_node(1, fs::kRootNode));
  CHECK(root[2].generation != 0);
  CHECK(root[3].node == fs::encode_node(2, fs::kRootNode));
  CHECK(fs::index_of(root[4].node) == fs::kPseudoIndex);
  CHECK(vfs.is_pseudo(root[4].node));
  CHECK_FALSE(vfs.is_pseudo(root[2].node));
  // Plain readdir gives types and ids too.
  auto plain = list_vfs(vfs, fs::kRootNode, false);
  REQUIRE(plain.size() == 5);
  CHECK(S_ISDIR(plain[2].st.st_mode));
  CHECK(plain[2].st.st_ino == plain[2].node);

  // An instance root shows the instance root's attributes at its path, with
  // the encoded id as st_ino; ".." leads back to the pseudo parent.
  auto one = vfs.lookup(fs::kRootNode, "1");
  REQUIRE(one.ok());
  CHECK(one->node == fs::encode_node(*i1, fs::kRootNode));
  check_same_attr(one->attr, *v6->getattr(fs::kRootNode), false);
  CHECK(one->attr.st_ino == one->node);
  auto up = vfs.lookup(one->node, "..");
  REQUIRE(up.ok());
  CHECK(up->node == fs::kRootNode);
  auto inner_list = list_vfs(vfs, one->node, true);
  REQUIRE(inner_list.size() >= 2);
  CHECK(inner_list[0].node == one->node);
  CHECK(inner_list[1].name == "..");
  CHECK(inner_list[1].node == fs::kRootNode);

  auto a = vfs.lookup(fs::kRootNode, "a");
  REQUIRE(a.ok());
  CHECK(S_ISDIR(a->attr.st_mode));
  CHECK(a->generation == 0);
  CHECK(names(list_vfs(vfs, a->node, true)) == std::vector<std::string>{".", "..", "b"});
  auto b = vfs.lookup(a->node, "b");
  REQUIRE(b.ok());
  CHECK(b->node == fs::encode_node(*i3, fs::kRootNode));
  CHECK(vfs.lookup(b->node, "..")->node == a->node);
  CHECK(vfs.lookup(a->node, "..")->node == fs::kRootNode);
  CHECK(vfs.lookup(fs::kRootNode, "missing").status().code() == Code::kNotFound);
  CHECK(vfs.lookup(a->node, "missing").status().code() == Code::kNotFound);

  // Pseudo directories: no data, no xattrs (and never "unsupported").
  CHECK(vfs.open(fs::kRootNode).code() == Code::kIsDir);
  CHECK(vfs.readlink(fs::kRootNode).status().code() == Code::kInvalidInput);
  CHECK(vfs.getxattr(a->node, "user.x").status().code() == Code::kNoData);
  CHECK(vfs.listxattr(fs::kRootNode)->empty());
  CHECK(vfs.statfs(fs::kRootNode).ok());
  CHECK(vfs.statfs(one->node)->f_files == v6->statfs().f_files);

  // Every entry of every instance equals direct Filesystem access.
  auto m1 = vfs.find("/1");
  auto m2 = vfs.find("/2");
  auto m3 = vfs.find("/a/b");
  REQUIRE(m1);
  REQUIRE(m2);
  REQUIRE(m3);
  CHECK(m1->fs == v6);
  CHECK(m3->parent == a->node);
  CHECK(m3->name == "b");
  CHECK(m1->generation != m2->generation);
  CHECK(compare_instance(vfs, *m1, *v6) >= 2);
  CHECK(compare_instance(vfs, *m2, *v5) >= 10);
  CHECK(compare_instance(vfs, *m3, *v6b) >= 2);

  // route(): which instance serves a node, and its own id.
  auto lib = vfs.lookup(one->node, "lib.rs");
  REQUIRE(lib.ok());
  auto r = vfs.route(lib->node);
  CHECK(r.fs == v6);
  CHECK(r.index == *i1);
  CHECK(r.inner == v6->lookup(fs::kRootNode, "lib.rs")->node);
  CHECK(vfs.route(one->node).inner == fs::kRootNode);
  CHECK(vfs.route(fs::kRootNode).fs == nullptr);
  CHECK(vfs.route(a->node).fs == nullptr);
  CHECK(vfs.route(fs::encode_node(77, 5)).fs == nullptr);

  auto all = vfs.instances();
  REQUIRE(all.size() == 3);
  CHECK(all[0].path == "/1");
  CHECK(all[1].path == "/2");
  CHECK(all[2].path == "/a/b");
  CHECK_FALSE(vfs.find("/a"));
  CHECK_FALSE(vfs.find("/3"));
}

TEST_CASE("vfs: dedicated mode at / passes node ids and attributes through") {
  for (auto [boot, blobs] : {std::pair{kV6Boot, kV6Blobs}, std::pair{kV5Boot, kV5Blobs}}) {
    auto f = open_fs(boot, blobs);
    Vfs vfs;
    auto idx = vfs.mount("/", f);
    REQUIRE(idx.ok());
    CHECK(vfs.dedicated());
    CHECK_FALSE(vfs.is_pseudo(fs::kRootNode));
    auto root = vfs.getattr(fs::kRootNode);
    REQUIRE(root.ok());
    check_same_attr(*root, *f->getattr(fs::kRootNode), true);
    std::set<NodeId> seen;
    CHECK(compare_tree(vfs, fs::kRootNode, *f, fs::kRootNode, [](NodeId n) { return n; }, 0, true, seen) >= 2);
    auto m = vfs.find("/");
    REQUIRE(m);
    CHECK(m->index == *idx);
    CHECK(vfs.route(12345).fs.get() == f.get());
    CHECK(vfs.route(12345).inner == 12345);
    CHECK(vfs.route(12345).index == *idx);
    CHECK(m->root == fs::kRootNode);
    CHECK(m->generation == 0);

    // Nothing else can be mounted beside "/".
    CHECK(vfs.mount("/x", open_fs(kV6Boot, kV6Blobs)).status().code() == Code::kInvalidInput);
    CHECK(vfs.mount("/", open_fs(kV6Boot, kV6Blobs)).status().message() == "object or filesystem already exists");

    // After umount the root is an empty pseudo directory; old ids are gone.
    REQUIRE(vfs.umount("/").ok());
    CHECK_FALSE(vfs.dedicated());
    CHECK(names(list_vfs(vfs, fs::kRootNode, true)) == std::vector<std::string>{".", ".."});
    CHECK(vfs.lookup(fs::kRootNode, "lib.rs").status().code() == Code::kNotFound);
    CHECK(vfs.umount("/").code() == Code::kNotFound);
  }
  // "/" needs an empty vfs.
  Vfs vfs;
  REQUIRE(vfs.mount("/1", open_fs(kV6Boot, kV6Blobs)).ok());
  CHECK(vfs.mount("/", open_fs(kV6Boot, kV6Blobs)).status().code() == Code::kInvalidInput);
}

TEST_CASE("vfs: mount errors use upstream's texts; paths are validated") {
  Vfs vfs;
  auto f = open_fs(kV6Boot, kV6Blobs);
  REQUIRE(vfs.mount("/42", f).ok());
  auto dup = vfs.mount("/42", open_fs(kV6Boot, kV6Blobs));
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.status().message() == "object or filesystem already exists");
  CHECK(vfs.mount("//42/", f).status().message() == "object or filesystem already exists");

  auto gone = vfs.umount("/nope");
  CHECK(gone.code() == Code::kNotFound);
  CHECK(gone.message() == "object or filesystem doesn't exist");
  CHECK(vfs.umount("/").code() == Code::kNotFound);

  for (const char* bad : {"", "42", "/a/../b", "/./a", "/a/."})
    CHECK(vfs.mount(bad, f).status().code() == Code::kInvalidInput);
  CHECK(vfs.mount("/" + std::string(256, 'x'), f).status().code() == Code::kInvalidInput);
  CHECK(vfs.mount("/x", nullptr).status().code() == Code::kInvalidInput);
  // Nested inside a mount, or over a directory that holds mounts.
  CHECK(vfs.mount("/42/inner", f).status().code() == Code::kInvalidInput);
  REQUIRE(vfs.mount("/p/q", open_fs(kV6Boot, kV6Blobs)).ok());
  CHECK(vfs.mount("/p", f).status().code() == Code::kInvalidInput);
  CHECK(vfs.umount("/p").code() == Code::kNotFound);
  // Only the failed calls' side effects are absent: two mounts remain.
  CHECK(vfs.instances().size() == 2);
  // Trailing and doubled slashes normalize.
  CHECK(vfs.umount("/p//q/").ok());
  CHECK(names(list_vfs(vfs, fs::kRootNode, false)) == std::vector<std::string>{".", "..", "42"});
}

TEST_CASE("vfs: umount hook, pruning, stale ids answer kNotFound, indexes rotate") {
  Vfs vfs;
  std::vector<fs::VfsChange> mounted, umounted;
  vfs.set_on_mount([&](const fs::VfsChange& c) { mounted.push_back(c); });
  vfs.set_on_umount([&](const fs::VfsChange& c) { umounted.push_back(c); });

  auto f1 = open_fs(kV6Boot, kV6Blobs);
  std::weak_ptr<fs::Filesystem> weak2;
  std::weak_ptr<void> weak_ctx;
  {
    auto f2 = open_fs(kV6Boot, kV6Blobs);
    weak2 = f2;
    auto ctx = std::make_shared<int>(42);
    weak_ctx = ctx;
    REQUIRE(vfs.mount("/1", f1).ok());
    REQUIRE(vfs.mount("/x/y/2", std::move(f2), ctx).ok());
    CHECK(vfs.find("/x/y/2")->context == ctx);
    CHECK(vfs.route(fs::encode_node(2, 1)).context == ctx);
  }
  REQUIRE(mounted.size() == 2);
  CHECK(mounted[0].entry_parent == fs::kRootNode);
  CHECK(mounted[0].entry_name == "1");
  CHECK(mounted[1].entry_parent == fs::kRootNode);  // topmost new name: /x
  CHECK(mounted[1].entry_name == "x");
  CHECK(mounted[1].mount.name == "2");

  auto x = vfs.lookup(fs::kRootNode, "x");
  auto y = vfs.lookup(x->node, "y");
  auto two = vfs.lookup(y->node, "2");
  REQUIRE(two.ok());
  auto lib = vfs.lookup(two->node, "lib.rs");
  REQUIRE(lib.ok());
  CHECK(fs::index_of(lib->node) == 2);
  mounted.clear();  // the hook's copy holds a reference to the instance

  REQUIRE(vfs.umount("/x/y/2").ok());
  REQUIRE(umounted.size() == 1);
  CHECK(umounted[0].mount.index == 2);
  CHECK(umounted[0].mount.name == "2");
  CHECK(umounted[0].mount.parent == y->node);
  CHECK(umounted[0].mount.root == two->node);
  CHECK(umounted[0].entry_parent == fs::kRootNode);  // /x/y pruned with it
  CHECK(umounted[0].entry_name == "x");
  umounted.clear();
  CHECK(weak2.expired());  // nothing else held it
  CHECK(weak_ctx.expired());

  for (NodeId stale : {two->node, lib->node, x->node, y->node}) {
    CHECK(vfs.getattr(stale).status().code() == Code::kNotFound);
    CHECK(vfs.lookup(stale, "lib.rs").status().code() == Code::kNotFound);
    CHECK(vfs.readdir(stale, 0, true, [](auto...) { return true; }).code() == Code::kNotFound);
  }
  std::vector<uint8_t> buf(16);
  CHECK(vfs.read(lib->node, 0, buf).status().code() == Code::kNotFound);
  CHECK(vfs.open(lib->node).code() == Code::kNotFound);
  CHECK(names(list_vfs(vfs, fs::kRootNode, true)) == std::vector<std::string>{".", "..", "1"});

  // Indexes rotate (upstream allocate_fs_idx): the freed 2 is not reused at
  // once, and a new mount's generation differs.
  auto again = vfs.mount("/x/y/2", open_fs(kV6Boot, kV6Blobs));
  REQUIRE(again.ok());
  CHECK(*again == 3);
  auto x2 = vfs.lookup(fs::kRootNode, "x");
  CHECK(x2->node != x->node);  // pseudo ids are not reused
  CHECK(vfs.find("/x/y/2")->generation > 2);
}

TEST_CASE("vfs: index exhaustion and wrap-around") {
  Vfs vfs;
  auto f = open_fs(kV6Boot, kV6Blobs);
  for (int i = 1; i <= 255; ++i) REQUIRE(vfs.mount("/m" + std::to_string(i), f).ok());
  auto full = vfs.mount("/more", f);
  CHECK(full.status().message() == "vfs maximum mountpoints reached");
  REQUIRE(vfs.umount("/m7").ok());
  CHECK(*vfs.mount("/more", f) == 7);
  CHECK(vfs.instances().size() == 255);
  CHECK(list_vfs(vfs, fs::kRootNode, false).size() == 257);
}

TEST_CASE("vfs: restore at explicit index and generation; pseudo ids survive export/import") {
  fs::VfsState state;
  fs::MountInfo before;
  NodeId a_node = 0;
  {
    Vfs old;
    REQUIRE(old.mount("/first", open_fs(kV6Boot, kV6Blobs)).ok());
    REQUIRE(old.mount("/a/b", open_fs(kV6Boot, kV6Blobs)).ok());
    REQUIRE(old.umount("/first").ok());
    before = *old.find("/a/b");
    a_node = old.lookup(fs::kRootNode, "a")->node;
    state = old.export_state();
  }
  CHECK(before.index == 2);
  REQUIRE(state.pseudo_dirs.size() == 1);
  CHECK(state.pseudo_dirs[0].first == "/a");
  CHECK(state.pseudo_dirs[0].second == a_node);

  Vfs vfs;
  REQUIRE(vfs.import_state(state).ok());
  auto f = open_fs(kV6Boot, kV6Blobs);
  auto idx = vfs.mount_at("/a/b", f, before.index, before.generation);
  REQUIRE(idx.ok());
  CHECK(*idx == before.index);
  auto a = vfs.lookup(fs::kRootNode, "a");
  REQUIRE(a.ok());
  CHECK(a->node == a_node);
  auto b = vfs.lookup(a->node, "b");
  REQUIRE(b.ok());
  CHECK(b->node == before.root);
  CHECK(b->generation == before.generation);
  auto lib = vfs.lookup(b->node, "lib.rs");
  REQUIRE(lib.ok());
  CHECK(lib->node == fs::encode_node(before.index, f->lookup(fs::kRootNode, "lib.rs")->node));
  CHECK(compare_instance(vfs, *vfs.find("/a/b"), *f) >= 2);

  // Explicit index already in use, or the pseudo index.
  CHECK(vfs.mount_at("/c", f, before.index).status().code() == Code::kInvalidInput);
  CHECK(vfs.mount_at("/c", f, 0).status().code() == Code::kInvalidInput);
  CHECK(vfs.mount_at("/c", f, 9, uint64_t{1} << 40).status().code() == Code::kInvalidInput);
  // Import only into an empty vfs.
  CHECK(vfs.import_state(state).code() == Code::kInvalidInput);
  // New allocations continue after the old daemon's counters.
  auto next = vfs.mount("/d", open_fs(kV6Boot, kV6Blobs));
  REQUIRE(next.ok());
  CHECK(*next == 3);
  CHECK(vfs.find("/d")->generation > before.generation);
  auto d_dir = vfs.mount("/e/f", open_fs(kV6Boot, kV6Blobs));
  REQUIRE(d_dir.ok());
  CHECK(vfs.lookup(fs::kRootNode, "e")->node > a_node);

  // Bad states are refused.
  Vfs fresh;
  fs::VfsState bad = state;
  bad.pseudo_dirs.emplace_back("/z", bad.next_pseudo_node);
  CHECK(fresh.import_state(bad).code() == Code::kInvalidInput);
  bad = state;
  bad.next_index = 0;
  CHECK(fresh.import_state(bad).code() == Code::kInvalidInput);
}

TEST_CASE("vfs: readdir cookies stay valid while mounts come and go") {
  Vfs vfs;
  auto f = open_fs(kV6Boot, kV6Blobs);
  for (int i = 0; i < 10; ++i) REQUIRE(vfs.mount("/n" + std::to_string(i), f).ok());
  // Page through the root one entry at a time, changing the set between
  // pages: no name twice, no loop, names present throughout are all seen.
  std::vector<std::string> seen;
  uint64_t cookie = 0;
  int step = 0;
  for (;;) {
    std::vector<Listed> page;
    REQUIRE(vfs.readdir(fs::kRootNode, cookie, false, [&](std::string_view name, NodeId node, const struct stat& st,
                                                         uint64_t next, uint64_t gen) {
      page.push_back({std::string(name), node, st, next, gen});
      return false;  // buffer "full" after one entry
    }).ok());
    if (page.empty()) break;
    seen.push_back(page[0].name);
    REQUIRE(page[0].next > cookie);
    cookie = page[0].next;
    switch (step++) {
      case 2: REQUIRE(vfs.umount("/n0").ok()); break;           // already listed
      case 3: REQUIRE(vfs.umount("/n5").ok()); break;           // not yet listed
      case 4: REQUIRE(vfs.mount("/n0", f).ok()); break;         // re-added: appears at the end
      case 5: REQUIRE(vfs.mount("/zz/deep", f).ok()); break;
      default: break;
    }
    REQUIRE(seen.size() < 100);
  }
  std::set<std::string> unique(seen.begin(), seen.end());
  CHECK(unique.size() == seen.size() - 1);  // only n0 twice: gone, then re-added as a new entry
  for (const char* n : {".", "..", "n1", "n2", "n3", "n4", "n6", "n7", "n8", "n9", "zz"}) CHECK(unique.count(n) == 1);
  CHECK(unique.count("n5") == 0);
  // A cookie past the end, or from a removed entry, is harmless.
  CHECK(list_vfs(vfs, fs::kRootNode, false, 1u << 30).empty());
}

TEST_CASE("vfs: umount while 8 threads read through both instances") {
  auto keep = open_fs(kV6Boot, kV6Blobs);
  const std::string expected = read_all_fs(*keep, keep->lookup(fs::kRootNode, "lib.rs")->node);
  Vfs vfs;
  REQUIRE(vfs.mount("/keep", keep).ok());

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ok_reads{0}, stale{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const char* mp = t % 2 ? "keep" : "churn";
      std::vector<uint8_t> buf(expected.size() + 10);
      NodeId cached = 0;  // a node id that goes stale when /churn goes away
      while (!stop.load()) {
        auto root = vfs.lookup(fs::kRootNode, mp);
        if (t == 2) {  // the nested mountpoint /d/churn, pruned with its parent
          auto d = vfs.lookup(fs::kRootNode, "d");
          root = d.ok() ? vfs.lookup(d->node, "churn") : d.status();
        }
        if (root.ok()) {
          auto lib = vfs.lookup(root->node, "lib.rs");
          if (lib.ok()) cached = lib->node;
          size_t n_entries = 0;
          (void)vfs.readdir(root->node, 0, true, [&](auto...) { return ++n_entries < 100; });
          (void)vfs.getattr(root->node);
        }
        if (cached != 0) {
          auto r = vfs.route(cached);
          if (r.fs && !r.fs->getattr(r.inner).ok()) bad++;
          auto n = vfs.read(cached, 0, buf);
          if (n.ok()) {
            if (*n == expected.size() && std::equal(expected.begin(), expected.end(), buf.begin()))
              ok_reads++;
            else
              bad++;
          } else if (n.status().code() == Code::kNotFound) {
            stale++;
          } else {
            bad++;
          }
        }
        (void)vfs.readdir(fs::kRootNode, 0, true, [](auto...) { return true; });
      }
    });
  }
  for (int round = 0; round < 60; ++round) {
    REQUIRE(vfs.mount("/churn", open_fs(kV6Boot, kV6Blobs)).ok());
    REQUIRE(vfs.mount("/d/churn", open_fs(kV6Boot, kV6Blobs)).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    REQUIRE(vfs.umount("/churn").ok());
    REQUIRE(vfs.umount("/d/churn").ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  stop = true;
  for (auto& th : threads) th.join();
  CHECK(bad.load() == 0);
  CHECK(ok_reads.load() > 0);
  CHECK(stale.load() > 0);
  // /keep is intact.
  auto k = vfs.find("/keep");
  REQUIRE(k);
  CHECK(compare_instance(vfs, *k, *keep) >= 2);
  CHECK(vfs.instances().size() == 1);
}

TEST_CASE("vfs: instance node ids that do not fit in 56 bits are refused, not aliased") {
  nydus::test::TempDir dir("vfs-huge");
  auto f = make_fs(std::make_unique<HugeIno>(), dir.path());
  REQUIRE(f->lookup(fs::kRootNode, "big")->node == HugeIno::kBig);

  Vfs vfs;
  REQUIRE(vfs.mount("/h", f).ok());
  auto root = vfs.lookup(fs::kRootNode, "h");
  REQUIRE(root.ok());
  auto big = vfs.lookup(root->node, "big");
  CHECK(big.status().code() == Code::kIo);
  std::vector<std::string> listed;
  Status s = vfs.readdir(root->node, 0, false, [&](std::string_view name, auto...) {
    listed.emplace_back(name);
    return true;
  });
  CHECK(s.code() == Code::kIo);
  CHECK(listed == std::vector<std::string>{".", ".."});
  // In dedicated mode ids are not encoded, so the same image works.
  Vfs dedicated;
  REQUIRE(dedicated.mount("/", f).ok());
  CHECK(dedicated.lookup(fs::kRootNode, "big")->node == HugeIno::kBig);
}

TEST_CASE("vfs: an instance with xattrs disabled has none in shared mode, never kUnsupported") {
  auto image = bootstrap::Image::open(nydus::test::fixture(kV6Boot));
  REQUIRE(image.ok());
  auto no_xattr = make_fs(std::move(image).value(), nydus::test::fixture(kV6Blobs), false);
  {
    Vfs shared;
    REQUIRE(shared.mount("/a", no_xattr).ok());
    auto root = shared.lookup(fs::kRootNode, "a");
    REQUIRE(root.ok());
    auto value = shared.getxattr(root->node, "user.x");
    REQUIRE_FALSE(value.ok());
    CHECK(value.status().code() == Code::kNoData);
    auto names = shared.listxattr(root->node);
    REQUIRE(names.ok());
    CHECK(names->empty());
  }
  Vfs dedicated;
  REQUIRE(dedicated.mount("/", no_xattr).ok());
  auto value = dedicated.getxattr(fs::kRootNode, "user.x");
  REQUIRE_FALSE(value.ok());
  CHECK(value.status().code() == Code::kUnsupported);
}
