#include "daemon/fuse_ops.h"

#include <linux/fuse.h>
#include <sys/xattr.h>

#include <atomic>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/uninit_bytes.h"
#include "fs/fs_metrics.h"

namespace nydus::daemon {
namespace {

using fs::Fop;

constexpr unsigned kMaxIoBytes = 1u << 20;  // max_write / max_read

FuseContext& ctx(fuse_req_t req) { return *static_cast<FuseContext*>(fuse_req_userdata(req)); }

// One op on `node`: keeps the instance that serves it alive, times it for
// that instance's metrics (no-ops without them) and marks the worker busy
// for /metrics/inflight. Declared first in each op so that it also sees the
// reply; an op that returns or throws without calling success() counts as
// an error.
class MeteredOp {
 public:
  MeteredOp(const FuseContext& c, Fop fop, uint32_t opcode, fuse_ino_t node)
      : route_(c.vfs->route(node)),
        inflight_(c.inflight, opcode, node),
        timer_(static_cast<fs::FsMetrics*>(route_.context.get()), fop,
               route_.fs && route_.context ? route_.fs->ino_of(route_.inner) : fs::kNoInode) {}

  void success(uint64_t bytes = 0) noexcept { timer_.success(bytes); }
  void success_no_release() noexcept { timer_.success_no_release(); }
  void failure() noexcept { timer_.failure(); }

 private:
  fs::Vfs::Route route_;
  InflightOps::Scope inflight_;
  fs::FopTimer timer_;
};

// Zero-message open/opendir (kernel 4.19 / 5.1): once open (opendir) answers
// ENOSYS, the kernel stops sending OPEN and RELEASE (OPENDIR, RELEASEDIR)
// and treats every file as keep_cache (every directory as cache_readdir).
// Nothing is lost: the image is immutable, node ids need no per-open state,
// the kernel only opens nodes it looked up, and the read-only mount refuses
// writable opens in the VFS. What is saved is two round trips per file
// opened: with 40k small files they cost more than reading the page cache
// (examples/bench-read.sh). A property of the kernel, so one flag per process.
// Metrics: that one ENOSYS-answered OPEN counts as an open hit (not in
// nr_opens, as no RELEASE follows); after it the kernel sends no OPEN or
// RELEASE, so fop_hits[open]/[release] and nr_opens stay put (upstream,
// which never answers ENOSYS, does not count opens at all).
std::atomic<bool> g_no_open{false};
std::atomic<bool> g_no_opendir{false};

// Runs `fn`, replying EIO (ENOMEM for bad_alloc) if it throws. `fn` itself
// must reply exactly once on every path that returns normally.
template <typename Fn>
void guarded(fuse_req_t req, const char* op, Fn&& fn) noexcept {
  try {
    fn();
  } catch (const std::bad_alloc&) {
    LOG_ERROR("ENOMEM(%s): out of memory", op);
    fuse_reply_err(req, ENOMEM);
  } catch (const std::exception& e) {
    LOG_ERROR("EIO(%s-exception): %s", op, e.what());
    fuse_reply_err(req, EIO);
  } catch (...) {
    LOG_ERROR("EIO(%s-exception): unknown exception", op);
    fuse_reply_err(req, EIO);
  }
}

fuse_entry_param make_entry(const FuseContext& c, const fs::Entry& entry, uint64_t generation) {
  fuse_entry_param e{};
  e.ino = entry.node;
  // 0 in dedicated mode (ids never change meaning while mounted); in shared
  // mode the mount's generation, so a reused index is a new inode.
  e.generation = generation;
  e.attr = entry.attr;
  e.attr_timeout = c.attr_timeout;
  e.entry_timeout = c.entry_timeout;
  return e;
}

void op_init(void* userdata, fuse_conn_info* conn) {
  (void)userdata;
  // Test `capable` before asking; log what was agreed once.
  conn->max_write = kMaxIoBytes;  // libfuse 3.14 derives max_pages from this
  conn->max_readahead = std::max<unsigned>(conn->max_readahead, kMaxIoBytes);
  conn->max_background = 128;
  conn->congestion_threshold = 96;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  // Always READDIRPLUS, not only for the first page of a directory: a walk
  // (find, ls -l) then needs no LOOKUP per entry past the first page.
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  g_no_open.store((conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) != 0);
  g_no_opendir.store((conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0);
  // Attributes never change, so there is nothing to auto-invalidate; leaving
  // it on would drop the page cache whenever a stale mtime compare fires.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  // The reply path copies from our buffers; splice measured no better
  // elsewhere (STYLE-ANCHORS pitfall 17).
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  LOG_INFO("FUSE init: proto %u.%u, max_write %u, max_readahead %u, max_background %u, congestion %u",
           conn->proto_major, conn->proto_minor, conn->max_write, conn->max_readahead,
           conn->max_background, conn->congestion_threshold);
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(req, "lookup", [&] {
    MeteredOp timer(ctx(req), Fop::kLookup, FUSE_LOOKUP, parent);
    auto entry = ctx(req).vfs->lookup(parent, name);
    if (!entry.ok()) {
      if (entry.status().code() == Code::kNotFound) {
        // Negative entry, cached like a positive one: the image is immutable.
        // A hit, as upstream counts it.
        timer.success();
        fuse_entry_param e{};
        // A pseudo directory gains names when images are mounted: its
        // negative entries must not outlive the request.
        e.entry_timeout = ctx(req).vfs->is_pseudo(parent) ? 0 : ctx(req).entry_timeout;
        fuse_reply_entry(req, &e);
        return;
      }
      fuse_reply_err(req, entry.status().to_errno());
      return;
    }
    timer.success();
    fuse_entry_param e = make_entry(ctx(req), *entry, entry->generation);
    fuse_reply_entry(req, &e);
  });
}

// Node ids are a pure function of the image: nothing to release.
void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t) {
  MeteredOp timer(ctx(req), Fop::kForget, FUSE_FORGET, ino);
  timer.success();
  fuse_reply_none(req);
}
void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  // Counted for the instance of the first node (upstream counts it for the
  // mount the request arrived on; there is one FUSE mount per instance
  // there).
  MeteredOp timer(ctx(req), Fop::kBatchForget, FUSE_BATCH_FORGET, count > 0 ? forgets[0].ino : fs::kRootNode);
  timer.success();
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  guarded(req, "getattr", [&] {
    MeteredOp timer(ctx(req), Fop::kGetattr, FUSE_GETATTR, ino);
    auto attr = ctx(req).vfs->getattr(ino);
    if (!attr.ok()) {
      fuse_reply_err(req, attr.status().to_errno());
      return;
    }
    timer.success();
    fuse_reply_attr(req, &*attr, ctx(req).attr_timeout);
  });
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  guarded(req, "readlink", [&] {
    MeteredOp timer(ctx(req), Fop::kReadlink, FUSE_READLINK, ino);
    auto target = ctx(req).vfs->readlink(ino);
    if (!target.ok()) {
      fuse_reply_err(req, target.status().code() == Code::kInvalidInput ? EINVAL : target.status().to_errno());
      return;
    }
    timer.success();
    fuse_reply_readlink(req, target->c_str());
  });
}

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(req, "opendir", [&] {
    MeteredOp timer(ctx(req), Fop::kOpendir, FUSE_OPENDIR, ino);
    auto attr = ctx(req).vfs->getattr(ino);
    if (!attr.ok()) {
      fuse_reply_err(req, attr.status().to_errno());
      return;
    }
    if (!S_ISDIR(attr->st_mode)) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
    timer.success();
    if (g_no_opendir.load(std::memory_order_relaxed)) {
      fuse_reply_err(req, ENOSYS);  // see g_no_open
      return;
    }
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
  });
}

