#include "builder/image_builder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_set>

#include "bootstrap/writer.h"
#include "builder/blob_writer.h"
#include "builder/bootstrap_loader.h"
#include "builder/dir_source.h"
#include "builder/tar_source.h"
#include "builder/temp_files.h"
#include "common/digest.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "common/text.h"

namespace nydus::builder {

namespace {

using bootstrap::BlobInfo;
using bootstrap::ChunkRef;
using bootstrap::Digest;

std::string errno_text(int err) { return std::strerror(err); }

std::string dir_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// "/a/b" of a node of a finalized tree (parent pointers set).
std::string path_of(const Node& node) {
  std::vector<const std::string*> parts;
  for (const Node* n = &node; n != nullptr && n->parent != nullptr; n = n->parent) parts.push_back(&n->name);
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) out += "/" + **it;
  return out.empty() ? "/" : out;
}

// A file written under a temporary name in its target directory and
// renamed into place by commit(); removed if never committed.
class AtomicFile {
 public:
  AtomicFile() = default;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (!tmp_.empty() && !committed_) ::unlink(tmp_.c_str());
    if (!tmp_.empty()) unregister_temp_file(tmp_);
  }

  Status write(const std::string& path, std::span<const uint8_t> bytes) {
    path_ = path;
    std::random_device rd;
    for (int attempt = 0; attempt < 100 && tmp_.empty(); ++attempt) {
      std::string tmp = dir_of(path) + "/." + base_of(path) + ".tmp-" + std::to_string(::getpid()) + "-" +
                        std::to_string(rd());
      // Registered before it exists: a signal between open() and the
      // registration would otherwise leave the file behind.
      register_temp_file(tmp);
      int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) {
        const int err = errno;
        unregister_temp_file(tmp);
        if (err == EEXIST) continue;
        return Status::io("cannot create " + tmp + ": " + errno_text(err));
      }
      fd_.reset(fd);
      tmp_ = tmp;
    }
    if (tmp_.empty()) return Status::io("cannot find a free temporary name next to " + path);
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::write(fd_.get(), bytes.data() + off, bytes.size() - off);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::io("write " + tmp_ + ": " + errno_text(errno));
      }
      off += static_cast<size_t>(n);
    }
    if (::fsync(fd_.get()) != 0) return Status::io("fsync " + tmp_ + ": " + errno_text(errno));
    fd_.reset();
    return Status::Ok();
  }

  Status commit() {
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      return Status::io("rename " + tmp_ + " to " + path_ + ": " + errno_text(errno));
    committed_ = true;
    UniqueFd dir_fd(::open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir_fd.valid()) ::fsync(dir_fd.get());
    return Status::Ok();
  }

 private:
  std::string path_;
  std::string tmp_;
  UniqueFd fd_;
  bool committed_ = false;
};

// One regular file to chunk.
struct FileJob {
  Node* node;
  uint64_t size;
  // Sorted data ranges when the file is sparse; empty = all data.
  bool sparse = false;
};

bool in_hole(const FileJob& f, uint64_t off, uint64_t len) {
  if (!f.sparse) return false;
  const auto& ranges = f.node->content.data_ranges;
  // First range starting at or after off+len; the one before it is the
  // only one that can reach into [off, off+len) (ranges are disjoint).
  auto it = std::lower_bound(ranges.begin(), ranges.end(), off + len,
                             [](const std::pair<uint64_t, uint64_t>& r, uint64_t v) { return r.first < v; });
  if (it == ranges.begin()) return true;
  --it;
  return it->first + it->second <= off;
}

