#include "fs/vfs.h"

#include <time.h>

#include <algorithm>
#include <cinttypes>
#include <map>
#include <unordered_map>

#include "common/log.h"

namespace nydus::fs {
namespace {

constexpr char kAlreadyExists[] = "object or filesystem already exists";
constexpr char kDoesNotExist[] = "object or filesystem doesn't exist";
constexpr size_t kNameMax = 255;
constexpr uint64_t kMaxGeneration = 0xffffffffu;  // the kernel keeps 32 bits (inode->i_generation)

// "/", "/a", "/a/b" -> {}, {"a"}, {"a","b"}. Repeated and trailing slashes
// are tolerated (upstream walks std::path components); ".", ".." and
// relative paths are refused rather than interpreted.
Result<std::vector<std::string>> split_path(std::string_view path) {
  if (path.empty() || path.front() != '/') return Status::invalid("vfs: mountpoint must be an absolute path: '" +
                                                                  std::string(path) + "'");
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos < path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(pos, end - pos);
    pos = end + 1;
    if (part.empty()) continue;
    if (part == "." || part == ".." || part.size() > kNameMax || part.find('\0') != std::string_view::npos)
      return Status::invalid("vfs: invalid mountpoint component '" + std::string(part) + "' in '" +
                             std::string(path) + "'");
    parts.emplace_back(part);
  }
  return parts;
}

std::string join_path(const std::vector<std::string>& parts, size_t n) {
  if (n == 0) return "/";
  std::string out;
  for (size_t i = 0; i < n; ++i) out += "/" + parts[i];
  return out;
}

struct timespec now() {
  struct timespec ts {};
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

Status not_mounted(NodeId node) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "vfs: node 0x%" PRIx64 " belongs to no mounted filesystem", node);
  return Status::not_found(buf);
}

Status too_large(const MountInfo& m, NodeId inner) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "0x%" PRIx64, inner);
  return Status::io("vfs: " + m.path + ": node id " + buf + " does not fit in 56 bits");
}

}  // namespace

struct Vfs::Mount {
  MountInfo info;
};

// A child of a pseudo directory: another pseudo directory or a mountpoint.
struct VfsChild {
  std::string name;
  NodeId dir = 0;        // pseudo directory, or 0
  MountIndex index = 0;  // mountpoint when dir == 0
};

struct Vfs::Dir {
  NodeId node = 0;
  NodeId parent = 0;
  std::string name;
  std::string path;
  struct timespec mtime {};
  // Readdir cookies: 0 ".", 1 "..", then each child's sequence number,
  // assigned once when it is added and never reused in this directory.
  // Entries only ever disappear or appear past the end, so a listing
  // resumed at any cookie neither repeats nor loops while mounts change.
  uint64_t next_seq = 2;
  std::map<uint64_t, VfsChild> children;
  std::map<std::string, uint64_t, std::less<>> seq_of;

  const VfsChild* child(std::string_view n) const {
    auto it = seq_of.find(n);
    return it == seq_of.end() ? nullptr : &children.at(it->second);
  }
  void add(VfsChild c) {
    const uint64_t seq = next_seq++;
    seq_of.emplace(c.name, seq);
    children.emplace(seq, std::move(c));
    mtime = now();
  }
  void remove(const std::string& n) {
    auto it = seq_of.find(n);
    if (it == seq_of.end()) return;
    children.erase(it->second);
    seq_of.erase(it);
    mtime = now();
  }
};

// An immutable snapshot of the tree; replaced as a whole on every change.
struct Vfs::Table {
  std::unordered_map<NodeId, Dir> dirs;  // pseudo directories, root included
  std::array<std::shared_ptr<const Mount>, 256> mounts{};
  std::shared_ptr<const Mount> root;     // instance at "/" (dedicated)

  const Dir* dir(NodeId node) const {
    auto it = dirs.find(node);
    return it == dirs.end() ? nullptr : &it->second;
  }
  bool empty() const {
    return !root && dirs.size() == 1 &&
           std::none_of(mounts.begin(), mounts.end(), [](const auto& m) { return m != nullptr; });
  }
};

