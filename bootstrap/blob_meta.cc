// PLACEHOLDER: replaced by the real parsers.
#include "bootstrap/blob_meta.h"

namespace nydus::bootstrap {

Result<BlobMetaHeader> parse_blob_meta_header(std::span<const uint8_t>, const BlobInfo&) {
  return Status::unsupported("blob.meta parser not built yet");
}
Result<std::vector<ChunkRef>> parse_chunk_infos(std::span<const uint8_t>, const BlobMetaHeader&,
                                                const BlobInfo&, std::span<const uint8_t>) {
  return Status::unsupported("blob.meta parser not built yet");
}
Result<BlobMetaHeader> parse_blob_meta_file(std::span<const uint8_t>, const BlobInfo&) {
  return Status::unsupported("blob.meta parser not built yet");
}
Result<TarSection> parse_tar_header(std::span<const uint8_t>) {
  return Status::unsupported("tar header parser not built yet");
}
Result<std::vector<TocEntry>> parse_toc(std::span<const uint8_t>) {
  return Status::unsupported("ToC parser not built yet");
}

}  // namespace nydus::bootstrap
