#include "daemon/api_v1.h"

#include <time.h>

#include <cstdio>
#include <ctime>

#include "common/log.h"

namespace nydus::daemon {
namespace {

using ordered_json = nlohmann::ordered_json;

std::string dump(const ordered_json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

// `<Variant>(<ApiError Debug>)` with the controller's status.
ApiResponse fail(std::string_view variant, const ControlError& e) {
  return ApiResponse::error(e.http_status, std::string(variant) + "(" + e.debug + ")");
}

ApiResponse respond(std::string_view variant, const ControlStatus& s) {
  return s.ok() ? ApiResponse::no_content() : fail(variant, s.error());
}

ApiResponse respond(std::string_view variant, const ControlResult<std::string>& r) {
  return r.ok() ? ApiResponse::json(r.value()) : fail(variant, r.error());
}

ApiResponse bad_request() { return ApiResponse::error(400, "BadRequest"); }

ApiResponse query_missing(std::string_view key) {
  return ApiResponse::error(400, "QueryString(" + rust_debug_string("'" + std::string(key) +
                                                                   "' should be specified in query string") +
                                     ")");
}

// ---- Body parsing: serde_json-like messages, no exceptions ----

// `ParseBody(Error("<what>", line: L, column: C))`, the Debug of the
// serde_json error upstream reports; L and C are 1-based, for byte `pos`.
ApiResponse parse_error(std::string_view body, std::string_view what, size_t pos) {
  size_t line = 1, column = 0;
  for (size_t i = 0; i < pos && i < body.size(); ++i) {
    if (body[i] == '\n') {
      ++line;
      column = 0;
    } else {
      ++column;
    }
  }
  return ApiResponse::error(400, "ParseBody(Error(" + rust_debug_string(what) + ", line: " + std::to_string(line) +
                                     ", column: " + std::to_string(column) + "))");
}

// Records the first syntax error of a document; accepts everything else.
class SyntaxErrorSax : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) override {
    position_ = position;
    message_ = ex.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 2: syntax error ..." → "syntax error ..."
    if (size_t p = message_.find("] "); p != std::string::npos) message_.erase(0, p + 2);
    if (message_.rfind("parse error", 0) == 0)
      if (size_t p = message_.find(": "); p != std::string::npos) message_.erase(0, p + 2);
    return false;
  }
  size_t position_ = 0;
  std::string message_ = "invalid JSON";
};

// serde's wording for an unexpected JSON value.
std::string serde_kind(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::boolean: return std::string("boolean `") + (j.get<bool>() ? "true" : "false") + "`";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return "integer `" + j.dump() + "`";
    case nlohmann::json::value_t::number_float: return "floating point `" + j.dump() + "`";
    case nlohmann::json::value_t::string: return "string " + rust_debug_string(j.get_ref<const std::string&>());
    case nlohmann::json::value_t::array: return "sequence";
    case nlohmann::json::value_t::object: return "map";
    default: return "value";
  }
}

// Parses `body` as a JSON object. On failure returns false with the 400.
bool parse_object(std::string_view body, std::string_view expected, nlohmann::json* out, ApiResponse* err) {
  *out = nlohmann::json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (out->is_discarded()) {
    SyntaxErrorSax sax;
    nlohmann::json::sax_parse(body.begin(), body.end(), &sax);
    *err = parse_error(body, sax.message_, sax.position_);
    return false;
  }
  if (!out->is_object()) {
    *err = parse_error(body, "invalid type: " + serde_kind(*out) + ", expected " + std::string(expected), body.size());
    return false;
  }
  return true;
}

// A required (or, with `optional`, possibly absent/null) string member.
bool string_field(const nlohmann::json& obj, std::string_view body, const char* name, bool optional,
                  std::string* out, ApiResponse* err) {
  auto it = obj.find(name);
  if (it == obj.end() || (optional && it->is_null())) {
    if (optional) return true;
    *err = parse_error(body, std::string("missing field `") + name + "`", body.size());
    return false;
  }
  if (!it->is_string()) {
    *err = parse_error(body, "invalid type: " + serde_kind(*it) + ", expected a string", body.size());
    return false;
  }
  *out = it->get<std::string>();
  return true;
}

// ---- Responses ----