// What a request node id refers to. Holding `table` keeps the instance
// alive until the request returns.
struct Vfs::Target {
  std::shared_ptr<const Table> table;
  const Mount* mount = nullptr;  // null: a pseudo directory
  NodeId inner = 0;              // the instance's own node id
  bool encoded = false;          // shared-mode instance (ids and st_ino encoded)
};

Vfs::Vfs() {
  auto t = std::make_shared<Table>();
  Dir root;
  root.node = kRootNode;
  root.parent = kRootNode;
  root.path = "/";
  root.mtime = now();
  t->dirs.emplace(kRootNode, std::move(root));
  table_.store(std::move(t));
}

Vfs::~Vfs() = default;

void Vfs::set_on_mount(ChangeHook hook) {
  std::lock_guard lock(writer_mu_);
  on_mount_ = std::move(hook);
}

void Vfs::set_on_umount(ChangeHook hook) {
  std::lock_guard lock(writer_mu_);
  on_umount_ = std::move(hook);
}

Result<MountIndex> Vfs::mount(std::string_view path, std::shared_ptr<Filesystem> fs,
                              std::shared_ptr<void> context) {
  return attach(path, std::move(fs), std::nullopt, 0, std::move(context));
}

Result<MountIndex> Vfs::mount_at(std::string_view path, std::shared_ptr<Filesystem> fs, MountIndex index,
                                 uint64_t generation, std::shared_ptr<void> context) {
  if (index == kPseudoIndex) return Status::invalid("vfs: index 0 is the pseudo filesystem's");
  if (generation > kMaxGeneration)
    return Status::invalid("vfs: generation " + std::to_string(generation) + " does not fit in 32 bits");
  return attach(path, std::move(fs), index, generation, std::move(context));
}

