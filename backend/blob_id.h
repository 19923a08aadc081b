// Blob ids come from untrusted bootstraps and end up in file names
// (`<dir>/<id>`, `<work_dir>/<id>.blob.meta`) and URLs. Every backend and
// cache checks an id with check_blob_id() before building a path from it.
#pragma once

#include <string_view>

#include "common/status.h"

namespace nydus::backend {

// Ok for a plain file name: non-empty, at most 255 bytes, no '/', no NUL,
// no "..", not ".". A 64-char lowercase hex id is the normal case, but v5
// blob tables may hold other plain names, which are accepted.
// kInvalidInput (naming the id, escaped) otherwise.
Status check_blob_id(std::string_view id);

}  // namespace nydus::backend
