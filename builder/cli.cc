#include "builder/cli.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bootstrap/image.h"
#include "builder/image_builder.h"
#include "builder/image_check.h"
#include "builder/temp_files.h"
#include "common/log.h"
#include "version.h"

namespace nydus::builder {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

std::string version_string() { return std::string("v0.1.0-nydus-p2p-") + NYDUS_GIT_COMMIT; }

int fail(const Status& s) {
  std::fprintf(stderr, "nydus-image: error: %s\n", s.message().c_str());
  return kExitFailure;
}

int usage(const std::string& message) {
  std::fprintf(stderr, "nydus-image: error: %s\nRun with --help for more information.\n", message.c_str());
  return kExitUsage;
}

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%" PRIu64 " B", n);
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

Status write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return Status::io("cannot open output file " + path + ": " + std::strerror(errno));
  out << text;
  out.flush();
  if (!out) return Status::io("cannot write output file " + path);
  return Status::Ok();
}

// `--prefetch-policy fs`: absolute paths on stdin, one per line, like
// upstream's get_patterns(): trimmed, relative ones skipped with a warning,
// a path under an earlier one dropped (the earlier one covers it).
std::vector<std::string> read_prefetch_patterns(std::istream& in) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  std::string line;
  while (std::getline(in, line)) {
    size_t b = line.find_first_not_of(" \t\r\n");
    size_t e = line.find_last_not_of(" \t\r\n");
    if (b == std::string::npos) continue;
    std::string p = line.substr(b, e - b + 1);
    if (p[0] != '/') {
      LOG_WARN("prefetch: illegal path %s, should be absolute", p.c_str());
      continue;
    }
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    bool covered = false;
    for (std::string q = p;;) {
      if (seen.count(q)) {
        covered = true;
        break;
      }
      if (q == "/") break;
      size_t slash = q.rfind('/');
      q = slash == 0 ? "/" : q.substr(0, slash);
    }
    if (covered) {
      LOG_WARN("prefetch: pattern %s is covered by an earlier one, omitted", p.c_str());
      continue;
    }
    seen.insert(p);
    out.push_back(p);
  }
  return out;
}

// A progress line on stderr when it is a terminal and the build has run
// for more than a second, redrawn at most five times a second.
class ProgressLine {
 public:
  ProgressLine() : tty_(::isatty(STDERR_FILENO) == 1), start_(std::chrono::steady_clock::now()) {}
  ~ProgressLine() { clear(); }

  void update(const BuildProgress& p) {
    if (!tty_) return;
    auto now = std::chrono::steady_clock::now();
    if (now - start_ < std::chrono::seconds(1) || now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const double pct = p.bytes_total ? 100.0 * static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total) : 100.0;
    std::fprintf(stderr, "\r\033[Knydus-image: files %" PRIu64 "/%" PRIu64 ", %s/%s (%.0f%%)", p.files_done,
                 p.files_total, human_bytes(p.bytes_done).c_str(), human_bytes(p.bytes_total).c_str(), pct);
    std::fflush(stderr);
    shown_ = true;
  }
  void clear() {
    if (shown_) std::fputs("\r\033[K", stderr);
    shown_ = false;
  }

 private:
  bool tty_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_{};
};

nlohmann::json build_json(const BuildResult& r, uint32_t fs_version, bootstrap::Compressor compressor,
                          bootstrap::Digester digester) {
  nlohmann::json blobs = nlohmann::json::array();
  for (const auto& b : r.blobs) blobs.push_back(json_safe(b.id));
  const BuildStats& s = r.stats;
  return {{"version", version_string()},
          {"bootstrap", json_safe(r.bootstrap_path)},
          {"blobs", std::move(blobs)},
          {"blob", json_safe(r.blob_id)},
          {"blob_path", json_safe(r.blob_path)},
          {"external_bootstrap", ""},
          {"external_blobs", nlohmann::json::array()},
          {"trace", nlohmann::json::object()},
          {"fs_version", std::to_string(fs_version)},
          {"compressor", bootstrap::compressor_name(compressor)},
          {"digester", bootstrap::digester_name(digester)},
          {"stats",
           {{"entries", s.entries},
            {"files", s.files},
            {"bytes_in", s.bytes_in},
            {"bytes_out", s.blob_size},
            {"bootstrap_size", s.bootstrap_size},
            {"chunks", s.chunks},
            {"chunks_stored", s.chunks_stored},
            {"chunks_from_parent", s.chunks_from_parent},
            {"stored_uncompressed", s.stored_uncompressed},
            {"dedup_ratio", s.dedup_ratio()},
            {"seconds", s.seconds}}}};
}

