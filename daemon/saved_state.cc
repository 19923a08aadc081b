#include "daemon/saved_state.h"

#include <cstring>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

namespace nydus::daemon {
namespace {

using json = nlohmann::json;

constexpr std::string_view kFormat = "nydus-p2p-daemon-state";
constexpr size_t kMaxDepth = 8;  // the format nests 4 deep
constexpr size_t kMaxPrefetchFiles = 1u << 20;
constexpr size_t kMaxPseudoDirs = 1u << 16;
constexpr uint64_t kMaxNodeId = (uint64_t{1} << 56) - 1;  // fs::Vfs inner node ids

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  if (size_t rest = in.size() - i; rest > 0) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (rest == 2) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += rest == 2 ? kB64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

bool base64_decode(std::string_view in, std::string* out) {
  if (in.size() % 4 != 0) return false;
  out->clear();
  out->reserve(in.size() / 4 * 3);
  auto value = [](char c) -> int {
    const char* p = std::strchr(kB64, c);
    return (c != '\0' && p) ? static_cast<int>(p - kB64) : -1;
  };
  for (size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    int a = value(in[i]), b = value(in[i + 1]);
    if (a < 0 || b < 0) return false;
    int pad = 0;
    if (last && in[i + 3] == '=') pad = in[i + 2] == '=' ? 2 : 1;
    int c = pad >= 2 ? 0 : value(in[i + 2]);
    int d = pad >= 1 ? 0 : value(in[i + 3]);
    if (c < 0 || d < 0) return false;
    uint32_t v = (uint32_t(a) << 18) | (uint32_t(b) << 12) | (uint32_t(c) << 6) | uint32_t(d);
    out->push_back(static_cast<char>(v >> 16));
    if (pad < 2) out->push_back(static_cast<char>((v >> 8) & 0xFF));
    if (pad < 1) out->push_back(static_cast<char>(v & 0xFF));
    // Non-canonical padding bits would make two encodings decode alike.
    if ((pad == 2 && (b & 0x0F) != 0) || (pad == 1 && (c & 0x03) != 0)) return false;
  }
  return true;
}

json bytes_value(const std::string& s) {
  if (valid_utf8(s)) return s;
  return json{{"base64", base64_encode(s)}};
}

// Rejects input nested deeper than kMaxDepth before the JSON parser sees it.
bool nesting_ok(std::string_view text) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxDepth) return false;
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return true;
}

Status bad(const std::string& field, const std::string& why) {
  return Status::invalid("daemon state: " + field + ": " + why);
}

Status check_keys(const json& object, const std::string& where, std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : object.items()) {
    bool known = false;
    for (std::string_view a : allowed) known = known || key == a;
    if (!known) return bad(where.empty() ? key : where + "." + key, "unknown key");
  }
  return Status::Ok();
}

Result<const json*> member(const json& object, const std::string& where, const char* key) {
  auto it = object.find(key);
  if (it == object.end()) return bad(where.empty() ? key : where + "." + key, "missing");
  return &*it;
}

Result<uint64_t> get_uint(const json& object, const std::string& where, const char* key, uint64_t max) {
  NYDUS_ASSIGN(const json* v, member(object, where, key));
  const std::string field = where.empty() ? key : where + "." + key;
  if (!v->is_number_unsigned()) return bad(field, "not a non-negative integer");
  uint64_t n = v->get<uint64_t>();
  if (n > max) return bad(field, std::to_string(n) + " is out of range (max " + std::to_string(max) + ")");
  return n;
}

Result<std::string> get_bytes(const json& v, const std::string& field, size_t max_bytes) {
  std::string out;
  if (v.is_string()) {
    out = v.get<std::string>();
  } else if (v.is_object() && v.size() == 1 && v.contains("base64") && v["base64"].is_string()) {
    if (!base64_decode(v["base64"].get_ref<const std::string&>(), &out)) return bad(field, "invalid base64");
  } else {
    return bad(field, "not a string");
  }
  if (out.size() > max_bytes) return bad(field, "longer than " + std::to_string(max_bytes) + " bytes");
  return out;
}

Result<std::string> get_member_bytes(const json& object, const std::string& where, const char* key,
                                     size_t max_bytes) {
  NYDUS_ASSIGN(const json* v, member(object, where, key));
  return get_bytes(*v, where + "." + key, max_bytes);
}

Status check_absolute(const std::string& path, const std::string& field) {
  if (path.empty() || path[0] != '/') return bad(field, "not an absolute path");
  if (path.find('\0') != std::string::npos) return bad(field, "contains a NUL byte");
  return Status::Ok();
}