Result<MountIndex> Vfs::attach(std::string_view path, std::shared_ptr<Filesystem> fs,
                               std::optional<MountIndex> want_index, uint64_t want_generation,
                               std::shared_ptr<void> context) {
  if (!fs) return Status::invalid("vfs: no filesystem to mount");
  NYDUS_ASSIGN(std::vector<std::string> parts, split_path(path));

  VfsChange change;
  ChangeHook hook;
  {
    std::lock_guard lock(writer_mu_);
    std::shared_ptr<const Table> cur = table();
    if (cur->root) {
      if (parts.empty()) return Status::invalid(kAlreadyExists);
      return Status::invalid("vfs: a filesystem is mounted at /; nothing else can be mounted");
    }
    if (parts.empty() && !cur->empty())
      return Status::invalid("vfs: cannot mount at / while other filesystems are mounted");

    // Walk the existing directories; `created_from` is the first component
    // that needs a new pseudo directory (parts.size() - 1 if none does).
    const Dir* dir = cur->dir(kRootNode);
    size_t created_from = parts.empty() ? 0 : parts.size() - 1;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const VfsChild* c = dir->child(parts[i]);
      if (c == nullptr) {
        created_from = i;
        break;
      }
      if (c->dir == 0)
        return Status::invalid("vfs: " + join_path(parts, i + 1) + " is a mountpoint; cannot mount " +
                               join_path(parts, parts.size()) + " inside it");
      dir = cur->dir(c->dir);
    }
    if (!parts.empty() && created_from == parts.size() - 1) {
      if (const VfsChild* c = dir->child(parts.back())) {
        if (c->dir == 0) return Status::invalid(kAlreadyExists);
        return Status::invalid("vfs: " + join_path(parts, parts.size()) + " has filesystems mounted beneath it");
      }
    }

    // Index and generation.
    MountIndex index = 0;
    if (want_index) {
      index = *want_index;
      if (const auto& m = cur->mounts[index])
        return Status::invalid("vfs: index " + std::to_string(index) + " is in use by " + m->info.path);
    } else {
      for (int tries = 0; tries < 255 && index == 0; ++tries) {
        const MountIndex candidate = next_index_;
        next_index_ = candidate == 255 ? 1 : candidate + 1;
        if (!cur->mounts[candidate]) index = candidate;
      }
      if (index == 0) return Status::io("vfs maximum mountpoints reached");
    }
    uint64_t generation = 0;
    if (!parts.empty()) {
      if (want_generation != 0) {
        generation = want_generation;
        if (generation >= next_generation_) next_generation_ = generation == kMaxGeneration ? 1 : generation + 1;
      } else {
        generation = next_generation_;
        next_generation_ = generation == kMaxGeneration ? 1 : generation + 1;
      }
    }

    auto next = std::make_shared<Table>(*cur);
    auto m = std::make_shared<Mount>();
    m->info.path = join_path(parts, parts.size());
    m->info.index = index;
    m->info.generation = generation;
    m->info.fs = fs;
    m->info.context = std::move(context);
    if (parts.empty()) {
      m->info.root = kRootNode;
      m->info.parent = kRootNode;
      next->root = m;
      change.entry_parent = kRootNode;
    } else {
      Dir* d = &next->dirs.at(dir->node);
      for (size_t i = created_from; i + 1 < parts.size(); ++i) {
        const std::string dir_path = join_path(parts, i + 1);
        NodeId id = 0;
        auto reserved = std::find_if(reserved_dirs_.begin(), reserved_dirs_.end(),
                                     [&](const auto& r) { return r.first == dir_path; });
        if (reserved != reserved_dirs_.end()) {
          id = reserved->second;
          reserved_dirs_.erase(reserved);
        } else {
          if (next_pseudo_node_ > kInnerNodeMask) return Status::io("vfs: pseudo directory ids exhausted");
          id = next_pseudo_node_++;
        }
        Dir nd;
        nd.node = id;
        nd.parent = d->node;
        nd.name = parts[i];
        nd.path = dir_path;
        nd.mtime = now();
        d->add(VfsChild{parts[i], id, 0});
        if (i == created_from) {
          change.entry_parent = d->node;
          change.entry_name = parts[i];
        }
        d = &next->dirs.emplace(id, std::move(nd)).first->second;
      }
      d->add(VfsChild{parts.back(), 0, index});
      if (created_from == parts.size() - 1) {
        change.entry_parent = d->node;
        change.entry_name = parts.back();
      }
      m->info.root = encode_node(index, kRootNode);
      m->info.parent = d->node;
      m->info.name = parts.back();
    }
    next->mounts[index] = m;
    change.mount = m->info;

    table_.store(std::move(next), std::memory_order_release);
    if (parts.empty()) {
      pinned_.push_back(m);
      passthrough_.store(m.get(), std::memory_order_release);
    }
    hook = on_mount_;
  }
  LOG_INFO("vfs: mounted %s at index %u generation %" PRIu64, change.mount.path.c_str(),
           unsigned{change.mount.index}, change.mount.generation);
  if (hook) hook(change);
  return change.mount.index;
}