// The chunking pipeline: worker threads read, digest and (for chunks not
// known yet) compress chunk jobs into a ring of slots; the calling thread
// consumes the slots strictly in job order, so the blob is the same
// whatever the thread timing.
class Chunker {
 public:
  Chunker(std::vector<FileJob> files, const BuildOptions& options, BlobWriterOptions blob_options,
          BlobWriter* blob, const ChunkDict* dict, BuildStats* stats)
      : files_(std::move(files)),
        options_(options),
        blob_options_(std::move(blob_options)),
        blob_(blob),
        dict_(dict),
        stats_(stats) {
    const uint64_t cs = options_.chunk_size;
    for (const auto& f : files_) {
      total_jobs_ += (f.size + cs - 1) / cs;
      progress_.bytes_total += f.size;
    }
    progress_.files_total = files_.size();
    unsigned threads = options_.threads ? options_.threads : std::max(1u, std::thread::hardware_concurrency());
    threads_ = std::min<unsigned>(threads, 64);
    // About 64 MiB of chunk data in flight, at least two slots per thread.
    window_ = std::clamp<uint64_t>((64ull << 20) / cs, 2ull * threads_ + 2, 1024);
    slots_.resize(window_);
    zeros_.assign(cs, 0);
  }

  Status run();

 private:
  struct Slot {
    size_t file = 0;
    uint64_t offset = 0;
    uint32_t len = 0;
    bool hole = false;
    std::vector<uint8_t> data;
    PreparedChunk prep;
    Status status;
    bool ready = false;
  };

  void worker();
  void fill(Slot& s);
  Status consume(Slot& s);
  const Digest& zero_digest(uint32_t len);

  std::vector<FileJob> files_;
  const BuildOptions& options_;
  const BlobWriterOptions blob_options_;
  BlobWriter* blob_;
  const ChunkDict* dict_;
  BuildStats* stats_;
  BuildProgress progress_;
  uint64_t total_jobs_ = 0;
  unsigned threads_ = 1;
  uint64_t window_ = 2;
  std::vector<Slot> slots_;
  std::vector<uint8_t> zeros_;

  std::mutex mu_;
  std::condition_variable space_cv_;  // workers: a slot became free
  std::condition_variable ready_cv_;  // consumer: a slot became ready
  uint64_t next_seq_ = 0;              // next job to hand out
  uint64_t consumed_ = 0;              // jobs consumed so far
  size_t cursor_file_ = 0;
  uint64_t cursor_offset_ = 0;
  bool abort_ = false;

  // Digests some worker compresses: later copies skip compression (the
  // blob writer compresses one itself in the rare case the first copy in
  // job order is a skipped one).
  std::mutex claimed_mu_;
  std::unordered_set<Digest, DigestHash> claimed_;
  std::map<uint32_t, Digest> zero_digests_;  // guarded by claimed_mu_
};

const Digest& Chunker::zero_digest(uint32_t len) {
  std::lock_guard<std::mutex> lk(claimed_mu_);
  auto it = zero_digests_.find(len);
  if (it == zero_digests_.end())
    it = zero_digests_.emplace(len, digest(options_.digester, std::span<const uint8_t>(zeros_.data(), len))).first;
  return it->second;
}

void Chunker::fill(Slot& s) {
  s.status = Status::Ok();
  s.prep = PreparedChunk{};
  const FileJob& f = files_[s.file];
  if (s.hole) {
    s.prep.digest = zero_digest(s.len);
    return;  // packed by the blob writer the first time it is stored
  }
  s.data.resize(s.len);
  Status st = f.node->content.read(s.offset, s.data);
  if (!st.ok()) {
    s.status = st.with_context("file '" + escape_bytes(path_of(*f.node)) + "'");
    return;
  }
  s.prep.digest = digest(options_.digester, s.data);
  if (dict_ != nullptr && dict_->count(s.prep.digest)) return;
  {
    std::lock_guard<std::mutex> lk(claimed_mu_);
    if (!claimed_.insert(s.prep.digest).second) return;
  }
  st = pack_chunk(blob_options_, s.data, &s.prep);
  if (!st.ok()) s.status = st.with_context("file '" + escape_bytes(path_of(*f.node)) + "'");
}

