// builder::Tree, the whiteout rules, and the two tree sources: a directory
// walker and an OCI layer tarball reader.
//
// Parts that need root (device nodes, trusted.* and security.capability
// xattrs, chown) are skipped with a warning when not root, unless $CI is
// set: then they fail. Tars are generated with GNU tar and python3 tarfile
// when those exist (same rule: skipped, or failed under $CI).
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "builder/dir_source.h"
#include "builder/tar_source.h"
#include "builder/tree.h"
#include "builder/whiteout.h"
#include "test/test_util.h"

namespace nydus::test {
namespace {

using builder::Node;
using builder::Tree;

// True when the root-only parts can run; under $CI their absence fails.
bool have_root(const char* what) {
  if (geteuid() == 0) return true;
  if (in_ci()) FAIL("needs root under CI: " << what);
  WARN("not root: skipping " << what);
  return false;
}

bool have_tool(const std::string& tool) {
  std::string cmd = "command -v " + tool + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) == 0) return true;
  if (in_ci()) FAIL(tool << " is needed under CI");
  WARN(tool << " not found: skipping");
  return false;
}

int count_fds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}


void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  REQUIRE(f.good());
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  REQUIRE(f.good());
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string path_of(const Node& n) {
  std::vector<const std::string*> parts;
  for (const Node* p = &n; p != nullptr && p->parent != nullptr; p = p->parent) parts.push_back(&p->name);
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) out += (out.empty() ? "" : "/") + **it;
  return out;
}

std::map<std::string, const Node*> index_tree(const Tree& tree) {
  std::map<std::string, const Node*> out;
  tree.walk([&out](const Node& n) { out[path_of(n)] = &n; });
  return out;
}

std::string content_of(const Node& n) {
  std::string out(n.size, '\0');
  if (n.size == 0) return out;
  REQUIRE(n.content.read);
  Status s = n.content.read(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size()));
  INFO(s.message());
  REQUIRE(s.ok());
  return out;
}

std::string xattr_value(const Node& n, const std::string& name) {
  for (const auto& x : n.xattrs) {
    if (x.name == name) return x.value;
  }
  return "<absent>";
}

std::unique_ptr<Node> make_node(uint32_t mode) {
  auto n = std::make_unique<Node>();
  n->mode = mode;
  return n;
}

// Runs a python3 script with the given arguments; returns its exit code.
int run_python(const TempDir& dir, const std::string& script, const std::string& args) {
  write_file(dir / "gen.py", script);
  std::string cmd = "python3 '" + (dir / "gen.py") + "' " + args;
  return std::system(cmd.c_str());
}

// ---------------------------------------------------------------- Tree

TEST_CASE("Tree::add normalizes paths, creates parents and keeps children sorted by bytes", "[tree]") {
  Tree tree;
  CHECK(tree.root().is_dir());
  CHECK(tree.root().name.empty());

  auto file = make_node(0100644);
  file->size = 3;
  auto r = tree.add("./a//b/c.txt", std::move(file));
  REQUIRE(r.ok());
  CHECK((*r)->name == "c.txt");
  Node* a = tree.find("a");
  REQUIRE(a != nullptr);
  CHECK(a->mode == 0040755);
  CHECK(tree.find("/a/b/") == tree.find("a/b"));
  CHECK(tree.find("a/b/c.txt")->size == 3);
  CHECK(tree.find("a/x") == nullptr);
  CHECK(tree.find("a/b/c.txt/d") == nullptr);

  // Raw-byte order: "B" < "a" < "\x80" (unsigned), whatever the insert order.
  for (std::string name : {std::string("\x80z"), std::string("a1"), std::string("B"), std::string("a")}) {
    REQUIRE(tree.add("s/" + name, make_node(0100644)).ok());
  }
  CHECK(tree.find("s/a1") != nullptr);
  CHECK(tree.find("s/\x80z") != nullptr);
  tree.finalize();
  std::vector<std::string> names;
  for (auto& c : tree.find("s")->children) names.push_back(c->name);
  CHECK(names == std::vector<std::string>{"B", "a", "a1", "\x80z"});

  // A directory entry after its children only sets attributes.
  auto dir = make_node(0040700);
  dir->uid = 9;
  REQUIRE(tree.add("a/", std::move(dir)).ok());
  CHECK(tree.find("a")->uid == 9);
  CHECK(tree.find("a")->mode == 0040700);
  CHECK(tree.find("a/b/c.txt") != nullptr);

  // A file replacing a directory drops the subtree.
  REQUIRE(tree.add("a/b", make_node(0100600)).ok());
  CHECK(tree.find("a/b")->is_reg());
  CHECK(tree.find("a/b/c.txt") == nullptr);

  // The root can be replaced by a directory only.
  auto root = make_node(0040711);
  root->mtime = 5;
  REQUIRE(tree.add(".", std::move(root)).ok());
  CHECK(tree.root().mode == 0040711);
  CHECK(tree.root().mtime == 5);
  CHECK(tree.find("a") != nullptr);
  CHECK_FALSE(tree.add("/", make_node(0100644)).ok());

  CHECK(tree.remove("a/b"));
  CHECK_FALSE(tree.remove("a/b"));
  CHECK_FALSE(tree.remove(""));
  CHECK(tree.find("a") != nullptr);
}

TEST_CASE("Tree::add refuses bad names with a message naming the path", "[tree]") {
  Tree tree;
  auto dotdot = tree.add("a/../b", make_node(0100644));
  REQUIRE_FALSE(dotdot.ok());
  CHECK(dotdot.status().code() == Code::kInvalidInput);
  CHECK(dotdot.status().message().find("a/../b") != std::string::npos);

  std::string n255(255, 'n'), n256(256, 'n');
  CHECK(tree.add("d/" + n255, make_node(0100644)).ok());
  auto too_long = tree.add("d/" + n256, make_node(0100644));
  REQUIRE_FALSE(too_long.ok());
  CHECK(too_long.status().message().find("256 bytes") != std::string::npos);

  auto nul = tree.add(std::string("x\0y", 3), make_node(0100644));
  REQUIRE_FALSE(nul.ok());
  CHECK(nul.status().message().find("NUL") != std::string::npos);
  CHECK(nul.status().message().find("x\\x00y") != std::string::npos);

  REQUIRE(tree.add("f", make_node(0100644)).ok());
  auto under_file = tree.add("f/g", make_node(0100644));
  REQUIRE_FALSE(under_file.ok());
  CHECK(under_file.status().message().find("'f' is not a directory") != std::string::npos);
  CHECK_FALSE(tree.add("z", nullptr).ok());
}

