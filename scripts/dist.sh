#!/usr/bin/env bash
# Puts the release files in one tarball, dist/progress-engine-<version>-linux-x86_64.tar.gz (docs/PACKAGING.md):
#   python/   the wheel (scripts/wheel.sh)
#   bin/      progress-server, Swift runtime linked in statically (make server)
#   lib/      the C library as auditwheel repaired it for the wheel (lib/progress_engine/libProgressEngine.so,
#             which finds the libraries it needs in lib/progress_engine.libs through $ORIGIN), and
#             lib/pkgconfig/progress-engine.pc, relocatable (paths from ${pcfiledir})
#   include/  progress.h
#   SHA256SUMS of every file above (`sha256sum -c SHA256SUMS` in the unpacked folder checks them)
# Expects `make wheel` and `make server` done (`make dist` runs them). Prints the tarball's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(scripts/version.sh)
wheel=$(ls dist/progress_engine-"$version"-*.whl)
server=.build-dist/release/progress-server
[ -x "$server" ] || { echo "dist.sh: no $server; run make server (or make dist)" >&2; exit 1; }

name=progress-engine-$version-linux-$(uname -m)
stage=.build/dist/$name
rm -rf "$stage" && mkdir -p "$stage"/{python,bin,lib/pkgconfig,include}
cp "$wheel" "$stage/python/"
# The symbols are for debugging the build here; the tarball's binary needs none of them.
strip -o "$stage/bin/progress-server" "$server"
"${PYTHON:-python3}" -m zipfile -e "$wheel" "$stage/wheel"
# The same relative layout as in the wheel, so the library's $ORIGIN/../progress_engine.libs still holds.
mkdir -p "$stage/lib/progress_engine"
mv "$stage/wheel/progress_engine/libProgressEngine.so" "$stage/lib/progress_engine/"
mv "$stage/wheel/progress_engine.libs" "$stage/lib/"
rm -rf "$stage/wheel"
chmod 755 "$stage/lib/progress_engine/libProgressEngine.so" "$stage"/lib/progress_engine.libs/*
cp include/progress.h "$stage/include/"
sed -e 's|^prefix=@PREFIX@|prefix=${pcfiledir}/../..|' -e 's|^libdir=${prefix}/lib$|libdir=${prefix}/lib/progress_engine|' \
    -e "s|@VERSION@|$version|" progress-engine.pc.in >"$stage/lib/pkgconfig/progress-engine.pc"
(cd "$stage" && find . -type f ! -name SHA256SUMS | sort | sed 's|^\./||' | xargs sha256sum >SHA256SUMS)
tarball=dist/$name.tar.gz
tar -C .build/dist -czf "$tarball" "$name"
echo "dist: $tarball, $(du -k "$tarball" | cut -f1) KiB" >&2
echo "$tarball"