void Chunker::worker() {
  const uint64_t cs = options_.chunk_size;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    space_cv_.wait(lk, [&] { return abort_ || next_seq_ >= total_jobs_ || next_seq_ - consumed_ < window_; });
    if (abort_ || next_seq_ >= total_jobs_) return;
    const uint64_t seq = next_seq_++;
    Slot& s = slots_[seq % window_];
    s.file = cursor_file_;
    s.offset = cursor_offset_;
    const FileJob& f = files_[cursor_file_];
    s.len = static_cast<uint32_t>(std::min<uint64_t>(cs, f.size - cursor_offset_));
    s.hole = in_hole(f, s.offset, s.len);
    cursor_offset_ += cs;
    if (cursor_offset_ >= f.size) {
      ++cursor_file_;
      cursor_offset_ = 0;
    }
    lk.unlock();
    fill(s);
    lk.lock();
    s.ready = true;
    ready_cv_.notify_all();
  }
}

Status Chunker::consume(Slot& s) {
  NYDUS_TRY(s.status);
  FileJob& f = files_[s.file];
  ChunkRef ref;
  const ChunkDict::const_iterator hit = dict_ ? dict_->find(s.prep.digest) : ChunkDict::const_iterator();
  if (dict_ != nullptr && hit != dict_->end()) {
    ref = hit->second;
    ++stats_->chunks_from_parent;
  } else {
    const uint64_t stored_before = blob_->chunks_stored();
    std::span<const uint8_t> data = s.hole ? std::span<const uint8_t>(zeros_.data(), s.len)
                                           : std::span<const uint8_t>(s.data);
    auto r = blob_->add_prepared_chunk(data, std::move(s.prep));
    if (!r.ok()) return r.status().with_context("file '" + escape_bytes(path_of(*f.node)) + "'");
    ref = *r;
    if (blob_->chunks_stored() > stored_before) {
      ++stats_->chunks_stored;
      stats_->stored_uncompressed += s.len;
    }
  }
  ref.file_offset = s.offset;
  f.node->chunks.push_back(ref);
  ++stats_->chunks;
  stats_->bytes_in += s.len;
  progress_.bytes_done += s.len;
  if (s.offset + s.len >= f.size) ++progress_.files_done;
  if (options_.progress) options_.progress(progress_);
  return Status::Ok();
}

Status Chunker::run() {
  stats_->files += files_.size();
  if (total_jobs_ == 0) return Status::Ok();
  std::vector<std::thread> workers;
  workers.reserve(threads_);
  for (unsigned i = 0; i < threads_; ++i) workers.emplace_back([this] { worker(); });
  Status result;
  for (uint64_t seq = 0; seq < total_jobs_; ++seq) {
    Slot& s = slots_[seq % window_];
    {
      std::unique_lock<std::mutex> lk(mu_);
      ready_cv_.wait(lk, [&] { return s.ready; });
    }
    result = consume(s);
    std::lock_guard<std::mutex> lk(mu_);
    s.ready = false;
    consumed_ = seq + 1;
    if (!result.ok()) abort_ = true;
    space_cv_.notify_all();
    if (!result.ok()) break;
  }
  for (auto& t : workers) t.join();
  return result;
}

bootstrap::WriterOptions writer_options(const BuildOptions& o) {
  bootstrap::WriterOptions w;
  w.chunk_size = o.chunk_size;
  w.compressor = o.compressor;
  w.digester = o.digester;
  w.explicit_uid_gid = o.explicit_uid_gid;
  w.prefetch_paths = o.prefetch_paths;
  return w;
}

Result<std::vector<uint8_t>> lay_out(Tree& tree, const std::vector<BlobInfo>& blobs, const BuildOptions& o) {
  auto bytes = o.fs_version == 5 ? bootstrap::write_rafs_v5(tree, blobs, writer_options(o))
                                 : bootstrap::write_rafs_v6(tree, blobs, writer_options(o));
  if (!bytes.ok()) return bytes.status();
  // What upstream does after every build (unless --disable-check): the
  // result must read back.
  auto check = bootstrap::Image::from_bytes(*bytes, o.bootstrap_path);
  if (!check.ok()) return check.status().with_context("internal error: the new bootstrap does not read back");
  return bytes;
}