std::string daemon_info(const DaemonController& c, bool include_fs) {
  BuildInfo b = c.build_info();
  ordered_json version;
  version["package_ver"] = b.package_ver;
  version["git_commit"] = b.git_commit;
  version["build_time"] = b.build_time;
  version["profile"] = b.profile;
  version["rustc"] = b.rustc;
  ordered_json info;
  info["version"] = std::move(version);
  auto id = c.id();
  auto supervisor = c.supervisor();
  info["id"] = id ? ordered_json(*id) : ordered_json(nullptr);
  info["supervisor"] = supervisor ? ordered_json(*supervisor) : ordered_json(nullptr);
  info["state"] = daemon_state_name(c.state());
  info["backend_collection"] = include_fs ? ordered_json(c.backend_collection()) : ordered_json(nullptr);
  return dump(info);
}

ApiResponse set_log_level(DaemonController& c, const ApiRequest& req) {
  nlohmann::json obj;
  ApiResponse err;
  std::string level;
  if (!parse_object(req.body, "struct DaemonConf", &obj, &err)) return err;
  if (!string_field(obj, req.body, "log_level", false, &level, &err)) return err;
  return respond("Configure", c.set_log_level(level));
}

// Upstream FsBackendType::from_str.
bool parse_fs_type(const std::string& text, FsType* out) {
  if (text == "rafs") *out = FsType::kRafs;
  else if (text == "passthrough" || text == "passthroughfs" || text == "passthrough_fs") *out = FsType::kPassthroughFs;
  else return false;
  return true;
}

ApiResponse mount(DaemonController& c, const ApiRequest& req, bool remount) {
  auto mountpoint = req.query_value("mountpoint");
  if (!mountpoint) return query_missing("mountpoint");
  nlohmann::json obj;
  ApiResponse err;
  MountCommand cmd;
  cmd.mountpoint = *mountpoint;
  std::string fs_type;
  if (!parse_object(req.body, "struct ApiMountCmd", &obj, &err)) return err;
  if (!string_field(obj, req.body, "source", false, &cmd.source, &err)) return err;
  if (!string_field(obj, req.body, "fs_type", true, &fs_type, &err)) return err;
  if (!string_field(obj, req.body, "config", false, &cmd.config, &err)) return err;
  if (auto it = obj.find("prefetch_files"); it != obj.end() && !it->is_null()) {
    if (!it->is_array())
      return parse_error(req.body, "invalid type: " + serde_kind(*it) + ", expected a sequence", req.body.size());
    std::vector<std::string> files;
    for (const auto& f : *it) {
      if (!f.is_string())
        return parse_error(req.body, "invalid type: " + serde_kind(f) + ", expected a string", req.body.size());
      files.push_back(f.get<std::string>());
    }
    cmd.prefetch_files = std::move(files);
  }
  if (!parse_fs_type(fs_type, &cmd.fs_type)) {
    // Upstream: Error::InvalidArguments through DaemonErrorKind::Other.
    return fail("Mount", ControlError::mount("invalid argument `only 'rafs' and 'passthrough_fs' are supported, but " +
                                             fs_type + " was specified`"));
  }
  return respond("Mount", remount ? c.remount(cmd) : c.mount(cmd));
}

ApiResponse update_config(DaemonController& c, const ApiRequest& req) {
  nlohmann::json obj;
  ApiResponse err;
  if (!parse_object(req.body, "a map", &obj, &err)) return err;
  std::map<std::string, std::string> values;
  for (const auto& [key, value] : obj.items()) {
    if (!value.is_string())
      return parse_error(req.body, "invalid type: " + serde_kind(value) + ", expected a string", req.body.size());
    values[key] = value.get<std::string>();
  }
  return respond("Configure", c.update_config(req.query_value("id"), values));
}

std::string http_date(time_t t) {
  static const char* const kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* const kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  tm g{};
  gmtime_r(&t, &g);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT", kDays[g.tm_wday % 7], g.tm_mday,
                kMonths[g.tm_mon % 12], g.tm_year + 1900, g.tm_hour, g.tm_min, g.tm_sec);
  return buf;
}

}  // namespace

// ---- ControlError ----