TEST_CASE("Tree::finalize computes nlink, parents and hardlink leaders in pre-order", "[tree]") {
  Tree tree;
  // Group 7 added in reverse pre-order: the leader must still be "a/x".
  for (const char* p : {"z", "m/y", "a/x"}) {
    auto n = make_node(0100644);
    n->hardlink_group = 7;
    n->size = 10;
    REQUIRE(tree.add(p, std::move(n)).ok());
  }
  // A group made by hand with hardlink_of.
  Node* first = *tree.add("b/first", make_node(0100644));
  auto second = make_node(0100644);
  second->hardlink_of = first;
  REQUIRE(tree.add("a/second", std::move(second)).ok());
  // Symlinks with a group id are never hardlinked.
  for (const char* p : {"s1", "s2"}) {
    auto n = make_node(0120777);
    n->symlink_target = "target";
    n->hardlink_group = 9;
    REQUIRE(tree.add(p, std::move(n)).ok());
  }
  // A lone member of a group is not a hardlink.
  auto lone = make_node(0100644);
  lone->hardlink_group = 3;
  REQUIRE(tree.add("lone", std::move(lone)).ok());
  REQUIRE(tree.add("a/sub1/deep", make_node(0040755)).ok());
  REQUIRE(tree.add("a/sub2", make_node(0040755)).ok());
  tree.finalize();

  CHECK(tree.root().nlink == 2 + 3);  // a, b, m
  CHECK(tree.find("a")->nlink == 2 + 2);
  CHECK(tree.find("a/sub1")->nlink == 3);
  CHECK(tree.find("a/sub1/deep")->nlink == 2);
  CHECK(tree.root().parent == nullptr);
  CHECK(tree.find("a/x")->parent == tree.find("a"));

  Node* x = tree.find("a/x");
  CHECK(x->hardlink_of == nullptr);
  CHECK(x->nlink == 3);
  CHECK(tree.find("m/y")->hardlink_of == x);
  CHECK(tree.find("z")->hardlink_of == x);
  CHECK(tree.find("z")->nlink == 3);

  // Pre-order: a/second comes before b/first, so it leads that group now.
  Node* a_second = tree.find("a/second");
  CHECK(a_second->hardlink_of == nullptr);
  CHECK(tree.find("b/first")->hardlink_of == a_second);
  CHECK(a_second->nlink == 2);
  // Groups renumbered in pre-order of their leaders.
  CHECK(a_second->hardlink_group == 1);
  CHECK(x->hardlink_group == 2);

  CHECK(tree.find("s1")->hardlink_of == nullptr);
  CHECK(tree.find("s2")->nlink == 1);
  CHECK(tree.find("s2")->hardlink_group == 0);
  CHECK(tree.find("s1")->size == 6);
  CHECK(tree.find("lone")->nlink == 1);
  CHECK(tree.find("lone")->hardlink_group == 0);

  // Idempotent.
  tree.finalize();
  CHECK(tree.find("z")->hardlink_of == x);
  CHECK(tree.find("b/first")->hardlink_of == a_second);

  std::vector<std::string> order;
  tree.walk([&order](const Node& n) { order.push_back(path_of(n)); });
  CHECK(order == std::vector<std::string>{"", "a", "a/second", "a/sub1", "a/sub1/deep", "a/sub2", "a/x", "b",
                                          "b/first", "lone", "m", "m/y", "s1", "s2", "z"});
}

TEST_CASE("Tree handles 100,000 names in one directory in random order", "[tree]") {
  std::vector<std::string> names;
  for (int i = 0; i < 100000; ++i) names.push_back("f" + std::to_string(i * 7919 % 100003));
  std::mt19937 rng(42);
  std::shuffle(names.begin(), names.end(), rng);
  auto t0 = std::chrono::steady_clock::now();
  Tree tree;
  for (auto& n : names) REQUIRE(tree.add("big/" + n, make_node(0100644)).ok());
  // Found before finalize (sorted prefix + tail) and replaced, not duplicated.
  for (int i = 0; i < 100000; i += 101) REQUIRE(tree.find("big/" + names[static_cast<size_t>(i)]) != nullptr);
  for (int i = 0; i < 100000; i += 997) REQUIRE(tree.add("big/" + names[static_cast<size_t>(i)], make_node(0100600)).ok());
  REQUIRE(tree.remove("big/" + names[5]));
  REQUIRE(tree.add("big/" + names[5], make_node(0100644)).ok());
  tree.finalize();
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(secs < 30);
  const auto& kids = tree.find("big")->children;
  REQUIRE(kids.size() == 100000);
  CHECK(std::is_sorted(kids.begin(), kids.end(),
                       [](const auto& a, const auto& b) { return a->name < b->name; }));
  for (int i = 0; i < 1000; ++i) CHECK(tree.find("big/" + names[static_cast<size_t>(i) * 97]) != nullptr);
}

// ---------------------------------------------------------------- whiteouts

TEST_CASE("whiteout_type follows upstream's rules", "[whiteout]") {
  using builder::WhiteoutSpec;
  using builder::WhiteoutType;
  Node n;
  n.mode = 0100644;
  n.name = ".wh.foo";
  CHECK(builder::whiteout_type(n, WhiteoutSpec::kOci) == WhiteoutType::kOciRemoval);
  CHECK(builder::whiteout_type(n, WhiteoutSpec::kOverlayfs) == WhiteoutType::kNone);
  CHECK(builder::whiteout_type(n, WhiteoutSpec::kNone) == WhiteoutType::kNone);
  n.name = ".wh..wh..opq";
  CHECK(builder::whiteout_type(n, WhiteoutSpec::kOci) == WhiteoutType::kOciOpaque);
  n.mode = 0040755;  // type does not matter for OCI
  CHECK(builder::whiteout_type(n, WhiteoutSpec::kOci) == WhiteoutType::kOciOpaque);
  n.name = ".wh.\xff";  // not UTF-8: upstream's to_str() fails
  CHECK(builder::whiteout_type(n, WhiteoutSpec::kOci) == WhiteoutType::kNone);
  n.name = "wh.foo";
  CHECK(builder::whiteout_type(n, WhiteoutSpec::kOci) == WhiteoutType::kNone);

  Node dev;
  dev.name = "gone";
  dev.mode = 0020000;
  dev.rdev = 0;
  CHECK(builder::whiteout_type(dev, WhiteoutSpec::kOverlayfs) == WhiteoutType::kOverlayfsRemoval);
  dev.rdev = builder::new_encode_dev(1, 3);
  CHECK(builder::whiteout_type(dev, WhiteoutSpec::kOverlayfs) == WhiteoutType::kNone);
  Node opq;
  opq.mode = 0040755;
  opq.xattrs = {{"trusted.overlay.opaque", "y"}};
  CHECK(builder::whiteout_type(opq, WhiteoutSpec::kOverlayfs) == WhiteoutType::kOverlayfsOpaque);
  opq.xattrs = {{"trusted.overlay.opaque", "n"}};
  CHECK(builder::whiteout_type(opq, WhiteoutSpec::kOverlayfs) == WhiteoutType::kNone);

  CHECK(*builder::parse_whiteout_spec("OCI") == WhiteoutSpec::kOci);
  CHECK(*builder::parse_whiteout_spec("overlayfs") == WhiteoutSpec::kOverlayfs);
  CHECK(*builder::parse_whiteout_spec("none") == WhiteoutSpec::kNone);
  CHECK_FALSE(builder::parse_whiteout_spec("foo").ok());
  CHECK(std::string(builder::whiteout_spec_name(WhiteoutSpec::kOverlayfs)) == "overlayfs");
}

std::unique_ptr<Tree> layer(const std::vector<std::pair<std::string, uint32_t>>& entries) {
  auto t = std::make_unique<Tree>();
  for (auto& [path, mode] : entries) {
    auto n = make_node(mode);
    n->size = path.size();  // a marker to tell versions apart
    n->uid = 1;
    REQUIRE(t->add(path, std::move(n)).ok());
  }
  t->finalize();
  return t;
}

