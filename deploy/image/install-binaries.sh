#!/bin/sh
# Installs wireseal and wireseal-tunnel from BIN_DIR into DEST for the image,
# in both builds: the Containerfile's builder stage and build-offline.sh.
#
#   deploy/image/install-binaries.sh BIN_DIR DEST
#
# The release profile keeps line tables (debug = "line-tables-only") so that a
# panic's backtrace names files and lines. They are most of a binary's size;
# compressed (zlib, which the standard library's backtrace reads) the two
# binaries take about 35 MB instead of 80, and backtraces keep their lines.
set -eu

src=${1:?usage: install-binaries.sh BIN_DIR DEST}
dest=${2:?usage: install-binaries.sh BIN_DIR DEST}
command -v objcopy >/dev/null || {
    echo "install-binaries.sh: objcopy not found (apt-get install binutils)" >&2
    exit 1
}
for binary in wireseal wireseal-tunnel; do
    install -D -m 0755 "$src/$binary" "$dest/$binary"
    objcopy --compress-debug-sections=zlib "$dest/$binary"
done
