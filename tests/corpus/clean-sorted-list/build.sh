# a generated file list, sorted bytewise
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
find plugins -type f | LC_ALL=C sort > "$OUT/MANIFEST"