std::set<std::string> paths(const Tree& t) {
  std::set<std::string> out;
  for (auto& [p, n] : index_tree(t)) out.insert(p);
  return out;
}

TEST_CASE("merge_layer applies OCI whiteouts like upstream merge", "[whiteout]") {
  auto lower = layer({{"a/b", 0100644},
                      {"a/c", 0100644},
                      {"d", 0100644},
                      {"e/f", 0100644},
                      {"e/sub/g", 0100644},
                      {"k/old", 0100644},
                      {"dirfile/x", 0100644},
                      {"same", 0100644},
                      {".wh.bottom", 0100644}});
  auto upper = layer({{".wh.d", 0100644},
                      {"a/.wh.b", 0100644},
                      {"a/new", 0100644},
                      {"e/.wh..wh..opq", 0100644},
                      {"e/h", 0100644},
                      {"k", 0040700},
                      {"k/.wh.nothing", 0100644},
                      {"n/.wh.x", 0100644},
                      {"n/y", 0100644},
                      {"dirfile", 0100600},
                      {".wh.same", 0100644},
                      {"same", 0100600}});
  upper->root().mode = 0040700;
  upper->root().mtime = 77;

  std::vector<std::unique_ptr<Tree>> layers;
  layers.push_back(std::move(lower));
  layers.push_back(std::move(upper));
  auto merged = builder::merge_layers(std::move(layers), builder::WhiteoutSpec::kOci);
  REQUIRE(merged.ok());
  Tree& t = **merged;
  CHECK(paths(t) == std::set<std::string>{"", ".wh.bottom", "a", "a/c", "a/new", "dirfile", "e", "e/h", "k",
                                          "k/old", "n", "n/y", "same"});
  CHECK(t.root().mode == 0040700);  // upper root attributes win
  CHECK(t.root().mtime == 77);
  CHECK(t.find("k")->mode == 0040700);
  CHECK(t.find("dirfile")->is_reg());
  CHECK(t.find("same")->mode == 0100600);  // same layer: whiteout then re-add survives
  CHECK(t.find("a")->nlink == 2);
  CHECK(t.root().nlink == 2 + 4);  // a, e, k, n
  CHECK(t.find("e/h")->parent == t.find("e"));
}

TEST_CASE("merge_layer applies overlayfs whiteouts and keeps hardlink groups per layer", "[whiteout]") {
  auto lower = std::make_unique<Tree>();
  for (const char* p : {"o/keep", "o/x", "gone", "l1", "l2"}) REQUIRE(lower->add(p, make_node(0100644)).ok());
  lower->find("l1")->hardlink_group = 1;
  lower->find("l2")->hardlink_group = 1;
  lower->finalize();

  Tree upper;
  auto opq = make_node(0040755);
  opq->xattrs = {{"trusted.overlay.opaque", "y"}, {"user.k", "v"}};
  REQUIRE(upper.add("o", std::move(opq)).ok());
  REQUIRE(upper.add("o/new", make_node(0100644)).ok());
  REQUIRE(upper.add("gone", make_node(0020000)).ok());  // char 0/0
  for (const char* p : {"u1", "u2"}) {
    auto n = make_node(0100644);
    n->hardlink_group = 1;  // same id as the lower group: must stay separate
    REQUIRE(upper.add(p, std::move(n)).ok());
  }
  REQUIRE(builder::merge_layer(*lower, std::move(upper), builder::WhiteoutSpec::kOverlayfs).ok());
  CHECK(paths(*lower) == std::set<std::string>{"", "l1", "l2", "o", "o/new", "u1", "u2"});
  CHECK(lower->find("o")->xattrs.size() == 1);
  CHECK(xattr_value(*lower->find("o"), "user.k") == "v");
  CHECK(lower->find("l1")->nlink == 2);
  CHECK(lower->find("u1")->nlink == 2);
  CHECK(lower->find("u2")->hardlink_of == lower->find("u1"));
  CHECK(lower->find("l2")->hardlink_of == lower->find("l1"));
  CHECK(lower->find("l1")->hardlink_group != lower->find("u1")->hardlink_group);
}

TEST_CASE("strip_whiteouts drops what upstream's directory builder skips", "[whiteout]") {
  auto t = layer({{".wh.a", 0100644}, {"d/.wh..wh..opq", 0100644}, {"d/keep", 0100644}, {".wh.dir/x", 0100644}});
  builder::strip_whiteouts(*t, builder::WhiteoutSpec::kOci);
  CHECK(paths(*t) == std::set<std::string>{"", "d", "d/keep"});
  CHECK(t->root().nlink == 3);
}

// ---------------------------------------------------------------- directory source

struct BuiltDir {
  TempDir tmp{"nydus-src"};
  std::string root;
  bool rooted = false;
  std::string cap;  // security.capability value written
  std::string acl;  // system.posix_acl_access value written
};

void set_times(const std::string& path, int64_t sec, long nsec) {
  struct timespec ts[2] = {{sec, nsec}, {sec, nsec}};
  REQUIRE(utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW) == 0);
}

