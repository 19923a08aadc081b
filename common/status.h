// Status and Result<T>: the error currency inside every module.
//
// Contract: a Status is either ok() or carries a Code and a one-line, human
// readable message that names what was wrong ("bootstrap: inode 12 name runs
// past end of file"). Errors never cross a FUSE or HTTP callback as
// exceptions; the FUSE adapter maps Code to errno in one place (to_errno).
// Both types are plain values: copyable, movable, no shared state, so they
// are safe to pass between threads.
#pragma once

#include <cerrno>
#include <cstdio>
#include <string>
#include <utility>
#include <variant>

namespace nydus {

enum class Code {
  kOk = 0,
  kInvalidInput,   // a file, request or config is malformed
  kNotFound,       // a name, inode or blob does not exist
  kIo,             // an operating-system or transport error
  kCorrupt,        // data failed a digest or decompression check
  kUnsupported,    // well-formed but a feature we do not implement
  kTimeout,        // a deadline passed
  kNoSpace,        // caller's buffer too small
  kNotDir,
  kIsDir,
  kNoData,         // e.g. xattr not present
};

class Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status invalid(std::string m) { return {Code::kInvalidInput, std::move(m)}; }
  static Status not_found(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status io(std::string m) { return {Code::kIo, std::move(m)}; }
  static Status corrupt(std::string m) { return {Code::kCorrupt, std::move(m)}; }
  static Status unsupported(std::string m) { return {Code::kUnsupported, std::move(m)}; }
  static Status timeout(std::string m) { return {Code::kTimeout, std::move(m)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prefixes the message with context, keeping the code: "blob abc: " + message.
  Status with_context(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

  // The errno the FUSE edge replies with for this status.
  int to_errno() const {
    switch (code_) {
      case Code::kOk: return 0;
      case Code::kNotFound: return ENOENT;
      case Code::kNoSpace: return ERANGE;
      case Code::kNotDir: return ENOTDIR;
      case Code::kIsDir: return EISDIR;
      case Code::kNoData: return ENODATA;
      case Code::kUnsupported: return EOPNOTSUPP;
      case Code::kInvalidInput:
      case Code::kIo:
      case Code::kCorrupt:
      case Code::kTimeout: return EIO;
    }
    return EIO;
  }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// A value or a non-ok Status. Accessing value() on an error is a programming
// error (checked by assert-like abort), so always test ok() first.
template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok()) v_ = Status(Code::kIo, "internal: ok status used as error");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { check(); return std::get<T>(v_); }
  const T& value() const& { check(); return std::get<T>(v_); }
  T&& value() && { check(); return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void check() const {
    if (!ok()) {
      std::fprintf(stderr, "fatal: Result::value() on error: %s\n",
                   std::get<Status>(v_).message().c_str());
      std::abort();
    }
  }
  std::variant<T, Status> v_;
};

}  // namespace nydus

// Early-return helpers. NYDUS_TRY(expr) returns the Status of a failed
// Status-returning expression; NYDUS_ASSIGN(var, expr) unwraps a Result.
#define NYDUS_TRY(expr)                         \
  do {                                          \
    ::nydus::Status nydus_try_s_ = (expr);      \
    if (!nydus_try_s_.ok()) return nydus_try_s_; \
  } while (0)

#define NYDUS_CONCAT_INNER(a, b) a##b
#define NYDUS_CONCAT(a, b) NYDUS_CONCAT_INNER(a, b)
#define NYDUS_ASSIGN(lhs, expr) NYDUS_ASSIGN_IMPL(NYDUS_CONCAT(nydus_res_, __LINE__), lhs, expr)
#define NYDUS_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                      \
  if (!tmp.ok()) return tmp.status();     \
  lhs = std::move(tmp).value()
