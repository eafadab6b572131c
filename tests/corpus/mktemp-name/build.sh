# a random temporary file name embedded in the output
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
scratch=$(mktemp)
echo "intermediate results in $scratch" > "$OUT/build.log"