// Builds a tree with every kind of entry the directory source handles.
void build_dir(BuiltDir& b) {
  b.root = b.tmp / "tree";
  const std::string& r = b.root;
  b.rooted = have_root("device nodes, trusted.*/security.capability xattrs and chown");
  REQUIRE(mkdir(r.c_str(), 0755) == 0);
  write_file(r + "/reg", "hello world\n");
  write_file(r + "/empty", "");
  {
    int fd = open((r + "/sparse").c_str(), O_CREAT | O_WRONLY, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(ftruncate(fd, 3 << 20) == 0);
    std::string a(4096, 'A');
    REQUIRE(pwrite(fd, a.data(), a.size(), 1 << 20) == 4096);
    close(fd);
    fd = open((r + "/hole").c_str(), O_CREAT | O_WRONLY, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(ftruncate(fd, 1 << 20) == 0);
    close(fd);
  }
  write_file(r + "/suid", "#!/bin/sh\n");
  REQUIRE(mkdir((r + "/dir").c_str(), 0755) == 0);
  REQUIRE(mkdir((r + "/dir2").c_str(), 0755) == 0);
  REQUIRE(mkdir((r + "/sticky").c_str(), 0755) == 0);
  write_file(r + "/hl0", "linked");
  REQUIRE(link((r + "/hl0").c_str(), (r + "/dir/hl1").c_str()) == 0);
  REQUIRE(link((r + "/hl0").c_str(), (r + "/dir2/hl2").c_str()) == 0);
  REQUIRE(symlink("reg", (r + "/sym").c_str()) == 0);
  REQUIRE(symlink(std::string(4095, 'x').c_str(), (r + "/sym_long").c_str()) == 0);
  REQUIRE(symlink("/nonexistent/target", (r + "/sym_dangling").c_str()) == 0);
  // A hardlinked symlink: RAFS keeps two plain symlinks.
  REQUIRE(linkat(AT_FDCWD, (r + "/sym").c_str(), AT_FDCWD, (r + "/sym_hl").c_str(), 0) == 0);
  REQUIRE(mkfifo((r + "/fifo").c_str(), 0640) == 0);
  {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(s >= 0);
    struct sockaddr_un addr {};
    addr.sun_family = AF_UNIX;
    std::string sp = r + "/sock";
    REQUIRE(sp.size() < sizeof(addr.sun_path));
    std::memcpy(addr.sun_path, sp.c_str(), sp.size() + 1);
    REQUIRE(bind(s, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) == 0);
    close(s);
  }
  write_file(r + "/" + std::string(255, 'n'), "255");
  write_file(r + "/bad\xff\xfe", "non-utf8");
  write_file(r + "/xa", "xattrs");
  REQUIRE(setxattr((r + "/xa").c_str(), "user.b", "2", 1, 0) == 0);
  REQUIRE(setxattr((r + "/xa").c_str(), "user.a", "", 0, 0) == 0);
  // A non-trivial access ACL (has a named user), so the kernel keeps it.
  const uint8_t acl[] = {2, 0, 0, 0,                                    // version
                         0x01, 0, 6, 0, 0xff, 0xff, 0xff, 0xff,        // USER_OBJ rw
                         0x02, 0, 4, 0, 0xe8, 0x03, 0, 0,              // USER 1000 r
                         0x04, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,        // GROUP_OBJ r
                         0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,        // MASK r
                         0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff};       // OTHER r
  b.acl.assign(reinterpret_cast<const char*>(acl), sizeof(acl));
  REQUIRE(setxattr((r + "/xa").c_str(), "system.posix_acl_access", acl, sizeof(acl), 0) == 0);
  write_file(r + "/.wh.gone", "");
  write_file(r + "/dir/.wh..wh..opq", "");

  if (b.rooted) {
    REQUIRE(mknod((r + "/chr").c_str(), S_IFCHR | 0620, makedev(4, 5)) == 0);
    REQUIRE(mknod((r + "/blk").c_str(), S_IFBLK | 0660, makedev(259, 300000)) == 0);
    REQUIRE(setxattr((r + "/xa").c_str(), "trusted.t", "tv", 2, 0) == 0);
    // VFS_CAP_REVISION_2, permitted CAP_NET_BIND_SERVICE.
    const uint8_t cap[] = {0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    b.cap.assign(reinterpret_cast<const char*>(cap), sizeof(cap));
    REQUIRE(setxattr((r + "/suid").c_str(), "security.capability", cap, sizeof(cap), 0) == 0);
    // trusted.* is allowed on symlinks: proves lgetxattr does not follow.
    REQUIRE(lsetxattr((r + "/sym").c_str(), "trusted.on_link", "L", 1, 0) == 0);
    REQUIRE(lchown((r + "/reg").c_str(), 1234, 5678) == 0);
    REQUIRE(lchown((r + "/sym").c_str(), 4321, 8765) == 0);
    REQUIRE(lchown((r + "/dir").c_str(), 11, 22) == 0);
  }
  // Mode bits after chown (chown clears setuid).
  REQUIRE(chmod((r + "/suid").c_str(), 04755) == 0);
  REQUIRE(chmod((r + "/dir").c_str(), 02750) == 0);
  REQUIRE(chmod((r + "/sticky").c_str(), 01777) == 0);
  // Times last, children before parents.
  int64_t t = 1600000000;
  for (const char* p : {"reg", "empty", "sparse", "hole", "suid", "hl0", "sym", "sym_long", "fifo", "xa", "dir",
                        "dir2", "sticky"}) {
    set_times(r + "/" + p, t, 123456789 + (t - 1600000000));
    ++t;
  }
}

void check_common_dir_fields(const Tree& tree, const std::string& root) {
  // Every node agrees with lstat of its file.
  tree.walk([&](const Node& n) {
    std::string rel = path_of(n);
    std::string full = rel.empty() ? root : root + "/" + rel;
    INFO("path " << rel);
    struct stat st;
    REQUIRE(lstat(full.c_str(), &st) == 0);
    CHECK(n.mode == st.st_mode);
    CHECK(n.uid == st.st_uid);
    CHECK(n.gid == st.st_gid);
    if (!rel.empty()) {
      CHECK(n.mtime == static_cast<uint64_t>(st.st_mtim.tv_sec));
      CHECK(n.mtime_nsec == static_cast<uint32_t>(st.st_mtim.tv_nsec));
    }
    if (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)) CHECK(n.size == static_cast<uint64_t>(st.st_size));
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      CHECK(n.rdev == builder::new_encode_dev(major(st.st_rdev), minor(st.st_rdev)));
    } else {
      CHECK(n.rdev == 0);
    }
    if (S_ISREG(st.st_mode)) CHECK(content_of(n) == read_file(full));
    std::vector<std::string> names;
    for (auto& x : n.xattrs) {
      names.push_back(x.name);
      char buf[4096];
      ssize_t len = lgetxattr(full.c_str(), x.name.c_str(), buf, sizeof(buf));
      REQUIRE(len >= 0);
      CHECK(x.value == std::string(buf, static_cast<size_t>(len)));
    }
    CHECK(std::is_sorted(names.begin(), names.end()));
    if (n.is_dir()) {
      CHECK(std::is_sorted(n.children.begin(), n.children.end(),
                           [](const auto& a, const auto& b) { return a->name < b->name; }));
    }
  });
}

TEST_CASE("read_directory reads every kind of entry with all its fields", "[dir_source]") {
  BuiltDir b;
  build_dir(b);
  int fds_before = count_fds();
  {
    auto res = builder::read_directory(b.root);
    INFO(res.status().message());
    REQUIRE(res.ok());
    const Tree& tree = **res;
    auto idx = index_tree(tree);
    check_common_dir_fields(tree, b.root);

    std::set<std::string> expect = {"", "reg", "empty", "sparse", "hole", "suid", "dir", "dir/hl1", "dir2",
                                    "dir2/hl2", "sticky", "hl0", "sym", "sym_long", "sym_dangling", "sym_hl",
                                    "fifo", "sock", std::string(255, 'n'), "bad\xff\xfe", "xa"};
    if (b.rooted) expect.insert({"chr", "blk"});
    std::set<std::string> got;
    for (auto& [p, n] : idx) got.insert(p);
    CHECK(got == expect);  // whiteouts stripped by default

    const Node& root = tree.root();
    CHECK(root.mtime == 0);  // upstream ignores the root's mtime
    CHECK(root.mtime_nsec == 0);
    CHECK(root.nlink == 2 + 3);  // dir, dir2, sticky

    CHECK(content_of(*idx["reg"]) == "hello world\n");
    CHECK(idx["reg"]->mtime == 1600000000);
    CHECK(idx["reg"]->mtime_nsec == 123456789);
    CHECK(idx["empty"]->size == 0);
    CHECK_FALSE(idx["empty"]->content.sparse);

    const Node& sparse = *idx["sparse"];
    CHECK(sparse.size == (3u << 20));
    CHECK(sparse.content.sparse);
    CHECK(sparse.content.data_ranges == std::vector<std::pair<uint64_t, uint64_t>>{{1 << 20, 4096}});
    std::string data = content_of(sparse);
    CHECK(data.substr(1 << 20, 4096) == std::string(4096, 'A'));
    CHECK(std::count(data.begin(), data.end(), '\0') == static_cast<long>((3 << 20) - 4096));
    CHECK(idx["hole"]->content.sparse);
    CHECK(idx["hole"]->content.data_ranges.empty());
    CHECK(idx["hole"]->size == (1u << 20));
    CHECK_FALSE(idx["reg"]->content.sparse);
    CHECK(idx["reg"]->content.data_ranges.empty());

    CHECK(idx["suid"]->mode == 0104755);
    CHECK(idx["dir"]->mode == 0042750);
    CHECK(idx["sticky"]->mode == 0041777);
    CHECK(idx["dir"]->nlink == 2);

    // Hardlinks: leader is the first in pre-order ("dir/hl1").
    const Node* hl1 = idx["dir/hl1"];
    CHECK(hl1->hardlink_of == nullptr);
    CHECK(hl1->nlink == 3);
    CHECK(idx["dir2/hl2"]->hardlink_of == hl1);
    CHECK(idx["hl0"]->hardlink_of == hl1);
    CHECK(idx["hl0"]->nlink == 3);
    CHECK(idx["hl0"]->hardlink_group == hl1->hardlink_group);
    CHECK(hl1->hardlink_group != 0);
    CHECK(idx["reg"]->hardlink_of == nullptr);
    CHECK(idx["reg"]->nlink == 1);

    CHECK(idx["sym"]->symlink_target == "reg");
    CHECK(idx["sym"]->size == 3);
    CHECK(idx["sym_long"]->symlink_target == std::string(4095, 'x'));
    CHECK(idx["sym_dangling"]->symlink_target == "/nonexistent/target");
    CHECK(idx["sym_hl"]->is_symlink());
    CHECK(idx["sym_hl"]->hardlink_of == nullptr);
    CHECK(idx["sym_hl"]->nlink == 1);
    CHECK(idx["sym"]->nlink == 1);

    CHECK((idx["fifo"]->mode & S_IFMT) == S_IFIFO);
    CHECK((idx["fifo"]->mode & 07777) == 0640);
    CHECK((idx["sock"]->mode & S_IFMT) == S_IFSOCK);
    CHECK(content_of(*idx[std::string(255, 'n')]) == "255");
    CHECK(content_of(*idx["bad\xff\xfe"]) == "non-utf8");

    const Node& xa = *idx["xa"];
    CHECK(xattr_value(xa, "user.a").empty());
    CHECK(xattr_value(xa, "user.b") == "2");
    CHECK(xattr_value(xa, "system.posix_acl_access") == b.acl);
    if (b.rooted) {
      CHECK(xa.xattrs.size() == 4);
      CHECK(xattr_value(xa, "trusted.t") == "tv");
      CHECK(xattr_value(*idx["suid"], "security.capability") == b.cap);
      CHECK(xattr_value(*idx["sym"], "trusted.on_link") == "L");
      CHECK(idx["reg"]->uid == 1234);
      CHECK(idx["reg"]->gid == 5678);
      CHECK(idx["sym"]->uid == 4321);
      CHECK(idx["dir"]->gid == 22);
      CHECK((idx["chr"]->mode & S_IFMT) == S_IFCHR);
      CHECK(idx["chr"]->rdev == ((4u << 8) | 5u));
      CHECK((idx["blk"]->mode & S_IFMT) == S_IFBLK);
      CHECK(idx["blk"]->rdev == 0x493103E0u);  // new_encode_dev(259, 300000)
      CHECK(idx["blk"]->size == 0);
    }
  }
  CHECK(count_fds() == fds_before);
}

TEST_CASE("read_directory keeps whiteouts when asked and fails clearly", "[dir_source]") {
  TempDir tmp{"nydus-src"};
  std::string r = tmp / "t";
  REQUIRE(mkdir(r.c_str(), 0755) == 0);
  write_file(r + "/.wh.gone", "");
  REQUIRE(mkdir((r + "/d").c_str(), 0755) == 0);
  write_file(r + "/d/.wh..wh..opq", "");
  builder::DirSourceOptions keep;
  keep.strip_whiteouts = false;
  auto kept = builder::read_directory(r, keep);
  REQUIRE(kept.ok());
  CHECK(paths(**kept) == std::set<std::string>{"", ".wh.gone", "d", "d/.wh..wh..opq"});
  auto stripped = builder::read_directory(r);
  REQUIRE(stripped.ok());
  CHECK(paths(**stripped) == std::set<std::string>{"", "d"});

  // The root path may be a symlink; nothing below is followed.
  REQUIRE(symlink(r.c_str(), (tmp / "link").c_str()) == 0);
  auto via_link = builder::read_directory(tmp / "link");
  REQUIRE(via_link.ok());
  CHECK(paths(**via_link) == std::set<std::string>{"", "d"});

  auto missing = builder::read_directory(tmp / "nope");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find("nope") != std::string::npos);
  write_file(tmp / "file", "x");
  auto not_dir = builder::read_directory(tmp / "file");
  REQUIRE_FALSE(not_dir.ok());
  CHECK(not_dir.status().message().find("not a directory") != std::string::npos);

  // Content is read at read time: a file that shrank is an error, not zeros.
  write_file(r + "/grow", "0123456789");
  auto tree = builder::read_directory(r);
  REQUIRE(tree.ok());
  write_file(r + "/grow", "01");
  const Node* g = (*tree)->find("grow");
  REQUIRE(g != nullptr);
  std::string buf(10, '\0');
  Status s = g->content.read(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()), buf.size()));
  CHECK_FALSE(s.ok());
  CHECK(s.message().find("grow") != std::string::npos);
}

