# a generated file list in directory order (find without sort)
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
find plugins -type f > "$OUT/MANIFEST"
