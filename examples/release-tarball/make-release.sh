#!/bin/sh
# Build a source release tarball that is the same bytes on every machine:
# sorted members, clamped mtimes, numeric owners, explicit modes, gzip without a timestamp.
set -eu
name=greeting-1.0.0
work=${TMPDIR:-/tmp}
mkdir -p "$work/$name"
cp -R doc greet.sh "$work/$name/"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
    --owner=0 --group=0 --numeric-owner --mode=u+rwX,go=rX \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work" -cf - "$name" | gzip -n -9 > "/out/$name.tar.gz"
sha256sum "/out/$name.tar.gz" | cut -d' ' -f1 > /out/SHA256SUM
# The outputs' own modes, explicitly: left to the umask, they differ between machines.
chmod 0644 "/out/$name.tar.gz" /out/SHA256SUM