void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  guarded(req, plus ? "readdirplus" : "readdir", [&] {
    const FuseContext& c = ctx(req);
    MeteredOp timer(c, plus ? Fop::kReaddirplus : Fop::kReaddir, plus ? FUSE_READDIRPLUS : FUSE_READDIR, ino);
    size = std::min<size_t>(size, kMaxIoBytes);
    std::vector<char> buf(size);
    size_t used = 0;
    Status s = c.vfs->readdir(ino, static_cast<uint64_t>(off), plus,
                              [&](std::string_view name, fs::NodeId node, const struct stat& attr, uint64_t next,
                                  uint64_t generation) {
                               std::string n(name);
                               size_t need;
                               if (plus) {
                                 fuse_entry_param e = make_entry(c, fs::Entry{node, attr}, generation);
                                 need = fuse_add_direntry_plus(req, buf.data() + used, size - used, n.c_str(), &e,
                                                               static_cast<off_t>(next));
                               } else {
                                 struct stat st = attr;
                                 st.st_ino = node;
                                 need = fuse_add_direntry(req, buf.data() + used, size - used, n.c_str(), &st,
                                                          static_cast<off_t>(next));
                               }
                               if (need > size - used) return false;  // full; resume at this entry
                               used += need;
                               return true;
                             });
    if (!s.ok() && used == 0) {
      fuse_reply_err(req, s.to_errno());
      return;
    }
    timer.success();
    fuse_reply_buf(req, buf.data(), used);
  });
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  do_readdir(req, ino, size, off, false);
}
void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  do_readdir(req, ino, size, off, true);
}
void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(req, "open", [&] {
    MeteredOp timer(ctx(req), Fop::kOpen, FUSE_OPEN, ino);
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
      fuse_reply_err(req, EROFS);
      return;
    }
    Status s = ctx(req).vfs->open(ino);
    if (!s.ok()) {
      fuse_reply_err(req, s.to_errno());
      return;
    }
    if (g_no_open.load(std::memory_order_relaxed)) {
      timer.success_no_release();
      fuse_reply_err(req, ENOSYS);  // see g_no_open
      return;
    }
    fi->keep_cache = 1;  // file content never changes under an inode
    timer.success();
    // -ENOENT: the open was interrupted and no RELEASE will come for it.
    if (fuse_reply_open(req, fi) == -ENOENT) timer.failure();
  });
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  guarded(req, "read", [&] {
    MeteredOp timer(ctx(req), Fop::kRead, FUSE_READ, ino);
    thread_local UninitBytes buf;  // filled by the read before it is replied
    size = std::min<size_t>(size, kMaxIoBytes);
    if (buf.size() < size) buf.resize(size);
    auto n = ctx(req).vfs->read(ino, static_cast<uint64_t>(off), {buf.data(), size});
    if (!n.ok()) {
      // Every data failure is EIO: ENOENT here would tell the caller the file
      // vanished, while the image still lists it.
      if (n.status().code() == Code::kCorrupt)
        LOG_ERROR("EIO(read-corrupt) node %lu offset %lld: %s", static_cast<unsigned long>(ino),
                  static_cast<long long>(off), n.status().message().c_str());
      else
        LOG_DEBUG("EIO(read) node %lu offset %lld: %s", static_cast<unsigned long>(ino),
                  static_cast<long long>(off), n.status().message().c_str());
      fuse_reply_err(req, EIO);
      return;
    }
    timer.success(*n);
    fuse_reply_buf(req, reinterpret_cast<const char*>(buf.data()), *n);
  });
}

