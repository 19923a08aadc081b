#!/usr/bin/env python3
"""Writes a C++ source defining nydus::sim::builtin_python_start_trace() as the
text of the given trace CSV (meson runs it at build time: the binary carries
its default trace, wherever it is run from)."""
import sys

src, out = sys.argv[1], sys.argv[2]
text = open(src, encoding="ascii").read()
# Raw string chunks well below compilers' literal limits.
chunks = [text[i:i + 8192] for i in range(0, len(text), 8192)] or [""]
with open(out, "w", encoding="ascii") as f:
    f.write('#include "test/sim/access_trace.h"\n\nnamespace nydus::sim {\n\n')
    f.write("const std::string& builtin_python_start_trace() {\n  static const std::string text = std::string()")
    for c in chunks:
        f.write(' +\n      std::string(R"TRACE(' + c + ')TRACE")')
    f.write(";\n  return text;\n}\n\n}  // namespace nydus::sim\n")