Result<SavedMount> decode_mount(const json& m, const std::string& where) {
  if (!m.is_object()) return bad(where, "not an object");
  NYDUS_TRY(check_keys(m, where,
                       {"mountpoint", "fs_type", "source", "config", "prefetch_files", "vfs_index", "generation",
                        "registry_auth"}));
  SavedMount out;
  NYDUS_ASSIGN(out.mountpoint, get_member_bytes(m, where, "mountpoint", kSavedStateMaxPathBytes));
  NYDUS_TRY(check_absolute(out.mountpoint, where + ".mountpoint"));
  NYDUS_ASSIGN(out.fs_type, get_member_bytes(m, where, "fs_type", 64));
  if (out.fs_type != "rafs" && out.fs_type != "passthrough_fs" && out.fs_type != "passthroughfs" &&
      out.fs_type != "passthrough")
    return bad(where + ".fs_type", "unknown filesystem type '" + out.fs_type + "'");
  NYDUS_ASSIGN(out.source, get_member_bytes(m, where, "source", kSavedStateMaxPathBytes));
  if (out.source.empty()) return bad(where + ".source", "empty");
  if (out.source.find('\0') != std::string::npos) return bad(where + ".source", "contains a NUL byte");
  NYDUS_ASSIGN(out.config, get_member_bytes(m, where, "config", kSavedStateMaxConfigBytes));
  if (auto it = m.find("prefetch_files"); it != m.end()) {
    if (!it->is_array()) return bad(where + ".prefetch_files", "not an array");
    if (it->size() > kMaxPrefetchFiles) return bad(where + ".prefetch_files", "too many entries");
    out.prefetch_files.reserve(it->size());
    for (size_t i = 0; i < it->size(); ++i) {
      const std::string field = where + ".prefetch_files[" + std::to_string(i) + "]";
      NYDUS_ASSIGN(std::string path, get_bytes((*it)[i], field, kSavedStateMaxPathBytes));
      NYDUS_TRY(check_absolute(path, field));
      out.prefetch_files.push_back(std::move(path));
    }
  }
  NYDUS_ASSIGN(uint64_t index, get_uint(m, where, "vfs_index", 255));
  out.vfs_index = static_cast<uint8_t>(index);
  NYDUS_ASSIGN(out.generation, get_uint(m, where, "generation", UINT32_MAX));
  if (m.contains("registry_auth")) {
    NYDUS_ASSIGN(std::string auth, get_member_bytes(m, where, "registry_auth", kSavedStateMaxPathBytes));
    out.registry_auth = std::move(auth);
  }
  return out;
}

Result<SavedVfsState> decode_vfs(const json& v) {
  if (!v.is_object()) return bad("vfs", "not an object");
  NYDUS_TRY(check_keys(v, "vfs", {"next_index", "next_generation", "next_pseudo_node", "pseudo_dirs"}));
  SavedVfsState out;
  NYDUS_ASSIGN(uint64_t next_index, get_uint(v, "vfs", "next_index", 255));
  out.next_index = static_cast<uint8_t>(next_index);
  NYDUS_ASSIGN(out.next_generation, get_uint(v, "vfs", "next_generation", uint64_t{1} << 32));
  NYDUS_ASSIGN(out.next_pseudo_node, get_uint(v, "vfs", "next_pseudo_node", kMaxNodeId));
  NYDUS_ASSIGN(const json* dirs, member(v, "vfs", "pseudo_dirs"));
  if (!dirs->is_array()) return bad("vfs.pseudo_dirs", "not an array");
  if (dirs->size() > kMaxPseudoDirs) return bad("vfs.pseudo_dirs", "too many entries");
  std::set<std::string> seen_paths;
  std::set<uint64_t> seen_nodes;
  for (size_t i = 0; i < dirs->size(); ++i) {
    const std::string field = "vfs.pseudo_dirs[" + std::to_string(i) + "]";
    const json& d = (*dirs)[i];
    if (!d.is_array() || d.size() != 2) return bad(field, "not a [path, node] pair");
    NYDUS_ASSIGN(std::string path, get_bytes(d[0], field + "[0]", kSavedStateMaxPathBytes));
    NYDUS_TRY(check_absolute(path, field + "[0]"));
    if (!d[1].is_number_unsigned()) return bad(field + "[1]", "not a non-negative integer");
    const uint64_t node = d[1].get<uint64_t>();
    // Node 1 is the FUSE root; pseudo directories count up from 2.
    if (node < 2 || node > kMaxNodeId) return bad(field + "[1]", "node id " + std::to_string(node) + " out of range");
    if (!seen_paths.insert(path).second) return bad(field + "[0]", "duplicate '" + path + "'");
    if (!seen_nodes.insert(node).second) return bad(field + "[1]", "duplicate node id " + std::to_string(node));
    out.pseudo_dirs.emplace_back(std::move(path), node);
  }
  return out;
}

}  // namespace