void print_build_summary(const char* what, const BuildResult& r) {
  const BuildStats& s = r.stats;
  std::printf("nydus-image: %s %s (%s)", what, r.bootstrap_path.c_str(), human_bytes(s.bootstrap_size).c_str());
  if (!r.blob_id.empty()) std::printf(", blob %s (%s)", r.blob_path.c_str(), human_bytes(s.blob_size).c_str());
  std::printf("\n");
  const double mib_s = s.seconds > 0 ? static_cast<double>(s.bytes_in) / (1 << 20) / s.seconds : 0;
  std::printf("  entries %" PRIu64 ", files %" PRIu64 ", bytes in %s, bytes out %s, chunks %" PRIu64
              " (stored %" PRIu64 ", from parent %" PRIu64 "), dedup ratio %.2f, blobs %zu, %.2f s (%.1f MiB/s)\n",
              s.entries, s.files, human_bytes(s.bytes_in).c_str(), human_bytes(s.blob_size).c_str(), s.chunks,
              s.chunks_stored, s.chunks_from_parent, s.dedup_ratio(), r.blobs.size(), s.seconds, mib_s);
}

struct Args {
  std::string log_level = "info";
  std::string log_file;
  // create
  std::string source;
  std::string type = "dir-rafs";
  std::string bootstrap;
  std::string blob_dir;
  std::string blob;
  std::string fs_version = "6";
  std::string compressor = "zstd";
  std::string digester = "blake3";
  std::string chunk_size = "0x100000";
  std::string prefetch_policy = "none";
  std::string parent_bootstrap;
  std::string whiteout_spec = "oci";
  std::string output_json;
  bool repeatable = false;
  unsigned threads = 0;
  // merge
  std::vector<std::string> sources;
  std::optional<std::string> blob_digests;  // given at all, even as ""
  // check / inspect
  std::string bootstrap_pos;
  bool verbose = false;
  std::string request;
};

Result<bootstrap::Compressor> parse_compressor(const std::string& s) {
  if (s == "none") return bootstrap::Compressor::kNone;
  if (s == "lz4_block") return bootstrap::Compressor::kLz4Block;
  if (s == "zstd") return bootstrap::Compressor::kZstd;
  return Status::invalid("unsupported compressor " + s);
}

int run_create(const Args& a) {
  CreateOptions o;
  o.source = a.source;
  auto type = parse_source_type(a.type);
  if (!type.ok()) return usage(type.status().message());
  o.type = *type;
  if (a.bootstrap.empty()) return usage("--bootstrap is required");
  if (a.blob_dir.empty() == a.blob.empty()) return usage("exactly one of --blob-dir and --blob is required");
  auto spec = parse_whiteout_spec(a.whiteout_spec);
  if (!spec.ok()) return usage(spec.status().message());
  o.whiteout_spec = *spec;
  o.parent_bootstrap = a.parent_bootstrap;
  BuildOptions& b = o.build;
  b.fs_version = a.fs_version == "5" ? 5 : 6;
  b.compressor = *parse_compressor(a.compressor);  // validated by CLI11
  b.digester = a.digester == "sha256" ? bootstrap::Digester::kSha256 : bootstrap::Digester::kBlake3;
  auto cs = parse_chunk_size(a.chunk_size);
  if (!cs.ok()) return usage(cs.status().message());
  b.chunk_size = *cs;
  b.explicit_uid_gid = !a.repeatable;
  b.bootstrap_path = a.bootstrap;
  b.blob_dir = a.blob_dir;
  b.blob_file = a.blob;
  b.threads = a.threads;
  if (a.prefetch_policy == "fs") b.prefetch_paths = read_prefetch_patterns(std::cin);
  ProgressLine progress;
  b.progress = [&progress](const BuildProgress& p) { progress.update(p); };

  auto result = create_image(o);
  progress.clear();
  if (!result.ok()) return fail(result.status());
  print_build_summary("built", *result);
  if (!a.output_json.empty()) {
    auto j = build_json(*result, b.fs_version, b.compressor, b.digester);
    if (Status s = write_text_file(a.output_json, j.dump(2) + "\n"); !s.ok()) return fail(s);
  }
  return kExitOk;
}

