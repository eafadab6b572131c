# tar without --sort=name archives members in directory order
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
tar --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --mode=go-w \
    -cf "$OUT/plugins.tar" plugins