uint64_t count_nodes(const Tree& tree) {
  uint64_t n = 0;
  tree.walk([&n](const Node&) { ++n; });
  return n;
}

Status check_dir_writable(const std::string& dir, const char* what) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return Status::io(std::string(what) + " " + dir + ": " + errno_text(errno));
  if (!S_ISDIR(st.st_mode)) return Status::invalid(std::string(what) + " " + dir + " is not a directory");
  return Status::Ok();
}

Status check_build_options(const BuildOptions& o) {
  if (o.fs_version != 5 && o.fs_version != 6)
    return Status::invalid("fs version " + std::to_string(o.fs_version) + " (expected 5 or 6)");
  const uint32_t cs = o.chunk_size;
  if (cs < 4096 || cs > (16u << 20) || (cs & (cs - 1)) != 0)
    return Status::invalid("chunk size " + std::to_string(cs) + " is not a power of two in 4 KiB..16 MiB");
  if (o.bootstrap_path.empty()) return Status::invalid("no bootstrap path");
  NYDUS_TRY(check_dir_writable(dir_of(o.bootstrap_path), "bootstrap directory"));
  return Status::Ok();
}

// The compatibility upstream's RafsSuperConfig::check_compatibility wants
// between a parent/layer and the image being built.
Status check_compatible(const bootstrap::SuperInfo& s, uint32_t fs_version, uint32_t chunk_size,
                        bool explicit_uid_gid, bootstrap::Digester digester, bootstrap::Compressor compressor,
                        const std::string& what) {
  if (s.version != fs_version)
    return Status::invalid(what + " is RAFS v" + std::to_string(s.version) + ", the image is v" +
                           std::to_string(fs_version));
  if (s.chunk_size != chunk_size)
    return Status::invalid(what + " has chunk size 0x" + [&] {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%x, the image 0x%x", s.chunk_size, chunk_size);
      return std::string(buf);
    }());
  if (s.explicit_uid_gid != explicit_uid_gid)
    return Status::invalid(what + (s.explicit_uid_gid ? " stores" : " does not store") +
                           " uid/gid, the image " + (explicit_uid_gid ? "does" : "does not") +
                           " (--repeatable must match)");
  if (fs_version == 5 && s.digester != digester)
    return Status::invalid(what + " uses digester " + bootstrap::digester_name(s.digester) + ", the image " +
                           bootstrap::digester_name(digester) + " (RAFS v5 inode digests need one)");
  if (fs_version == 5 && s.compressor != compressor)
    return Status::invalid(what + " uses compressor " + bootstrap::compressor_name(s.compressor) + ", the image " +
                           bootstrap::compressor_name(compressor) + " (RAFS v5 has one compressor per image)");
  return Status::Ok();
}

}  // namespace

Result<SourceType> parse_source_type(std::string_view text) {
  if (text == "dir-rafs" || text == "directory") return SourceType::kDirectory;
  if (text == "tar-rafs") return SourceType::kTar;
  if (text == "targz-rafs") return SourceType::kTarGz;
  return Status::invalid("unsupported conversion type '" + std::string(text) +
                         "' (expected dir-rafs, tar-rafs or targz-rafs)");
}

const char* source_type_name(SourceType type) {
  switch (type) {
    case SourceType::kDirectory: return "dir-rafs";
    case SourceType::kTar: return "tar-rafs";
    case SourceType::kTarGz: return "targz-rafs";
  }
  return "dir-rafs";
}

