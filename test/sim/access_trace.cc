#include "test/sim/access_trace.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "p2p/blob_location.h"

namespace nydus::sim {
namespace {

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> out;
  std::string field;
  std::istringstream in(line);
  while (std::getline(in, field, ',')) {
    while (!field.empty() && (field.back() == '\r' || field.back() == ' ')) field.pop_back();
    out.push_back(field);
  }
  return out;
}

bool parse_u64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) return false;
  try {
    *out = std::stoull(s);
  } catch (...) {
    return false;
  }
  return true;
}

}  // namespace

uint64_t AccessTrace::unique_bytes() const {
  std::vector<std::vector<std::pair<uint64_t, uint64_t>>> ranges(blobs.size());
  for (const TraceRead& r : reads) ranges[r.blob].emplace_back(r.offset, r.offset + r.length);
  uint64_t total = 0;
  for (auto& list : ranges) {
    std::sort(list.begin(), list.end());
    uint64_t covered_to = 0;
    for (const auto& [b, e] : list) {
      const uint64_t from = std::max(b, covered_to);
      if (e > from) total += e - from;
      covered_to = std::max(covered_to, e);
    }
  }
  return total;
}

Result<AccessTrace> parse_access_trace(const std::string& csv) {
  std::istringstream in(csv);
  std::string line;
  if (!std::getline(in, line)) return Status::invalid("trace: empty");
  const std::vector<std::string> header = split_csv_line(line);
  auto column = [&](const std::string& name) -> int {
    auto it = std::find(header.begin(), header.end(), name);
    return it == header.end() ? -1 : static_cast<int>(it - header.begin());
  };
  const int c_blob = column("blob"), c_size = column("blob_size"), c_off = column("offset"), c_len = column("length");
  if (c_blob < 0 || c_size < 0 || c_off < 0 || c_len < 0)
    return Status::invalid("trace: the header needs the columns blob, blob_size, offset and length: '" + line + "'");
  const size_t need = static_cast<size_t>(std::max({c_blob, c_size, c_off, c_len})) + 1;
  AccessTrace trace;
  std::map<std::string, uint32_t> index;
  for (size_t line_no = 2; std::getline(in, line); ++line_no) {
    if (line.empty() || line == "\r") continue;
    const std::string where = "trace line " + std::to_string(line_no);
    const std::vector<std::string> f = split_csv_line(line);
    if (f.size() < need) return Status::invalid(where + ": " + std::to_string(f.size()) + " fields, need " + std::to_string(need));
    const std::string& digest = f[c_blob];
    if (!p2p::is_sha256_hex(digest)) return Status::invalid(where + ": blob '" + digest + "' is not a sha256 hex digest");
    uint64_t size = 0, offset = 0, length = 0;
    if (!parse_u64(f[c_size], &size) || !parse_u64(f[c_off], &offset) || !parse_u64(f[c_len], &length))
      return Status::invalid(where + ": blob_size, offset and length must be decimal integers");
    if (length == 0 || offset > size || length > size - offset)
      return Status::invalid(where + ": read [" + f[c_off] + ", +" + f[c_len] + ") is not inside the blob of " +
                             f[c_size] + " bytes");
    auto [it, inserted] = index.try_emplace(digest, static_cast<uint32_t>(trace.blobs.size()));
    if (inserted) trace.blobs.push_back({digest, size});
    else if (trace.blobs[it->second].size != size)
      return Status::invalid(where + ": blob " + digest.substr(0, 12) + " had size " +
                             std::to_string(trace.blobs[it->second].size) + " before, " + f[c_size] + " here");
    trace.reads.push_back({it->second, offset, length});
  }
  if (trace.reads.empty()) return Status::invalid("trace: no reads");
  return trace;
}

Result<AccessTrace> load_access_trace(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::io("trace: cannot open " + path);
  std::ostringstream text;
  text << f.rdbuf();
  auto trace = parse_access_trace(text.str());
  if (!trace.ok()) return Status::invalid(path + ": " + trace.status().message());
  return trace;
}

AccessTrace whole_image_trace(const AccessTrace& trace, uint64_t read_size) {
  AccessTrace out;
  out.blobs = trace.blobs;
  for (uint32_t b = 0; b < out.blobs.size(); ++b)
    for (uint64_t off = 0; off < out.blobs[b].size; off += read_size)
      out.reads.push_back({b, off, std::min(read_size, out.blobs[b].size - off)});
  return out;
}

}  // namespace nydus::sim
