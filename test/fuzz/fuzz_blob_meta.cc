// libFuzzer target: blob tail parsers (tar headers, ToC, blob.meta header
// and chunk-info arrays) on arbitrary bytes. They must never crash; results
// are not checked beyond being well-formed.
#include <cstdint>
#include <cstring>

#include "bootstrap/blob_meta.h"

using namespace nydus::bootstrap;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> bytes{data, size};
  if (size >= kTarHeaderSize) (void)parse_tar_header(bytes.subspan(size - kTarHeaderSize));
  (void)parse_toc(bytes);

  BlobInfo blob;
  blob.id = std::string(64, 'a');
  blob.chunk_size = 1 << 20;
  if (size >= 8) {
    std::memcpy(&blob.chunk_count, data, 4);
    std::memcpy(&blob.features, data + 4, 4);
    blob.chunk_count &= 0xffff;
  }
  blob.compressed_size = size;
  blob.uncompressed_size = uint64_t{blob.chunk_count} << 20;
  (void)parse_blob_meta_file(bytes, blob);
  if (size >= kBlobMetaHeaderSize) {
    auto header = parse_blob_meta_header(bytes.subspan(size - kBlobMetaHeaderSize), blob);
    if (header.ok()) {
      auto payload = bytes.first(size - kBlobMetaHeaderSize);
      (void)parse_chunk_infos(payload, *header, blob, {});
    }
  }
  return 0;
}