std::vector<uint8_t> encode_saved_state(const DaemonSavedState& state) {
  json mounts = json::array();
  for (const SavedMount& m : state.mounts) {
    json files = json::array();
    for (const std::string& f : m.prefetch_files) files.push_back(bytes_value(f));
    json mount{{"mountpoint", bytes_value(m.mountpoint)},
               {"fs_type", bytes_value(m.fs_type)},
               {"source", bytes_value(m.source)},
               {"config", bytes_value(m.config)},
               {"prefetch_files", std::move(files)},
               {"vfs_index", m.vfs_index},
               {"generation", m.generation}};
    if (m.registry_auth) mount["registry_auth"] = bytes_value(*m.registry_auth);
    mounts.push_back(std::move(mount));
  }
  json dirs = json::array();
  for (const auto& [path, node] : state.vfs.pseudo_dirs) dirs.push_back(json::array({bytes_value(path), node}));
  json doc{{"format", kFormat},
           {"version", kSavedStateVersion},
           {"fuse_conn_id", state.fuse_conn_id},
           {"fuse_init",
            {{"major", state.fuse_init.major},
             {"minor", state.fuse_init.minor},
             {"max_readahead", state.fuse_init.max_readahead},
             {"flags", state.fuse_init.flags},
             {"flags2", state.fuse_init.flags2}}},
           {"vfs",
            {{"next_index", state.vfs.next_index},
             {"next_generation", state.vfs.next_generation},
             {"next_pseudo_node", state.vfs.next_pseudo_node},
             {"pseudo_dirs", std::move(dirs)}}},
           {"mounts", std::move(mounts)}};
  const std::string text = doc.dump();
  return {text.begin(), text.end()};
}

Result<DaemonSavedState> decode_saved_state(std::span<const uint8_t> bytes) {
  if (bytes.empty()) return bad("input", "empty");
  if (bytes.size() > kSavedStateMaxBytes) return bad("input", "larger than " + std::to_string(kSavedStateMaxBytes) + " bytes");
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (!nesting_ok(text)) return bad("input", "nested deeper than " + std::to_string(kMaxDepth) + " levels");
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return bad("input", "not valid JSON");
  if (!doc.is_object()) return bad("input", "not a JSON object");

  // Identify the format and version before anything else, so that a newer
  // producer is reported as such rather than as "unknown key".
  auto format = doc.find("format");
  if (format == doc.end() || !format->is_string() || format->get_ref<const std::string&>() != kFormat)
    return bad("format", "not a nydus-p2p daemon state");
  NYDUS_ASSIGN(uint64_t version, get_uint(doc, "", "version", UINT32_MAX));
  if (version != kSavedStateVersion)
    return Status::unsupported("daemon state: version " + std::to_string(version) + " is not supported (this build reads " +
                               std::to_string(kSavedStateVersion) + ")");
  NYDUS_TRY(check_keys(doc, "", {"format", "version", "fuse_conn_id", "fuse_init", "vfs", "mounts"}));

  DaemonSavedState out;
  // A dev_t of the kernel's internal form (12-bit major, 20-bit minor).
  NYDUS_ASSIGN(out.fuse_conn_id, get_uint(doc, "", "fuse_conn_id", UINT32_MAX));

  NYDUS_ASSIGN(const json* init, member(doc, "", "fuse_init"));
  if (!init->is_object()) return bad("fuse_init", "not an object");
  NYDUS_TRY(check_keys(*init, "fuse_init", {"major", "minor", "max_readahead", "flags", "flags2"}));
  NYDUS_ASSIGN(uint64_t major, get_uint(*init, "fuse_init", "major", UINT32_MAX));
  if (major != 7) return bad("fuse_init.major", "protocol major " + std::to_string(major) + " (only 7 is known)");
  out.fuse_init.major = static_cast<uint32_t>(major);
  NYDUS_ASSIGN(out.fuse_init.minor, get_uint(*init, "fuse_init", "minor", UINT32_MAX));
  NYDUS_ASSIGN(out.fuse_init.max_readahead, get_uint(*init, "fuse_init", "max_readahead", UINT32_MAX));
  NYDUS_ASSIGN(out.fuse_init.flags, get_uint(*init, "fuse_init", "flags", UINT32_MAX));
  NYDUS_ASSIGN(out.fuse_init.flags2, get_uint(*init, "fuse_init", "flags2", UINT32_MAX));

  NYDUS_ASSIGN(const json* vfs, member(doc, "", "vfs"));
  NYDUS_ASSIGN(out.vfs, decode_vfs(*vfs));

  NYDUS_ASSIGN(const json* mounts, member(doc, "", "mounts"));
  if (!mounts->is_array()) return bad("mounts", "not an array");
  if (mounts->size() > kSavedStateMaxMounts)
    return bad("mounts", std::to_string(mounts->size()) + " entries (max " + std::to_string(kSavedStateMaxMounts) + ")");
  std::set<std::string> seen_paths;
  std::set<uint8_t> seen_indexes;
  for (size_t i = 0; i < mounts->size(); ++i) {
    const std::string where = "mounts[" + std::to_string(i) + "]";
    NYDUS_ASSIGN(SavedMount m, decode_mount((*mounts)[i], where));
    if (!seen_paths.insert(m.mountpoint).second) return bad(where + ".mountpoint", "duplicate '" + m.mountpoint + "'");
    if (!seen_indexes.insert(m.vfs_index).second)
      return bad(where + ".vfs_index", "duplicate " + std::to_string(m.vfs_index));
    out.mounts.push_back(std::move(m));
  }
  return out;
}

}  // namespace nydus::daemon