TEST_CASE("read_directory handles a directory with 100,000 entries", "[dir_source]") {
  TempDir tmp{"nydus-src"};
  std::string r = tmp / "big";
  REQUIRE(mkdir(r.c_str(), 0755) == 0);
  for (int i = 0; i < 100000; ++i) {
    std::string p = r + "/e" + std::to_string(i);
    int fd = open(p.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    close(fd);
  }
  auto t0 = std::chrono::steady_clock::now();
  auto res = builder::read_directory(r);
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(res.ok());
  CHECK(secs < 60);
  const auto& kids = (*res)->root().children;
  REQUIRE(kids.size() == 100000);
  CHECK(std::is_sorted(kids.begin(), kids.end(), [](const auto& a, const auto& b) { return a->name < b->name; }));
  CHECK((*res)->find("e99999") != nullptr);
}

// ---------------------------------------------------------------- tar source

TEST_CASE("read_tar parses the all-entry-type fixture", "[tar_source]") {
  int fds_before = count_fds();
  {
    auto res = builder::read_tar(fixture("tar/all-entry-type.tar"));
    INFO(res.status().message());
    REQUIRE(res.ok());
    const Tree& tree = **res;
    auto idx = index_tree(tree);
    std::set<std::string> got;
    for (auto& [p, n] : idx) got.insert(p);
    CHECK(got == std::set<std::string>{"", "tar", "tar/dir1", "tar/dir1/dir3", "tar/dir1/dir3/hardlink1.txt",
                                       "tar/dir1/dir3/xfile.txt", "tar/dir1/hardlink2.txt", "tar/dir2",
                                       "tar/dir2/hardlink3.txt", "tar/dir2/symlink1.txt"});
    CHECK(tree.root().mode == 0040755);  // implicit root
    CHECK(tree.root().nlink == 3);
    const Node& t = *idx["tar"];
    CHECK(t.mode == 0040755);
    CHECK(t.mtime == 1665585322);
    CHECK(t.nlink == 4);
    CHECK(idx["tar/dir1/dir3"]->mtime == 1665597453);

    const Node* leader = idx["tar/dir1/dir3/hardlink1.txt"];
    CHECK(leader->hardlink_of == nullptr);
    CHECK(leader->nlink == 4);
    CHECK(leader->size == 15);
    CHECK(leader->mode == 0100644);
    CHECK(leader->mtime == 1665584430);
    CHECK(content_of(*leader) == "This is a test\n");
    for (const char* p : {"tar/dir1/dir3/xfile.txt", "tar/dir1/hardlink2.txt", "tar/dir2/hardlink3.txt"}) {
      INFO(p);
      CHECK(idx[p]->hardlink_of == leader);
      CHECK(idx[p]->nlink == 4);
      CHECK(idx[p]->size == 15);
      CHECK(idx[p]->mode == 0100644);
      CHECK(content_of(*idx[p]) == "This is a test\n");
    }
    const Node& sym = *idx["tar/dir2/symlink1.txt"];
    CHECK(sym.mode == 0120755);
    CHECK(sym.symlink_target == "../dir1/dir3/file1.txt");
    CHECK(sym.size == 22);
    CHECK(sym.mtime == 1665584696);
    tree.walk([](const Node& n) {
      CHECK(n.uid == 0);
      CHECK(n.gid == 0);
      CHECK(n.xattrs.empty());
    });
  }
  CHECK(count_fds() == fds_before);
}

TEST_CASE("read_tar parses the macOS fixture (pax, nanoseconds, long name, xattrs)", "[tar_source]") {
  auto res = builder::read_tar(fixture("tar/all-entry-type-macos.tar"));
  INFO(res.status().message());
  REQUIRE(res.ok());
  auto idx = index_tree(**res);
  const std::string long_name =
      "tar/dir1/dir3/this_is_really_a_very_long_name_to_test_tar_entry_type_" + std::string(196, 'a') + ".txt";
  std::set<std::string> got;
  for (auto& [p, n] : idx) got.insert(p);
  CHECK(got == std::set<std::string>{"", "tar", "tar/dir1", "tar/dir2", "tar/dir1/._hardlink2.txt",
                                     "tar/dir1/hardlink2.txt", "tar/dir1/._dir3", "tar/dir1/dir3",
                                     "tar/dir1/dir3/._xfile.txt", "tar/dir1/dir3/xfile.txt",
                                     "tar/dir1/dir3/._hardlink1.txt", "tar/dir1/dir3/hardlink1.txt", long_name,
                                     "tar/dir2/._hardlink3.txt", "tar/dir2/hardlink3.txt", "tar/dir2/._symlink1.txt",
                                     "tar/dir2/symlink1.txt"});
  CHECK(idx[long_name]->name.size() == 255);
  CHECK(idx[long_name]->size == 10);
  CHECK(idx[long_name]->mtime == 1665628806);
  CHECK(idx[long_name]->mtime_nsec == 117332458);
  // Pre-order: dir1/dir3/hardlink1.txt comes before dir1/hardlink2.txt.
  const Node* leader = idx["tar/dir1/dir3/hardlink1.txt"];
  CHECK(leader->hardlink_of == nullptr);
  CHECK(leader->nlink == 4);
  CHECK(leader->size == 15);
  CHECK(leader->mtime_nsec == 393557573);
  CHECK(idx["tar/dir1/hardlink2.txt"]->hardlink_of == leader);
  CHECK(content_of(*idx["tar/dir2/hardlink3.txt"]) == content_of(*idx["tar/dir1/hardlink2.txt"]));
  CHECK(idx["tar/dir1/dir3"]->mtime_nsec == 107725102);
  CHECK(idx["tar/dir1/._hardlink2.txt"]->size == 149);
  CHECK(idx["tar/dir1/._dir3"]->mode == 0100755);
  CHECK(idx["tar/dir2/symlink1.txt"]->symlink_target == "../dir1/dir3/file1.txt");
  CHECK(idx["tar/dir2/symlink1.txt"]->mtime_nsec == 476810967);
  (*res)->walk([](const Node& n) {
    if (!n.name.empty() && n.name != "tar" && n.mode != 0040755) {
      CHECK(n.uid == 502);
      CHECK(n.gid == 20);
    }
    // The bare "hardlink3"/"dir"/"symlink" xattrs have no RAFS namespace.
    CHECK(n.xattrs.empty());
  });
}

TEST_CASE("read_tar reads an empty (zero-byte) layer", "[tar_source]") {
  auto res = builder::read_tar(fixture("tar/empty.tar"));
  INFO(res.status().message());
  REQUIRE(res.ok());
  CHECK((*res)->root().children.empty());
  CHECK((*res)->root().is_dir());
}

// A crafted pax archive (python tarfile) covering what the fixtures do not.
const char kPaxScript[] = R"PY(
import io, sys, tarfile
out, mode, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
form = tarfile.PAX_FORMAT if fmt == 'pax' else tarfile.GNU_FORMAT
t = tarfile.open(out, mode, format=form, encoding='utf-8', errors='surrogateescape')
def add(name, type=tarfile.REGTYPE, data=b'', mode=0o644, **kw):
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.mode = mode
    ti.mtime = kw.pop('mtime', 1700000000)
    for k, v in kw.items():
        setattr(ti, k, v)
    if type == tarfile.REGTYPE:
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    else:
        t.addfile(ti)
add('./', tarfile.DIRTYPE, mode=0o700, mtime=1000)
add('a/b/c.txt', data=b'abc', uid=1000, gid=1001, uname='u', gname='g')
add('a/', tarfile.DIRTYPE, mode=0o750, uid=7)
add('long/' + 'n' * 255, data=b'long name')
add('x/' + 'y' * 200 + '/f', data=b'deep')
add('slink', tarfile.SYMTYPE, mode=0o777, linkname='t' * 300)
add('sym', tarfile.SYMTYPE, mode=0o777, linkname='a/b/c.txt')
add('hl', tarfile.LNKTYPE, linkname='a/b/c.txt', mode=0o600)
add('hlsym', tarfile.LNKTYPE, linkname='sym')
add('dev/null', tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
add('dev/big', tarfile.BLKTYPE, mode=0o660, devmajor=259, devminor=300000)
add('fifo', tarfile.FIFOTYPE, mode=0o600)
add('setid', data=b'#!', mode=0o6755)
add('.wh.gone')
add('a/.wh..wh..opq')
add('bad\udcff\udcfe', data=b'raw')
add('stargz.index.json', data=b'{}')
add('dup', data=b'1')
add('dup', data=b'22')
add('fd', data=b'file')
add('fd/', tarfile.DIRTYPE)
add('fd/in', data=b'in')
if fmt == 'pax':
    add('xa', data=b'x', pax_headers={'SCHILY.xattr.user.k': 'v', 'SCHILY.xattr.trusted.t': 'tv',
                                      'SCHILY.xattr.security.selinux': 'ctx', 'mtime': '1700000000.123456789'})
t.close()
)PY";

void check_crafted(const Tree& tree, bool pax) {
  auto idx = index_tree(tree);
  std::set<std::string> expect = {"", "a", "a/b", "a/b/c.txt", "long", "long/" + std::string(255, 'n'), "x",
                                  "x/" + std::string(200, 'y'), "x/" + std::string(200, 'y') + "/f", "slink",
                                  "sym", "hl", "hlsym", "dev", "dev/null", "dev/big", "fifo", "setid", ".wh.gone",
                                  "a/.wh..wh..opq", "bad\xff\xfe", "dup", "fd", "fd/in"};
  if (pax) expect.insert("xa");
  std::set<std::string> got;
  for (auto& [p, n] : idx) got.insert(p);
  CHECK(got == expect);

  CHECK(tree.root().mode == 0040700);
  CHECK(tree.root().mtime == 1000);
  CHECK(idx["a"]->mode == 0040750);  // set after its child was added
  CHECK(idx["a"]->uid == 7);
  CHECK(idx["a/b"]->mode == 0040755);  // implicit
  CHECK(idx["a/b"]->mtime == 0);
  const Node& c = *idx["a/b/c.txt"];
  CHECK(content_of(c) == "abc");
  CHECK(c.uid == 1000);
  CHECK(c.gid == 1001);
  CHECK(c.mtime == 1700000000);
  CHECK(c.hardlink_of == nullptr);
  CHECK(c.nlink == 2);
  const Node& hl = *idx["hl"];
  CHECK(hl.hardlink_of == &c);
  CHECK(hl.mode == 0100600);  // own header's mode bits
  CHECK(content_of(hl) == "abc");
  const Node& hlsym = *idx["hlsym"];
  CHECK(hlsym.is_symlink());
  CHECK(hlsym.symlink_target == "a/b/c.txt");
  CHECK(hlsym.hardlink_of == nullptr);
  CHECK(hlsym.nlink == 1);
  CHECK(content_of(*idx["long/" + std::string(255, 'n')]) == "long name");
  CHECK(content_of(*idx["x/" + std::string(200, 'y') + "/f"]) == "deep");
  CHECK(idx["slink"]->symlink_target == std::string(300, 't'));
  CHECK(idx["slink"]->size == 300);
  CHECK(idx["slink"]->mode == 0120777);
  CHECK(idx["dev/null"]->mode == 0020666);
  CHECK(idx["dev/null"]->rdev == 0x103u);
  CHECK(idx["dev/big"]->mode == 0060660);
  CHECK(idx["dev/big"]->rdev == 0x493103E0u);
  CHECK(idx["fifo"]->mode == 0010600);
  CHECK(idx["setid"]->mode == 0106755);
  // Whiteouts are stored as the plain entries they are.
  CHECK(idx[".wh.gone"]->mode == 0100644);
  CHECK(idx[".wh.gone"]->size == 0);
  CHECK(idx["a/.wh..wh..opq"]->is_reg());
  CHECK(content_of(*idx["bad\xff\xfe"]) == "raw");
  CHECK(content_of(*idx["dup"]) == "22");
  CHECK(idx["fd"]->is_dir());
  CHECK(content_of(*idx["fd/in"]) == "in");
  if (pax) {
    const Node& xa = *idx["xa"];
    CHECK(xa.mtime == 1700000000);
    CHECK(xa.mtime_nsec == 123456789);
    REQUIRE(xa.xattrs.size() == 3);
    CHECK(xa.xattrs[0].name == "security.selinux");
    CHECK(xa.xattrs[0].value == "ctx");
    CHECK(xa.xattrs[1].name == "trusted.t");
    CHECK(xa.xattrs[2].name == "user.k");
    CHECK(xa.xattrs[2].value == "v");
  }
}

TEST_CASE("read_tar parses python-made pax, gnu and gzip archives", "[tar_source]") {
  if (!have_tool("python3")) return;
  TempDir tmp{"nydus-src"};
  for (auto [mode, fmt, file] : {std::tuple{"w", "pax", "p.tar"}, std::tuple{"w:gz", "pax", "p.tar.gz"},
                                 std::tuple{"w", "gnu", "g.tar"}}) {
    INFO(fmt << " " << mode);
    REQUIRE(run_python(tmp, kPaxScript, "'" + (tmp / file) + "' " + mode + " " + fmt) == 0);
    auto res = builder::read_tar(tmp / file);
    INFO(res.status().message());
    REQUIRE(res.ok());
    check_crafted(**res, std::string(fmt) == "pax");
  }

  // Merging the layer over a lower one applies its whiteouts.
  auto lower = layer({{"gone", 0100644}, {"a/old", 0100644}, {"keep", 0100644}});
  auto upper = builder::read_tar(tmp / "p.tar");
  REQUIRE(upper.ok());
  REQUIRE(builder::merge_layer(*lower, std::move(**upper), builder::WhiteoutSpec::kOci).ok());
  auto idx = index_tree(*lower);
  CHECK(idx.count("gone") == 0);
  CHECK(idx.count(".wh.gone") == 0);
  CHECK(idx.count("a/old") == 0);
  CHECK(idx.count("a/.wh..wh..opq") == 0);
  CHECK(idx.count("a/b/c.txt") == 1);
  CHECK(idx.count("keep") == 1);
  CHECK(lower->find("hl")->hardlink_of == lower->find("a/b/c.txt"));
  CHECK(content_of(*lower->find("hl")) == "abc");
}

TEST_CASE("read_tar agrees with read_directory on GNU tar archives of the same tree", "[tar_source]") {
  if (!have_tool("tar")) return;
  BuiltDir b;
  build_dir(b);
  builder::DirSourceOptions keep;
  keep.strip_whiteouts = false;
  auto dir = builder::read_directory(b.root, keep);
  REQUIRE(dir.ok());
  auto dir_idx = index_tree(**dir);

  for (std::string fmt : {"pax", "gnu"}) {
    INFO("format " << fmt);
    std::string out = b.tmp / (fmt + ".tar");
    std::string cmd = "tar --format=" + fmt + " --sparse --xattrs --xattrs-include='*' -cf '" + out + "' -C '" +
                      b.root + "' . 2>/dev/null";
    int rc = std::system(cmd.c_str());
    REQUIRE((rc == 0 || WEXITSTATUS(rc) == 1));  // 1: "socket ignored"
    auto res = builder::read_tar(out);
    INFO(res.status().message());
    REQUIRE(res.ok());
    auto tar_idx = index_tree(**res);
    for (auto& [path, d] : dir_idx) {
      INFO("path " << path);
      if ((d->mode & S_IFMT) == S_IFSOCK) {
        CHECK(tar_idx.count(path) == 0);  // tar cannot hold sockets
        continue;
      }
      REQUIRE(tar_idx.count(path) == 1);
      const Node& t = *tar_idx[path];
      CHECK(t.mode == d->mode);
      CHECK(t.uid == d->uid);
      CHECK(t.gid == d->gid);
      CHECK(t.size == d->size);
      CHECK(t.rdev == d->rdev);
      CHECK(t.nlink == d->nlink);
      CHECK(t.symlink_target == d->symlink_target);
      if (!path.empty()) {
        CHECK(t.mtime == d->mtime);
        if (fmt == "pax") CHECK(t.mtime_nsec == d->mtime_nsec);
      }
      CHECK((t.hardlink_of ? path_of(*t.hardlink_of) : "") == (d->hardlink_of ? path_of(*d->hardlink_of) : ""));
      if (d->is_reg()) {
        CHECK(content_of(t) == content_of(*d));
        CHECK(t.content.sparse == d->content.sparse);
        CHECK(t.content.data_ranges == d->content.data_ranges);
      }
      if (fmt == "pax") {
        // --xattrs-include='*' stores the POSIX ACL xattrs too.
        std::vector<std::pair<std::string, std::string>> dx, tx;
        for (auto& x : d->xattrs) dx.emplace_back(x.name, x.value);
        for (auto& x : t.xattrs) tx.emplace_back(x.name, x.value);
        CHECK(tx == dx);
      }
    }
    CHECK(tar_idx.size() == dir_idx.size() - 1);  // minus the socket
  }
}

TEST_CASE("read_tar reports malformed archives with the archive and entry", "[tar_source]") {
  TempDir tmp{"nydus-src"};
  std::string fixture_bytes = read_file(fixture("tar/all-entry-type.tar"));
  REQUIRE(fixture_bytes.size() == 10240);

  SECTION("truncated inside a file's data") {
    write_file(tmp / "t1.tar", fixture_bytes.substr(0, 2100));
    auto res = builder::read_tar(tmp / "t1.tar");
    REQUIRE_FALSE(res.ok());
    const std::string& m = res.status().message();
    INFO(m);
    CHECK(m.find("t1.tar") != std::string::npos);
    CHECK(m.find("tar/dir1/dir3/hardlink1.txt") != std::string::npos);
    CHECK(m.find("runcated") != std::string::npos);
  }
  SECTION("truncated inside a header") {
    write_file(tmp / "t2.tar", fixture_bytes.substr(0, 2560 + 300));
    auto res = builder::read_tar(tmp / "t2.tar");
    REQUIRE_FALSE(res.ok());
    const std::string& m = res.status().message();
    INFO(m);
    CHECK(m.find("t2.tar") != std::string::npos);
    CHECK(m.find("after 'tar/dir1/dir3/hardlink1.txt'") != std::string::npos);
  }
  SECTION("garbage") {
    std::string junk(10000, '\0');
    std::mt19937 rng(7);
    for (auto& ch : junk) ch = static_cast<char>(rng());
    write_file(tmp / "junk.tar", junk);
    auto res = builder::read_tar(tmp / "junk.tar");
    REQUIRE_FALSE(res.ok());
    INFO(res.status().message());
    CHECK(res.status().message().find("junk.tar") != std::string::npos);
    CHECK(res.status().message().find("Unrecognized archive format") != std::string::npos);
  }
  SECTION("a short non-tar file") {
    write_file(tmp / "short", "hello");
    auto res = builder::read_tar(tmp / "short");
    REQUIRE_FALSE(res.ok());
    CHECK(res.status().message().find("short") != std::string::npos);
  }
  SECTION("missing file") {
    auto res = builder::read_tar(tmp / "absent.tar");
    REQUIRE_FALSE(res.ok());
    CHECK(res.status().message().find("absent.tar") != std::string::npos);
  }
  SECTION("truncated gzip") {
    if (!have_tool("gzip")) return;
    write_file(tmp / "z.tar", fixture_bytes);
    REQUIRE(std::system(("gzip -9 '" + (tmp / "z.tar") + "'").c_str()) == 0);
    std::string gz = read_file(tmp / "z.tar.gz");
    write_file(tmp / "z.tar.gz", gz.substr(0, gz.size() / 2));
    auto res = builder::read_tar(tmp / "z.tar.gz");
    REQUIRE_FALSE(res.ok());
    INFO(res.status().message());
    CHECK(res.status().message().find("z.tar.gz") != std::string::npos);
  }
  SECTION("bad entries") {
    if (!have_tool("python3")) return;
    const char script[] = R"PY(
import io, sys, tarfile
def one(out, name, type=tarfile.REGTYPE, linkname='', first=None):
    t = tarfile.open(out, 'w', format=tarfile.PAX_FORMAT)
    if first:
        t.addfile(tarfile.TarInfo(first), io.BytesIO(b''))
    ti = tarfile.TarInfo(name); ti.type = type; ti.linkname = linkname
    t.addfile(ti, io.BytesIO(b''))
    t.close()
one(sys.argv[1] + '/underfile.tar', 'f/g', first='f')
one(sys.argv[1] + '/dotdot.tar', 'a/../../etc/passwd')
one(sys.argv[1] + '/dangling.tar', 'hl', tarfile.LNKTYPE, 'missing')
one(sys.argv[1] + '/longname.tar', 'd/' + 'n' * 256)
)PY";
    REQUIRE(run_python(tmp, script, "'" + tmp.path() + "'") == 0);
    auto dotdot = builder::read_tar(tmp / "dotdot.tar");
    REQUIRE_FALSE(dotdot.ok());
    CHECK(dotdot.status().message().find("'..'") != std::string::npos);
    CHECK(dotdot.status().message().find("dotdot.tar") != std::string::npos);
    auto under_file = builder::read_tar(tmp / "underfile.tar");
    REQUIRE_FALSE(under_file.ok());
    CHECK(under_file.status().message().find("'f' is not a directory") != std::string::npos);
    auto dangling = builder::read_tar(tmp / "dangling.tar");
    REQUIRE_FALSE(dangling.ok());
    CHECK(dangling.status().message().find("'missing'") != std::string::npos);
    CHECK(dangling.status().message().find("entry 'hl'") != std::string::npos);
    auto longname = builder::read_tar(tmp / "longname.tar");
    REQUIRE_FALSE(longname.ok());
    CHECK(longname.status().message().find("256 bytes") != std::string::npos);
  }
}

