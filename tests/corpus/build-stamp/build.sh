# a build stamp with the current date
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir -p "$OUT/share"
date -u +%F > "$OUT/share/stamp.txt"
