# build information records the machine's name
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
echo "built on $(uname -n)" > "$OUT/buildinfo.txt"