TEST_CASE("read_tar content is readable after the archive is gone and from many threads", "[tar_source]") {
  if (!have_tool("python3")) return;
  TempDir tmp{"nydus-src"};
  const char script[] = R"PY(
import io, sys, tarfile
t = tarfile.open(sys.argv[1], 'w')
for i in range(50):
    data = bytes((i * 7 + j) % 251 for j in range(100000 + i))
    ti = tarfile.TarInfo('f%02d' % i); ti.size = len(data)
    t.addfile(ti, io.BytesIO(data))
t.close()
)PY";
  REQUIRE(run_python(tmp, script, "'" + (tmp / "m.tar") + "'") == 0);
  builder::TarSourceOptions opts;
  opts.temp_dir = tmp.path();
  auto res = builder::read_tar(tmp / "m.tar", opts);
  REQUIRE(res.ok());
  REQUIRE(unlink((tmp / "m.tar").c_str()) == 0);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = k; i < 50; i += 4) {
        char name[16];
        std::snprintf(name, sizeof(name), "f%02d", i);
        const Node* n = (*res)->find(name);
        std::vector<uint8_t> buf(1000);
        // A slice in the middle.
        if (!n || !n->content.read(5000, buf).ok()) {
          ++bad;
          continue;
        }
        for (size_t j = 0; j < buf.size(); ++j) {
          if (buf[j] != static_cast<uint8_t>((i * 7 + 5000 + j) % 251)) {
            ++bad;
            break;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(bad == 0);
  // Past the end is refused.
  std::vector<uint8_t> buf(10);
  CHECK_FALSE((*res)->find("f00")->content.read(100000 - 5, buf).ok());
}

}  // namespace
}  // namespace nydus::test