Status Vfs::umount(std::string_view path) {
  NYDUS_ASSIGN(std::vector<std::string> parts, split_path(path));
  VfsChange change;
  ChangeHook hook;
  {
    std::lock_guard lock(writer_mu_);
    std::shared_ptr<const Table> cur = table();
    auto next = std::make_shared<Table>(*cur);
    if (parts.empty()) {
      if (!cur->root) return Status::not_found(kDoesNotExist);
      // Requests that already loaded the pointer keep using the instance:
      // it stays in pinned_ (see vfs.h).
      passthrough_.store(nullptr, std::memory_order_release);
      change.mount = cur->root->info;
      change.entry_parent = kRootNode;
      next->mounts[cur->root->info.index] = nullptr;
      next->root = nullptr;
    } else {
      const Dir* dir = cur->dir(kRootNode);
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        const VfsChild* c = dir->child(parts[i]);
        if (c == nullptr || c->dir == 0) return Status::not_found(kDoesNotExist);
        dir = cur->dir(c->dir);
      }
      const VfsChild* c = dir->child(parts.back());
      if (c == nullptr || c->dir != 0) return Status::not_found(kDoesNotExist);
      change.mount = cur->mounts[c->index]->info;
      next->mounts[c->index] = nullptr;

      // Remove the mountpoint, then every pseudo directory left empty.
      Dir* d = &next->dirs.at(dir->node);
      d->remove(parts.back());
      change.entry_parent = d->node;
      change.entry_name = parts.back();
      while (d->node != kRootNode && d->children.empty()) {
        Dir* parent = &next->dirs.at(d->parent);
        parent->remove(d->name);
        change.entry_parent = parent->node;
        change.entry_name = d->name;
        next->dirs.erase(d->node);
        d = parent;
      }
    }
    table_.store(std::move(next), std::memory_order_release);
    hook = on_umount_;
  }
  LOG_INFO("vfs: umounted %s (index %u)", change.mount.path.c_str(), unsigned{change.mount.index});
  if (hook) hook(change);
  return Status::Ok();
}

std::optional<MountInfo> Vfs::find(std::string_view path) const {
  auto parts = split_path(path);
  if (!parts.ok()) return std::nullopt;
  std::shared_ptr<const Table> t = table();
  if (parts->empty()) return t->root ? std::optional<MountInfo>(t->root->info) : std::nullopt;
  const Dir* dir = t->dir(kRootNode);
  for (size_t i = 0; i + 1 < parts->size(); ++i) {
    const VfsChild* c = dir->child((*parts)[i]);
    if (c == nullptr || c->dir == 0) return std::nullopt;
    dir = t->dir(c->dir);
  }
  const VfsChild* c = dir->child(parts->back());
  if (c == nullptr || c->dir != 0) return std::nullopt;
  return t->mounts[c->index]->info;
}

std::vector<MountInfo> Vfs::instances() const {
  std::shared_ptr<const Table> t = table();
  std::vector<MountInfo> out;
  for (const auto& m : t->mounts)
    if (m) out.push_back(m->info);
  std::sort(out.begin(), out.end(), [](const MountInfo& a, const MountInfo& b) { return a.path < b.path; });
  return out;
}

VfsState Vfs::export_state() const {
  std::lock_guard lock(writer_mu_);
  std::shared_ptr<const Table> t = table();
  VfsState s;
  s.next_index = next_index_;
  s.next_generation = next_generation_;
  s.next_pseudo_node = next_pseudo_node_;
  for (const auto& [node, d] : t->dirs)
    if (node != kRootNode) s.pseudo_dirs.emplace_back(d.path, node);
  // Ids reserved by an import whose mount has not been restored yet stay
  // reserved across a second failover.
  for (const auto& r : reserved_dirs_) s.pseudo_dirs.push_back(r);
  std::sort(s.pseudo_dirs.begin(), s.pseudo_dirs.end());
  return s;
}

Status Vfs::import_state(const VfsState& state) {
  std::lock_guard lock(writer_mu_);
  if (!table()->empty()) return Status::invalid("vfs: state can only be imported into an empty vfs");
  if (state.next_index == kPseudoIndex) return Status::invalid("vfs state: next_index 0");
  if (state.next_generation == 0 || state.next_generation > kMaxGeneration)
    return Status::invalid("vfs state: next_generation out of range");
  if (state.next_pseudo_node < 2 || state.next_pseudo_node > kInnerNodeMask + 1)
    return Status::invalid("vfs state: next_pseudo_node out of range");
  for (const auto& [path, node] : state.pseudo_dirs) {
    auto parts = split_path(path);
    if (!parts.ok() || parts->empty()) return Status::invalid("vfs state: bad pseudo directory path '" + path + "'");
    if (node <= kRootNode || node >= state.next_pseudo_node)
      return Status::invalid("vfs state: pseudo directory " + path + " has an out-of-range id");
  }
  next_index_ = state.next_index;
  next_generation_ = state.next_generation;
  next_pseudo_node_ = state.next_pseudo_node;
  reserved_dirs_ = state.pseudo_dirs;
  return Status::Ok();
}

