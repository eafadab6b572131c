# gzip without -n stores the input's modification time (here: written by the build)
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
sed 's/@VERSION@/1.0/' manual.txt.in > manual.txt
gzip -9 manual.txt
cp manual.txt.gz "$OUT/"