void op_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  MeteredOp timer(ctx(req), Fop::kRelease, FUSE_RELEASE, ino);
  timer.success();
  fuse_reply_err(req, 0);
}

void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  guarded(req, "statfs", [&] {
    MeteredOp timer(ctx(req), Fop::kStatfs, FUSE_STATFS, ino);
    auto sv = ctx(req).vfs->statfs(ino);
    if (!sv.ok()) {
      fuse_reply_err(req, sv.status().to_errno());
      return;
    }
    timer.success();
    fuse_reply_statfs(req, &*sv);
  });
}

// Replies to getxattr/listxattr size probes and copies per the xattr(7)
// rules. False when it answered ERANGE.
bool reply_xattr_bytes(fuse_req_t req, const std::string& bytes, size_t size) {
  if (size == 0) {
    fuse_reply_xattr(req, bytes.size());
  } else if (size < bytes.size()) {
    fuse_reply_err(req, ERANGE);
    return false;
  } else {
    fuse_reply_buf(req, bytes.data(), bytes.size());
  }
  return true;
}

int xattr_errno(const Status& s) {
  // Disabled xattrs answer ENOSYS, which makes the kernel stop asking for
  // the whole mount (upstream nydusd does the same).
  return s.code() == Code::kUnsupported ? ENOSYS : s.to_errno();
}

void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  guarded(req, "getxattr", [&] {
    MeteredOp timer(ctx(req), Fop::kGetxattr, FUSE_GETXATTR, ino);
    auto value = ctx(req).vfs->getxattr(ino, name);
    if (!value.ok()) {
      // ENODATA is an answer, not a failure (upstream counts it a hit).
      if (value.status().code() == Code::kNoData) timer.success();
      fuse_reply_err(req, xattr_errno(value.status()));
      return;
    }
    timer.success();
    if (!reply_xattr_bytes(req, *value, size)) timer.failure();
  });
}

void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  guarded(req, "listxattr", [&] {
    MeteredOp timer(ctx(req), Fop::kListxattr, FUSE_LISTXATTR, ino);
    auto names = ctx(req).vfs->listxattr(ino);
    if (!names.ok()) {
      fuse_reply_err(req, xattr_errno(names.status()));
      return;
    }
    std::string packed;
    for (const auto& n : *names) {
      packed += n;
      packed.push_back('\0');
    }
    timer.success();  // even when the buffer is too small, as upstream counts it
    reply_xattr_bytes(req, packed, size);
  });
}

void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  guarded(req, "access", [&] {
    MeteredOp timer(ctx(req), Fop::kAccess, FUSE_ACCESS, ino);
    auto attr = ctx(req).vfs->getattr(ino);
    if (!attr.ok()) {
      fuse_reply_err(req, attr.status().to_errno());
      return;
    }
    // Permission bits are checked by the kernel (default_permissions); the
    // only thing to refuse here is writing to a read-only image.
    if (!(mask & W_OK)) timer.success();
    fuse_reply_err(req, (mask & W_OK) ? EROFS : 0);
  });
}

fuse_lowlevel_ops make_operations() {
  fuse_lowlevel_ops ops{};
  ops.init = op_init;
  ops.lookup = op_lookup;
  ops.forget = op_forget;
  ops.forget_multi = op_forget_multi;
  ops.getattr = op_getattr;
  ops.readlink = op_readlink;
  ops.opendir = op_opendir;
  ops.readdir = op_readdir;
  ops.readdirplus = op_readdirplus;
  ops.releasedir = op_releasedir;
  ops.open = op_open;
  ops.read = op_read;
  ops.release = op_release;
  ops.statfs = op_statfs;
  ops.getxattr = op_getxattr;
  ops.listxattr = op_listxattr;
  ops.access = op_access;
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& fuse_operations() {
  static const fuse_lowlevel_ops ops = make_operations();
  return ops;
}

}  // namespace nydus::daemon