// --- requests -----------------------------------------------------------

const Filesystem* Vfs::passthrough_fs() const {
  const Mount* m = passthrough_.load(std::memory_order_acquire);
  return m ? m->info.fs.get() : nullptr;
}

Vfs::Route Vfs::route(NodeId node) const {
  Route r;
  if (const Mount* m = passthrough_.load(std::memory_order_acquire)) {
    // Non-owning aliases: the mount is pinned for the Vfs's life.
    r.fs = std::shared_ptr<Filesystem>(std::shared_ptr<Filesystem>(), m->info.fs.get());
    r.context = std::shared_ptr<void>(std::shared_ptr<void>(), m->info.context.get());
    r.inner = node;
    r.index = m->info.index;
    return r;
  }
  auto t = resolve(node);
  if (!t.ok() || t->mount == nullptr) return r;
  r.fs = t->mount->info.fs;
  r.context = t->mount->info.context;
  r.inner = t->inner;
  r.index = t->mount->info.index;
  return r;
}

Result<Vfs::Target> Vfs::resolve(NodeId node) const {
  Target t;
  t.table = table();
  if (t.table->root) {  // "/" being attached or detached right now
    t.mount = t.table->root.get();
    t.inner = node;
    return t;
  }
  const MountIndex index = index_of(node);
  if (index == kPseudoIndex) {
    t.inner = node;
    return t;
  }
  t.mount = t.table->mounts[index].get();
  if (t.mount == nullptr) return not_mounted(node);
  t.inner = inner_of(node);
  t.encoded = true;
  return t;
}

Result<struct stat> Vfs::pseudo_attr(const Table& t, NodeId node) const {
  const Dir* d = t.dir(node);
  if (d == nullptr) return not_mounted(node);
  struct stat st {};
  st.st_ino = node;
  st.st_mode = S_IFDIR | 0755;
  st.st_nlink = 2 + d->children.size();  // every child is a directory (mount roots are)
  st.st_blksize = 4096;
  st.st_mtim = d->mtime;
  st.st_ctim = d->mtime;
  st.st_atim = d->mtime;
  return st;
}

Result<VfsEntry> Vfs::mount_root_entry(const Mount& m) const {
  NYDUS_ASSIGN(struct stat st, m.info.fs->getattr(kRootNode));
  st.st_ino = m.info.root;
  VfsEntry e;
  e.node = m.info.root;
  e.attr = st;
  e.generation = m.info.generation;
  return e;
}

Result<struct stat> Vfs::getattr(NodeId node) const {
  if (const Filesystem* p = passthrough_fs()) return p->getattr(node);
  NYDUS_ASSIGN(Target t, resolve(node));
  if (t.mount == nullptr) return pseudo_attr(*t.table, node);
  auto st = t.mount->info.fs->getattr(t.inner);
  if (st.ok() && t.encoded) st->st_ino = node;
  return st;
}