// `--blob-digests`: comma-separated, each trimmed, "sha256:" optional (as
// upstream's nydus-image parses it); hex is lowercased, the rest is checked
// by merge_images().
std::vector<std::string> parse_blob_digests(const std::string& csv) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = csv.find(',', start);
    std::string item = csv.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const size_t first = item.find_first_not_of(" \t");
    const size_t last = item.find_last_not_of(" \t");
    item = first == std::string::npos ? std::string() : item.substr(first, last - first + 1);
    if (item.starts_with("sha256:")) item.erase(0, 7);
    for (char& c : item) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.push_back(std::move(item));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

int run_merge(const Args& a) {
  if (a.bootstrap.empty()) return usage("--bootstrap is required");
  auto spec = parse_whiteout_spec(a.whiteout_spec);
  if (!spec.ok()) return usage(spec.status().message());
  MergeOptions o;
  o.layers = a.sources;
  o.bootstrap_path = a.bootstrap;
  o.blob_dir = a.blob_dir;
  o.whiteout_spec = *spec;
  if (a.blob_digests) o.blob_digests = parse_blob_digests(*a.blob_digests);
  if (a.prefetch_policy == "fs") o.prefetch_paths = read_prefetch_patterns(std::cin);
  auto result = merge_images(o);
  if (!result.ok()) return fail(result.status());
  std::printf("nydus-image: merged %zu layers into %s (%s): %" PRIu64 " entries, %zu blobs, %.2f s\n",
              o.layers.size(), result->bootstrap_path.c_str(), human_bytes(result->stats.bootstrap_size).c_str(),
              result->stats.entries, result->blobs.size(), result->stats.seconds);
  if (!a.output_json.empty()) {
    auto image = bootstrap::Image::open(a.bootstrap);
    if (!image.ok()) return fail(image.status());
    const auto& s = (*image)->super();
    auto j = build_json(*result, s.version, s.compressor, s.digester);
    if (Status st = write_text_file(a.output_json, j.dump(2) + "\n"); !st.ok()) return fail(st);
  }
  return kExitOk;
}

Result<std::string> bootstrap_arg(const Args& a) {
  if (!a.bootstrap.empty() && !a.bootstrap_pos.empty())
    return Status::invalid("give the bootstrap either as an argument or with --bootstrap, not both");
  if (a.bootstrap.empty() && a.bootstrap_pos.empty()) return Status::invalid("a bootstrap is required");
  return a.bootstrap.empty() ? a.bootstrap_pos : a.bootstrap;
}

int run_check(const Args& a) {
  auto boot = bootstrap_arg(a);
  if (!boot.ok()) return usage(boot.status().message());
  CheckOptions o;
  o.bootstrap = *boot;
  o.blob_dir = a.blob_dir;
  if (a.verbose) o.verbose = [](const std::string& line) { std::printf("%s\n", line.c_str()); };
  const auto start = std::chrono::steady_clock::now();
  auto report = check_image(o);
  if (!report.ok()) return fail(report.status().with_context("check " + *boot));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const ImageStats& s = report->stats;
  std::printf("nydus-image: %s is valid: RAFS v%u, %s/%s, chunk size 0x%x, %zu blob(s)\n", boot->c_str(),
              report->super.version, bootstrap::compressor_name(report->super.compressor),
              bootstrap::digester_name(report->super.digester), report->super.chunk_size, report->blobs.size());
  std::printf("  entries %" PRIu64 " (%" PRIu64 " dirs, %" PRIu64 " files, %" PRIu64 " symlinks, %" PRIu64
              " other), %s in files, %" PRIu64 " unique chunks\n",
              s.entries, s.dirs, s.files, s.symlinks,
              s.char_devices + s.block_devices + s.fifos + s.sockets, human_bytes(s.file_bytes).c_str(),
              s.unique_chunks);
  if (report->blobs_checked)
    std::printf("  blobs: %" PRIu64 " chunks (%s) verified against their digests, blob tails verified, %.2f s\n",
                report->chunks_verified, human_bytes(report->bytes_verified).c_str(), secs);
  else
    std::printf("  blobs: not checked (no --blob-dir)\n");
  if (!a.output_json.empty()) {
    if (Status st = write_text_file(a.output_json, check_report_json(*report, *boot, version_string())); !st.ok())
      return fail(st);
  }
  return kExitOk;
}