ControlError ControlError::unexpected_event(std::string_view event) {
  return {400, "DaemonAbnormal(UnexpectedEvent(" + rust_debug_string(event) + "))"};
}
ControlError ControlError::not_ready() { return {503, "DaemonAbnormal(NotReady)"}; }
ControlError ControlError::unsupported() { return {501, "DaemonAbnormal(Unsupported)"}; }
ControlError ControlError::no_counter() { return {404, "Metrics(Stats(NoCounter))"}; }
ControlError ControlError::daemon(std::string_view message) {
  return {500, "DaemonAbnormal(Other(" + rust_debug_string(message) + "))"};
}
ControlError ControlError::mount(std::string_view message) {
  return {500, "MountFilesystem(Other(" + rust_debug_string(message) + "))"};
}
ControlError ControlError::metrics(std::string_view message) {
  return {500, "Metrics(Daemon(Other(" + rust_debug_string(message) + ")))"};
}
ControlError ControlError::from_transition(const Status& status) {
  switch (status.code()) {
    case Code::kInvalidInput: return {400, "DaemonAbnormal(" + status.message() + ")"};
    case Code::kUnsupported: return unsupported();
    default: return daemon(status.message());
  }
}

ControlStatus DaemonController::set_log_level(const std::string& level) {
  log::Level parsed;
  if (!log::parse_level(level, &parsed)) {
    LOG_ERROR("Invalid log level passed, %s", level.c_str());
    return ControlError{500, "ResponsePayloadType"};
  }
  log::set_level(parsed);
  LOG_INFO("log level set to %s", log::level_name(parsed));
  return {};
}

// ---- ErrorEvents ----

bool ErrorEvents::push(std::string_view error) {
  std::string entry = http_date(time(nullptr)) + " - " + std::string(error);
  if (entry.size() > max_size_ || max_errors_ == 0) return false;
  std::lock_guard<std::mutex> lock(mu_);
  while (!errors_.empty() && (errors_.size() >= max_errors_ || total_size_ + entry.size() > max_size_)) {
    total_size_ -= errors_.front().size();
    errors_.pop_front();
  }
  total_size_ += entry.size();
  errors_.push_back(std::move(entry));
  return true;
}

std::string ErrorEvents::to_json() const {
  ordered_json j;
  std::lock_guard<std::mutex> lock(mu_);
  j["max_errors"] = max_errors_;
  j["total_errors"] = errors_.size();
  j["max_size"] = max_size_;
  j["total_size"] = total_size_;
  j["errors"] = ordered_json::array();
  for (const auto& e : errors_) j["errors"].push_back(e);
  return dump(j);
}

ErrorEvents& global_error_events() {
  static ErrorEvents* events = new ErrorEvents();  // never destroyed: logging may run during exit
  return *events;
}

// ---- Routes ----

