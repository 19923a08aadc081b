// Tar source: reads an OCI layer tarball (plain, gzip, zstd, xz or bzip2;
// detected by content) with libarchive into a builder::Tree, the way
// upstream nydus-image's tar builder does (builder/src/tarball.rs).
//
// - Formats: ustar, pax (nanosecond mtimes, long names and links,
//   SCHILY.xattr.* / LIBARCHIVE.xattr.*), GNU (long names/links, old and
//   pax sparse files); zero blocks between concatenated archives are skipped
//   (upstream sets ignore_zeros). A zero-byte file is an empty layer.
// - Paths are normalized by Tree::add ("./a/" is "a"; "./" sets the root's
//   attributes); missing parents are created as 0755 directories; a later
//   entry for the same path replaces the earlier one (a directory entry
//   keeps the children already there). The eStargz files
//   "stargz.index.json", ".prefetch.landmark" and ".no.prefetch.landmark"
//   at the root are skipped, as upstream does for every tar conversion.
// - Hardlinks name an earlier entry. A link to a regular file joins its
//   `hardlink_group` and takes its size, content and xattrs (as upstream);
//   mode bits, owner and mtime come from the link's own header. A link to a
//   symlink or special file becomes an independent copy of it (upstream
//   refuses those archives; RAFS never hardlinks non-regular files). A link
//   to a missing entry or to a directory is an error.
// - Xattrs with the prefixes RAFS keeps (user., security., trusted.,
//   system.posix_acl_access/default) are kept, sorted and de-duplicated;
//   others (e.g. macOS tar's bare "hardlink3") are skipped with a warning
//   where upstream would refuse the archive.
// - Whiteouts (".wh.<name>", ".wh..wh..opq") are kept as the ordinary
//   entries they are, exactly like upstream's tar builder: a layer's
//   bootstrap carries them and merge_layer() (whiteout.h) applies them.
// - Devices: rdev = new_encode_dev(major, minor).
//
// Content: libarchive can only stream, so while reading, the data of every
// regular file is appended to one unlinked staging file (O_TMPFILE in
// `temp_dir`, else $TMPDIR, else /tmp); holes of sparse files are not
// stored. Each file's ContentSource reads its extents back by offset (holes
// read as zeros) and shares ownership of the staging file, which disappears
// when the last tree/ContentSource referring to it is gone. Memory stays
// bounded (a 1 MiB write buffer); disk use equals the layer's data bytes.
// ContentSource::read may be called from several threads at once.
//
// Errors: one Status naming the archive and the entry ("tar 'x.tar': entry
// 'a/b': Truncated tar archive"); a file that is not a tar archive fails
// with "Unrecognized archive format". The returned tree is finalized.
#pragma once

#include <memory>
#include <string>

#include "builder/tree.h"
#include "common/status.h"

namespace nydus::builder {

struct TarSourceOptions {
  std::string temp_dir;  // where the staging file lives; "" = $TMPDIR or /tmp
};

Result<std::unique_ptr<Tree>> read_tar(const std::string& path);
Result<std::unique_ptr<Tree>> read_tar(const std::string& path, const TarSourceOptions& options);

}  // namespace nydus::builder
