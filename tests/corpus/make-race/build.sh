# make -j$(nproc): parallel jobs append to one file in finishing order
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
make -s -j"$(nproc)"
cp log.txt "$OUT/log.txt"
