#!/usr/bin/env bash
# Builds the libFuzzer binary .build-fuzz/progress-fuzz: the engine's Swift sources plus fuzz/Fuzz.swift in one
# module (ProgressEngine), instrumented with -sanitize=fuzzer,address; the C shims (all but listener.c and
# deflate.c, the libwebsockets side, which fuzz/stub_listener.c replaces) built with the toolchain's clang.
# Independent of SwiftPM. The target is chosen at run time with PE_FUZZ_TARGET (see fuzz/README.md).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
toolchain=$(dirname "$(readlink -f "$(command -v swiftc)")")   # .../usr/bin
out="$root/.build-fuzz"
bin="$out/progress-fuzz"
cd "$root"

mapfile -t swift_sources < <(find Sources/ProgressEngine -name '*.swift' | LC_ALL=C sort)
c_sources=(Sources/CProgress/shim.c Sources/CProgress/preview.c Sources/CProgress/system.c Sources/CProgress/deflate_window.c
           fuzz/stub_listener.c fuzz/inflate_check.c)
inputs=("${swift_sources[@]}" "${c_sources[@]}" fuzz/Fuzz.swift fuzz/FuzzStub.h fuzz/build.sh Sources/CProgress/include/*.h)

# Up to date: nothing newer than the binary.
if [ -x "$bin" ] && [ -z "$(find "${inputs[@]}" -newer "$bin" 2>/dev/null | head -1)" ]; then
    echo "fuzz/build.sh: $bin is up to date"
    exit 0
fi

mkdir -p "$out/modules" "$out/obj"
# The CProgress module as SwiftPM would build it, plus the harness's stub calls.
cat >"$out/modules/module.modulemap" <<MAP
module CProgress {
    header "$root/Sources/CProgress/include/CProgress.h"
    header "$root/fuzz/FuzzStub.h"
    export *
}
MAP

objects=()
for src in "${c_sources[@]}"; do
    obj="$out/obj/$(basename "$src" .c).o"
    "$toolchain/clang" -fsanitize=fuzzer-no-link,address -g -O1 -std=c11 -fPIC \
        -I Sources/CProgress/include -I fuzz $(pkg-config --cflags libpng) -c "$src" -o "$obj"
    objects+=("$obj")
done

swiftc -sanitize=fuzzer,address -parse-as-library -O -g -module-name ProgressEngine \
    -I "$out/modules" -I Sources/CLibhiredis $(pkg-config --cflags-only-I hiredis | sed 's/-I/-Xcc -I/g') \
    "${swift_sources[@]}" fuzz/Fuzz.swift "${objects[@]}" \
    $(pkg-config --libs hiredis libpng) -lz -lm \
    -o "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "fuzz/build.sh: built $bin"