int run_inspect(const Args& a) {
  auto boot = bootstrap_arg(a);
  if (!boot.ok()) return usage(boot.status().message());
  auto image = bootstrap::Image::open(*boot);
  if (!image.ok()) return fail(image.status());
  if (!a.request.empty()) {
    auto j = inspect_json(**image, *boot, a.request);
    if (!j.ok()) return j.status().code() == Code::kInvalidInput ? usage(j.status().message()) : fail(j.status());
    std::fputs(j->c_str(), stdout);
  } else {
    auto text = inspect_text(**image);
    if (!text.ok()) return fail(text.status());
    std::printf("Bootstrap: %s\n%s", boot->c_str(), text->c_str());
  }
  if (!a.output_json.empty()) {
    auto j = inspect_json(**image, *boot, "");
    if (!j.ok()) return fail(j.status());
    if (Status st = write_text_file(a.output_json, *j); !st.ok()) return fail(st);
  }
  return kExitOk;
}

void add_logging_flags(CLI::App& app, Args* a) {
  app.add_option("-l,--log-level", a->log_level, "Log level: trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "warning", "error"}, CLI::ignore_case));
  app.add_option("-L,--log-file", a->log_file, "Append logs to this file");
}

}  // namespace

int run_nydus_image(int argc, char** argv) {
  Args a;
  CLI::App app{"Build, analyze, inspect or validate RAFS filesystems/Nydus accelerated container images",
               "nydus-image"};
  bool show_version = false;
  app.add_flag("-V,--version", show_version, "Print version information");
  add_logging_flags(app, &a);

  CLI::App* create = app.add_subcommand("create", "Create a RAFS filesystem from a directory or a tar file");
  create->fallthrough();
  create->add_option("SOURCE", a.source, "Source directory or tar file")->required();
  create->add_option("-t,--type,--source-type", a.type, "Conversion type: dir-rafs, tar-rafs, targz-rafs")
      ->check(CLI::IsMember({"directory", "dir-rafs", "tar-rafs", "targz-rafs"}));
  create->add_option("-B,--bootstrap", a.bootstrap, "File path to save the generated RAFS metadata");
  create->add_option("-D,--blob-dir", a.blob_dir, "Directory to save the data blob in, named by its id");
  create->add_option("-b,--blob", a.blob, "File path to save the generated data blob");
  create->add_option("--chunk-size", a.chunk_size, "Chunk size: power of two, 0x1000..0x1000000 (default 0x100000)");
  create->add_option("--compressor", a.compressor, "Chunk compression: none, lz4_block, zstd (default zstd)")
      ->check(CLI::IsMember({"none", "lz4_block", "zstd"}));
  create->add_option("--digester", a.digester, "Chunk digest: blake3, sha256 (default blake3)")
      ->check(CLI::IsMember({"blake3", "sha256"}));
  create->add_option("-v,--fs-version", a.fs_version, "RAFS version: 5 or 6 (default 6)")
      ->check(CLI::IsMember({"5", "6"}));
  create->add_option("--parent-bootstrap", a.parent_bootstrap, "Parent bootstrap to build the layer on");
  create->add_flag("--repeatable", a.repeatable, "Generate reproducible metadata (no uid/gid)");
  create->add_option("--whiteout-spec", a.whiteout_spec, "Whiteout specification: oci, overlayfs, none")
      ->check(CLI::IsMember({"oci", "overlayfs", "none"}, CLI::ignore_case));
  create->add_option("--prefetch-policy", a.prefetch_policy, "none, or fs: absolute paths on stdin")
      ->check(CLI::IsMember({"none", "fs"}));
  create->add_option("-J,--output-json", a.output_json, "File to write the result to, as JSON");
  create->add_option("--threads", a.threads, "Worker threads for digests and compression (default: CPUs)")
      ->check(CLI::Range(0, 64));
  add_logging_flags(*create, &a);

  CLI::App* merge = app.add_subcommand("merge", "Merge layer bootstraps (bottom to top) into one image");
  merge->fallthrough();
  merge->add_option("SOURCE", a.sources, "Layer bootstraps, bottom layer first")->required();
  merge->add_option("-B,--bootstrap", a.bootstrap, "Output bootstrap");
  merge->add_option("-D,--blob-dir", a.blob_dir, "Directory holding the blobs (each must be there)");
  merge->add_option("--whiteout-spec", a.whiteout_spec, "Whiteout specification: oci, overlayfs, none")
      ->check(CLI::IsMember({"oci", "overlayfs", "none"}, CLI::ignore_case));
  merge->add_option("--prefetch-policy", a.prefetch_policy, "none, or fs: absolute paths on stdin")
      ->check(CLI::IsMember({"none", "fs"}));
  merge->add_option("--blob-digests", a.blob_digests,
                    "Comma-separated sha256 digests ('sha256:' optional), one per SOURCE: the ids its blob gets");
  merge->add_option("-J,--output-json", a.output_json, "File to write the result to, as JSON");
  add_logging_flags(*merge, &a);

  CLI::App* check = app.add_subcommand("check", "Validate a RAFS filesystem and its blobs");
  check->fallthrough();
  check->add_option("BOOTSTRAP", a.bootstrap_pos, "Bootstrap to check");
  check->add_option("-B,--bootstrap", a.bootstrap, "Bootstrap to check");
  check->add_option("-D,--blob-dir", a.blob_dir, "Directory holding the blobs: verify every chunk");
  check->add_flag("-v,--verbose", a.verbose, "List every entry");
  check->add_option("-J,--output-json", a.output_json, "File to write the result to, as JSON");
  add_logging_flags(*check, &a);

  CLI::App* inspect = app.add_subcommand("inspect", "Show a RAFS filesystem's metadata");
  inspect->fallthrough();
  inspect->add_option("BOOTSTRAP", a.bootstrap_pos, "Bootstrap to inspect");
  inspect->add_option("-B,--bootstrap", a.bootstrap, "Bootstrap to inspect");
  std::string ignored_blob_dir;
  inspect->add_option("-D,--blob-dir", ignored_blob_dir, "Accepted for compatibility; not needed");
  inspect->add_option("-R,--request", a.request, "Print one part as JSON: stats, blobs, prefetch, tree");
  inspect->add_option("-J,--output-json", a.output_json, "File to write everything to, as JSON");
  add_logging_flags(*inspect, &a);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  if (show_version) {
    std::printf("nydus-image %s\n", version_string().c_str());
    return kExitOk;
  }
  log::Level level;
  log::parse_level(a.log_level, &level);
  log::set_level(level);
  if (!a.log_file.empty() && !log::log_to_file(a.log_file, 0))
    return fail(Status::io("cannot open log file " + a.log_file + ": " + std::strerror(errno)));

  install_temp_file_cleanup();
  try {
    if (create->parsed()) return run_create(a);
    if (merge->parsed()) return run_merge(a);
    if (check->parsed()) return run_check(a);
    if (inspect->parsed()) return run_inspect(a);
  } catch (const std::exception& e) {
    // Only allocation failures and JSON serialization can throw here.
    return fail(Status::io(std::string("unexpected: ") + e.what()));
  }
  std::fputs(app.help().c_str(), stderr);
  return kExitUsage;
}

}  // namespace nydus::builder
