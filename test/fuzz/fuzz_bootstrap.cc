// libFuzzer target: any byte string as a bootstrap. Opening must either fail
// with a message or yield an image whose every accessor works on every
// inode reachable from the root (image.h contract).
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <deque>
#include <unordered_set>

#include "bootstrap/image.h"

using namespace nydus;
using namespace nydus::bootstrap;

namespace {

void fail(const char* what, const Status& s) {
  std::fprintf(stderr, "contract broken: %s: %s\n", what, s.message().c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto image = Image::from_bytes({data, size}, "fuzz");
  if (!image.ok()) {
    if (image.status().message().empty()) std::abort();
    return 0;
  }
  const Image& img = **image;
  std::deque<Ino> pending{img.root()};
  std::unordered_set<Ino> seen{img.root()};
  size_t budget = 100000;  // entries visited per input
  while (!pending.empty() && budget > 0) {
    Ino ino = pending.front();
    pending.pop_front();
    auto attr = img.inode(ino);
    if (!attr.ok()) fail("inode", attr.status());
    auto x = img.xattrs(ino);
    if (!x.ok()) fail("xattrs", x.status());
    const uint32_t type = attr->mode & 0170000;
    if (type == 0040000) {
      Status s = img.read_dir(ino, 0, [&](const DirEntry& e, uint64_t) {
        --budget;
        if (e.name != "." && e.name != ".." && seen.insert(e.ino).second) pending.push_back(e.ino);
        if (e.name != "." && e.name != "..") {
          auto found = img.lookup(ino, e.name);
          if (!found.ok() || *found != e.ino) fail("lookup of listed name", found.status());
        }
        return budget > 0;
      });
      if (!s.ok()) fail("read_dir", s);
      if (auto p = img.parent(ino); !p.ok()) fail("parent", p.status());
    } else if (type == 0120000) {
      auto target = img.read_link(ino);
      if (!target.ok()) fail("read_link", target.status());
    } else if (type == 0100000) {
      auto chunks = img.chunks(ino, 0, attr->size);
      if (!chunks.ok()) fail("chunks", chunks.status());
      if (attr->size > 0) {
        auto tail = img.chunks(ino, attr->size - 1, 4096);
        if (!tail.ok()) fail("chunks(tail)", tail.status());
      }
    }
  }
  return 0;
}