Result<VfsEntry> Vfs::lookup(NodeId parent, std::string_view name) const {
  if (const Filesystem* p = passthrough_fs()) {
    NYDUS_ASSIGN(Entry e, p->lookup(parent, name));
    VfsEntry out;
    static_cast<Entry&>(out) = e;
    return out;
  }
  NYDUS_ASSIGN(Target t, resolve(parent));
  if (t.mount == nullptr) {
    const Dir* d = t.table->dir(parent);
    if (d == nullptr) return not_mounted(parent);
    NodeId target = 0;
    if (name == ".") {
      target = d->node;
    } else if (name == "..") {
      target = d->parent;
    } else {
      const VfsChild* c = d->child(name);
      if (c == nullptr) return Status::not_found("vfs: no " + std::string(name) + " in " + d->path);
      if (c->dir == 0) return mount_root_entry(*t.table->mounts[c->index]);
      target = c->dir;
    }
    NYDUS_ASSIGN(struct stat st, pseudo_attr(*t.table, target));
    VfsEntry e;
    e.node = target;
    e.attr = st;
    return e;
  }

  const MountInfo& m = t.mount->info;
  if (!t.encoded) {
    NYDUS_ASSIGN(Entry e, m.fs->lookup(t.inner, name));
    VfsEntry out;
    static_cast<Entry&>(out) = e;
    return out;
  }
  if (t.inner == kRootNode && name == "..") {
    NYDUS_ASSIGN(struct stat st, pseudo_attr(*t.table, m.parent));
    VfsEntry e;
    e.node = m.parent;
    e.attr = st;
    return e;
  }
  NYDUS_ASSIGN(Entry e, m.fs->lookup(t.inner, name));
  if (e.node > kInnerNodeMask) return too_large(m, e.node);
  VfsEntry out;
  out.node = encode_node(m.index, e.node);
  out.attr = e.attr;
  out.attr.st_ino = out.node;
  out.generation = m.generation;
  return out;
}

Result<std::string> Vfs::readlink(NodeId node) const {
  if (const Filesystem* p = passthrough_fs()) return p->readlink(node);
  NYDUS_ASSIGN(Target t, resolve(node));
  if (t.mount == nullptr) {
    if (t.table->dir(node) == nullptr) return not_mounted(node);
    return Status::invalid("not a symlink");
  }
  return t.mount->info.fs->readlink(t.inner);
}

Status Vfs::readdir(NodeId dir, uint64_t cookie, bool full_attr, const DirFiller& fn) const {
  if (const Filesystem* p = passthrough_fs()) {
    return p->readdir(dir, cookie, full_attr, [&](std::string_view name, NodeId node, const struct stat& st,
                                                  uint64_t next) { return fn(name, node, st, next, 0); });
  }
  NYDUS_ASSIGN(Target t, resolve(dir));
  const Table& table = *t.table;

  // A pseudo directory, or an instance directory's ".." that leads out of
  // the instance: attributes of pseudo directory `node`.
  auto pseudo_stat = [&](NodeId node) -> Result<struct stat> {
    if (full_attr) return pseudo_attr(table, node);
    struct stat st {};
    st.st_ino = node;
    st.st_mode = S_IFDIR;
    return st;
  };

  if (t.mount == nullptr) {
    const Dir* d = table.dir(dir);
    if (d == nullptr) return not_mounted(dir);
    if (cookie == 0) {
      NYDUS_ASSIGN(struct stat st, pseudo_stat(d->node));
      if (!fn(".", d->node, st, 1, 0)) return Status::Ok();
    }
    if (cookie <= 1) {
      NYDUS_ASSIGN(struct stat st, pseudo_stat(d->parent));
      if (!fn("..", d->parent, st, 2, 0)) return Status::Ok();
    }
    for (auto it = d->children.lower_bound(std::max<uint64_t>(cookie, 2)); it != d->children.end(); ++it) {
      const VfsChild& c = it->second;
      const uint64_t next = it->first + 1;
      bool more = true;
      if (c.dir != 0) {
        NYDUS_ASSIGN(struct stat st, pseudo_stat(c.dir));
        more = fn(c.name, c.dir, st, next, 0);
      } else {
        const Mount& m = *table.mounts[c.index];
        struct stat st {};
        if (full_attr) {
          NYDUS_ASSIGN(st, m.info.fs->getattr(kRootNode));
        } else {
          st.st_mode = S_IFDIR;
        }
        st.st_ino = m.info.root;
        more = fn(c.name, m.info.root, st, next, m.info.generation);
      }
      if (!more) break;
    }
    return Status::Ok();
  }

  const MountInfo& m = t.mount->info;
  if (!t.encoded) {
    return m.fs->readdir(t.inner, cookie, full_attr, [&](std::string_view name, NodeId node, const struct stat& st,
                                                         uint64_t next) { return fn(name, node, st, next, 0); });
  }
  Status inner;
  Status s = m.fs->readdir(t.inner, cookie, full_attr,
                           [&](std::string_view name, NodeId node, const struct stat& st, uint64_t next) {
                             if (t.inner == kRootNode && name == "..") {
                               auto up = pseudo_stat(m.parent);
                               if (!up.ok()) {
                                 inner = up.status();
                                 return false;
                               }
                               return fn(name, m.parent, *up, next, 0);
                             }
                             if (node > kInnerNodeMask) {
                               inner = too_large(m, node);
                               return false;
                             }
                             struct stat out = st;
                             out.st_ino = encode_node(m.index, node);
                             return fn(name, out.st_ino, out, next, m.generation);
                           });
  return s.ok() ? inner : s;
}