Result<uint32_t> parse_chunk_size(std::string_view text) {
  std::string t(text);
  const bool hex = t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X');
  const std::string digits = hex ? t.substr(2) : t;
  if (digits.empty() || digits.size() > 10) return Status::invalid("invalid chunk size '" + t + "'");
  uint64_t v = 0;
  for (char c : digits) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (hex && c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (hex && c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return Status::invalid("invalid chunk size '" + t + "'");
    v = v * (hex ? 16 : 10) + static_cast<uint64_t>(d);
  }
  if (v < 0x1000 || v > 0x1000000 || (v & (v - 1)) != 0)
    return Status::invalid("invalid chunk size '" + t + "': must be a power of two between 0x1000 and 0x1000000");
  return static_cast<uint32_t>(v);
}

void add_tree_chunks(const Tree& tree, ChunkDict* dict) {
  tree.walk([dict](const Node& n) {
    for (const ChunkRef& c : n.chunks) {
      if (c.located) dict->emplace(c.digest, c);
    }
  });
}

Result<BuildResult> build_image(Tree& tree, const std::vector<BlobInfo>& base_blobs, const ChunkDict* parent_chunks,
                                const BuildOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  NYDUS_TRY(check_build_options(options));
  if (options.blob_dir.empty() == options.blob_file.empty())
    return Status::invalid("exactly one of a blob directory and a blob file is needed");
  const std::string blob_dir = options.blob_file.empty() ? options.blob_dir : dir_of(options.blob_file);
  NYDUS_TRY(check_dir_writable(blob_dir, "blob directory"));
  if (base_blobs.size() >= 255)
    return Status::invalid("the parent image has " + std::to_string(base_blobs.size()) + " blobs (at most 254)");

  tree.finalize();
  std::vector<FileJob> files;
  Status bad;
  tree.walk([&](Node& n) {
    if (!n.is_reg() || n.hardlink_of != nullptr || !n.chunks.empty() || n.size == 0) return;
    if (!n.content.read) {
      if (bad.ok()) bad = Status::invalid("file '" + escape_bytes(path_of(n)) + "' has no content to read");
      return;
    }
    FileJob f{&n, n.size};
    auto& ranges = n.content.data_ranges;
    if (n.content.sparse || !ranges.empty()) {
      std::sort(ranges.begin(), ranges.end());
      f.sparse = true;
    }
    files.push_back(f);
  });
  NYDUS_TRY(bad);

  BlobWriterOptions bo;
  bo.compressor = options.compressor;
  bo.digester = options.digester;
  bo.chunk_size = options.chunk_size;
  bo.fs_version = options.fs_version;
  bo.blob_index = static_cast<uint32_t>(base_blobs.size());
  bo.final_path = options.blob_file;
  NYDUS_ASSIGN(std::unique_ptr<BlobWriter> blob, BlobWriter::create(blob_dir, bo));

  BuildResult result;
  result.bootstrap_path = options.bootstrap_path;
  result.blobs = base_blobs;
  BuildStats& stats = result.stats;
  const bool dedup = parent_chunks != nullptr && !parent_chunks->empty();
  Chunker chunker(std::move(files), options, bo, blob.get(), dedup ? parent_chunks : nullptr, &stats);
  NYDUS_TRY(chunker.run());

  NYDUS_ASSIGN(BlobInfo info, blob->seal());
  if (!info.id.empty()) {
    result.blob_id = info.id;
    result.blob_path = options.blob_file.empty() ? options.blob_dir + "/" + info.id : options.blob_file;
    stats.blob_size = info.compressed_size;
    result.blobs.push_back(info);
  }
  for (uint32_t i = 0; i < result.blobs.size(); ++i) result.blobs[i].index = i;
  NYDUS_ASSIGN(std::vector<uint8_t> boot, lay_out(tree, result.blobs, options));

  AtomicFile boot_file;
  NYDUS_TRY(boot_file.write(options.bootstrap_path, boot).with_context("bootstrap"));
  const bool blob_existed = !result.blob_path.empty() && exists(result.blob_path);
  NYDUS_TRY(blob->commit());
  if (Status s = boot_file.commit(); !s.ok()) {
    // Leave no blob that no bootstrap refers to (one that was there
    // before is the same content, addressed by its id: keep it).
    if (!result.blob_path.empty() && !blob_existed) ::unlink(result.blob_path.c_str());
    return s.with_context("bootstrap");
  }
  stats.bootstrap_size = boot.size();
  stats.entries = count_nodes(tree);
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

Result<BuildResult> create_image(const CreateOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const BuildOptions& bo = options.build;
  NYDUS_TRY(check_build_options(bo));

  std::unique_ptr<Tree> tree;
  if (options.type == SourceType::kDirectory) {
    struct stat st;
    if (::stat(options.source.c_str(), &st) != 0)
      return Status::io("source directory " + options.source + ": " + errno_text(errno));
    if (!S_ISDIR(st.st_mode)) return Status::invalid("source " + options.source + " is not a directory");
    DirSourceOptions dso;
    dso.whiteout_spec = options.whiteout_spec;
    // A layer with a parent keeps its whiteouts for the merge below.
    dso.strip_whiteouts = options.parent_bootstrap.empty();
    NYDUS_ASSIGN(tree, read_directory(options.source, dso));
  } else {
    TarSourceOptions tso;
    tso.temp_dir = dir_of(bo.bootstrap_path);
    NYDUS_ASSIGN(tree, read_tar(options.source, tso));
  }

  std::vector<BlobInfo> base_blobs;
  ChunkDict dict;
  if (!options.parent_bootstrap.empty()) {
    NYDUS_ASSIGN(std::unique_ptr<bootstrap::Image> parent, bootstrap::Image::open(options.parent_bootstrap));
    NYDUS_TRY(check_compatible(parent->super(), bo.fs_version, bo.chunk_size, bo.explicit_uid_gid, bo.digester,
                               bo.compressor, "parent bootstrap " + options.parent_bootstrap));
    LoadOptions lo;
    lo.name = options.parent_bootstrap;
    NYDUS_ASSIGN(std::unique_ptr<Tree> lower, load_bootstrap(*parent, lo));
    base_blobs = parent->blobs();
    // Chunks of another digester cannot be matched by digest.
    if (parent->super().digester == bo.digester) add_tree_chunks(*lower, &dict);
    NYDUS_TRY(merge_layer(*lower, std::move(*tree), options.whiteout_spec).with_context("merge over the parent"));
    tree = std::move(lower);
  }
  NYDUS_ASSIGN(BuildResult result, build_image(*tree, base_blobs, &dict, bo));
  result.stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

Result<BuildResult> merge_images(const MergeOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.layers.empty()) return Status::invalid("merge: no layer bootstraps given");
  if (options.bootstrap_path.empty()) return Status::invalid("merge: no output bootstrap");
  NYDUS_TRY(check_dir_writable(dir_of(options.bootstrap_path), "bootstrap directory"));

  if (!options.blob_digests.empty() && options.blob_digests.size() != options.layers.size())
    return Status::invalid("merge: " + std::to_string(options.blob_digests.size()) +
                           " blob digests given for " + std::to_string(options.layers.size()) + " layers");
  for (const std::string& d : options.blob_digests) {
    if (d.size() != 64 || !std::all_of(d.begin(), d.end(), [](char c) {
          return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        }))
      return Status::invalid("merge: blob digest '" + d + "' is not 64 lowercase hex digits");
  }

  BuildOptions bo;
  bo.bootstrap_path = options.bootstrap_path;
  bo.prefetch_paths = options.prefetch_paths;
  std::vector<BlobInfo> blobs;
  // Index in `blobs` of each blob id the layers' tables name (before any
  // --blob-digests renaming), and the file name each entry of `blobs` has
  // in blob_dir (its original id).
  std::map<std::string, uint32_t> index_of;
  std::vector<std::string> file_names;
  std::vector<std::unique_ptr<Tree>> trees;
  for (size_t i = 0; i < options.layers.size(); ++i) {
    const std::string& path = options.layers[i];
    NYDUS_ASSIGN(std::unique_ptr<bootstrap::Image> image, bootstrap::Image::open(path));
    const bootstrap::SuperInfo& s = image->super();
    if (i == 0) {
      bo.fs_version = s.version;
      bo.chunk_size = s.chunk_size;
      bo.explicit_uid_gid = s.explicit_uid_gid;
      bo.digester = s.digester;
      bo.compressor = s.compressor;
    } else {
      NYDUS_TRY(check_compatible(s, bo.fs_version, bo.chunk_size, bo.explicit_uid_gid, bo.digester, bo.compressor,
                                 "layer " + path));
    }
    // Like upstream, the superblock takes the last layer's algorithms.
    bo.compressor = s.compressor;
    bo.digester = s.digester;
    // The layer's own blobs: those no lower layer referenced.
    std::vector<const BlobInfo*> own;
    for (const BlobInfo& b : image->blobs()) {
      if (!index_of.contains(b.id) &&
          std::none_of(own.begin(), own.end(), [&](const BlobInfo* o) { return o->id == b.id; }))
        own.push_back(&b);
    }
    std::string renamed_from;  // the own blob that takes the layer's digest
    if (!options.blob_digests.empty() && !own.empty()) {
      if (own.size() > 1)
        return Status::invalid("merge: layer " + path + " has " + std::to_string(own.size()) +
                               " data blobs of its own; --blob-digests names one per layer");
      renamed_from = own.front()->id;
    }
    LoadOptions lo;
    lo.name = path;
    for (const BlobInfo& b : image->blobs()) {
      auto known = index_of.find(b.id);
      if (known != index_of.end()) {
        lo.blob_index_map.push_back(known->second);
        continue;
      }
      BlobInfo entry = b;
      if (!renamed_from.empty() && b.id == renamed_from) entry.id = options.blob_digests[i];
      // A renamed blob whose digest is already in the table is the same
      // content: one entry serves both.
      auto same = std::find_if(blobs.begin(), blobs.end(), [&](const BlobInfo& x) { return x.id == entry.id; });
      uint32_t index;
      if (same != blobs.end()) {
        index = static_cast<uint32_t>(same - blobs.begin());
      } else {
        if (blobs.size() >= 254) return Status::invalid("merge: more than 254 blobs");
        index = static_cast<uint32_t>(blobs.size());
        entry.index = index;
        blobs.push_back(std::move(entry));
        file_names.push_back(b.id);
      }
      index_of.emplace(b.id, index);
      lo.blob_index_map.push_back(index);
    }
    NYDUS_ASSIGN(std::unique_ptr<Tree> tree, load_bootstrap(*image, lo));
    trees.push_back(std::move(tree));
  }
  if (!options.blob_dir.empty()) {
    for (const std::string& name : file_names) {
      if (!exists(options.blob_dir + "/" + name))
        return Status::not_found("merge: blob " + name + " is not in " + options.blob_dir);
    }
  }
  NYDUS_ASSIGN(std::unique_ptr<Tree> merged, merge_layers(std::move(trees), options.whiteout_spec));

  BuildResult result;
  result.bootstrap_path = options.bootstrap_path;
  result.blobs = blobs;
  NYDUS_ASSIGN(std::vector<uint8_t> boot, lay_out(*merged, blobs, bo));
  AtomicFile boot_file;
  NYDUS_TRY(boot_file.write(options.bootstrap_path, boot).with_context("bootstrap"));
  NYDUS_TRY(boot_file.commit().with_context("bootstrap"));
  result.stats.entries = count_nodes(*merged);
  result.stats.bootstrap_size = boot.size();
  result.stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace nydus::builder