Status register_api_v1(ApiServer& server, DaemonController& c, ErrorEvents& events) {
  Status result;
  auto add = [&](const char* method, const char* path, BodyRule body, ApiHandler handler) {
    Status s = server.add_route(method, path, body, std::move(handler));
    if (result.ok() && !s.ok()) result = s;
  };
  using B = BodyRule;

  // Daemon
  add("GET", "/api/v1/daemon", B::kNone, [&c](const ApiRequest&) { return ApiResponse::json(daemon_info(c, true)); });
  add("PUT", "/api/v1/daemon", B::kRequired, [&c](const ApiRequest& r) { return set_log_level(c, r); });
  add("GET", "/api/v2/daemon", B::kNone, [&c](const ApiRequest&) { return ApiResponse::json(daemon_info(c, false)); });
  add("PUT", "/api/v2/daemon", B::kRequired, [&c](const ApiRequest& r) { return set_log_level(c, r); });
  add("GET", "/api/v1/daemon/events", B::kNone, [&events](const ApiRequest&) {
    return ApiResponse::json(events.to_json());
  });
  add("GET", "/api/v1/daemon/backend", B::kNone, [&c](const ApiRequest& r) {
    auto mountpoint = r.query_value("mountpoint");
    if (!mountpoint) return query_missing("mountpoint");
    return respond("FsBackendInfo", c.backend_info(*mountpoint));
  });
  add("PUT", "/api/v1/daemon/start", B::kNone, [&c](const ApiRequest&) { return respond("Configure", c.start()); });
  add("PUT", "/api/v1/daemon/exit", B::kNone, [&c](const ApiRequest&) { return respond("Configure", c.exit()); });
  add("PUT", "/api/v1/daemon/fuse/sendfd", B::kNone, [&c](const ApiRequest&) {
    return respond("Upgrade", c.send_fuse_fd());
  });
  add("PUT", "/api/v1/daemon/fuse/takeover", B::kNone, [&c](const ApiRequest&) {
    return respond("Upgrade", c.takeover());
  });

  // Mounts
  add("POST", "/api/v1/mount", B::kRequired, [&c](const ApiRequest& r) { return mount(c, r, false); });
  add("PUT", "/api/v1/mount", B::kRequired, [&c](const ApiRequest& r) { return mount(c, r, true); });
  add("DELETE", "/api/v1/mount", B::kNone, [&c](const ApiRequest& r) {
    auto mountpoint = r.query_value("mountpoint");
    if (!mountpoint) return query_missing("mountpoint");
    return respond("Mount", c.umount(*mountpoint));
  });

  // Metrics
  add("GET", "/api/v1/metrics", B::kNone, [&c](const ApiRequest& r) {
    return respond("GlobalMetrics", c.fs_metrics(r.query_value("id")));
  });
  add("GET", "/api/v1/metrics/files", B::kNone, [&c](const ApiRequest& r) {
    // Rust's bool::from_str: exactly "true"; anything else is false.
    bool latest = r.query_value("latest") == std::optional<std::string>("true");
    return respond("FsFilesMetrics", c.files_metrics(r.query_value("id"), latest));
  });
  add("GET", "/api/v1/metrics/pattern", B::kNone, [&c](const ApiRequest& r) {
    return respond("Pattern", c.access_patterns(r.query_value("id")));
  });
  add("GET", "/api/v1/metrics/backend", B::kNone, [&c](const ApiRequest& r) {
    return respond("BackendMetrics", c.backend_metrics(r.query_value("id")));
  });
  add("GET", "/api/v1/metrics/backend/reads", B::kNone, [&c](const ApiRequest& r) {
    auto csv = c.backend_reads(r.query_value("id"));
    if (!csv.ok()) return fail("BackendReads", csv.error());
    return ApiResponse{200, csv.value(), "text/csv; charset=utf-8"};
  });
  add("GET", "/api/v1/metrics/blobcache", B::kNone, [&c](const ApiRequest& r) {
    return respond("BlobcacheMetrics", c.blobcache_metrics(r.query_value("id")));
  });
  add("GET", "/api/v1/metrics/inflight", B::kNone, [&c](const ApiRequest&) {
    auto r = c.inflight_metrics();
    if (!r.ok()) return fail("InflightMetrics", r.error());
    return r.value() ? ApiResponse::json(*r.value()) : ApiResponse::no_content();
  });

  // Config
  add("GET", "/api/v1/config", B::kNone, [&c](const ApiRequest& r) {
    auto values = c.get_config(r.query_value("id"));
    if (!values.ok()) return fail("Configure", values.error());
    ordered_json j = ordered_json::object();
    for (const auto& [k, v] : values.value()) j[k] = v;
    return ApiResponse::json(dump(j));
  });
  add("PUT", "/api/v1/config", B::kRequired, [&c](const ApiRequest& r) { return update_config(c, r); });

  // fscache blob objects (singleton mode only, not built): always 501.
  add("GET", "/api/v2/blobs", B::kNone, [](const ApiRequest& r) {
    if (!r.query_value("domain_id")) return bad_request();
    return fail("GetBlobObjects", ControlError::unsupported());
  });
  add("PUT", "/api/v2/blobs", B::kRequired, [](const ApiRequest&) {
    return fail("CreateBlobObject", ControlError::unsupported());
  });
  add("DELETE", "/api/v2/blobs", B::kNone, [](const ApiRequest& r) {
    if (r.query_value("domain_id")) return fail("DeleteBlobObject", ControlError::unsupported());
    if (r.query_value("blob_id")) return fail("DeleteBlobFile", ControlError::unsupported());
    return bad_request();
  });
  return result;
}

}  // namespace nydus::daemon