Status Vfs::open(NodeId node) const {
  if (const Filesystem* p = passthrough_fs()) return p->open(node);
  NYDUS_ASSIGN(Target t, resolve(node));
  if (t.mount == nullptr) {
    if (t.table->dir(node) == nullptr) return not_mounted(node);
    return Status(Code::kIsDir, "is a directory");
  }
  return t.mount->info.fs->open(t.inner);
}

Result<size_t> Vfs::read(NodeId node, uint64_t offset, std::span<uint8_t> dst) const {
  if (const Filesystem* p = passthrough_fs()) return p->read(node, offset, dst);
  NYDUS_ASSIGN(Target t, resolve(node));
  if (t.mount == nullptr) {
    if (t.table->dir(node) == nullptr) return not_mounted(node);
    return Status(Code::kIsDir, "is a directory");
  }
  // A read may wait on the network for long: hold only this instance, not
  // the whole table (which would keep instances unmounted meanwhile alive).
  std::shared_ptr<Filesystem> fs = t.mount->info.fs;
  t.table.reset();
  return fs->read(t.inner, offset, dst);
}

Result<std::string> Vfs::getxattr(NodeId node, std::string_view name) const {
  if (const Filesystem* p = passthrough_fs()) return p->getxattr(node, name);
  NYDUS_ASSIGN(Target t, resolve(node));
  if (t.mount == nullptr) {
    if (t.table->dir(node) == nullptr) return not_mounted(node);
    return Status(Code::kNoData, "no such xattr");
  }
  auto value = t.mount->info.fs->getxattr(t.inner, name);
  // One instance's disabled xattrs must not switch them off for the whole
  // connection (the adapter answers kUnsupported with ENOSYS, which the
  // kernel remembers per FUSE mount): it just has none.
  if (!value.ok() && value.status().code() == Code::kUnsupported) return Status(Code::kNoData, "no such xattr");
  return value;
}

Result<std::vector<std::string>> Vfs::listxattr(NodeId node) const {
  if (const Filesystem* p = passthrough_fs()) return p->listxattr(node);
  NYDUS_ASSIGN(Target t, resolve(node));
  if (t.mount == nullptr) {
    if (t.table->dir(node) == nullptr) return not_mounted(node);
    return std::vector<std::string>{};
  }
  auto names = t.mount->info.fs->listxattr(t.inner);
  if (!names.ok() && names.status().code() == Code::kUnsupported) return std::vector<std::string>{};  // see getxattr
  return names;
}

Result<struct statvfs> Vfs::statfs(NodeId node) const {
  if (const Filesystem* p = passthrough_fs()) return p->statfs();
  NYDUS_ASSIGN(Target t, resolve(node));
  if (t.mount == nullptr) {
    if (t.table->dir(node) == nullptr) return not_mounted(node);
    struct statvfs sv {};
    sv.f_bsize = 4096;
    sv.f_frsize = 4096;
    sv.f_namemax = kNameMax;
    sv.f_flag = ST_RDONLY;
    return sv;
  }
  return t.mount->info.fs->statfs();
}

}  // namespace nydus::fs
