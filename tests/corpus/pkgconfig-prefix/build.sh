# a generated pkg-config file records the absolute build directory as prefix
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
sed "s|@PREFIX@|$(pwd)/stage|" libdemo.pc.in > "$OUT/libdemo.pc"
