# gzip -n: no name, no time in the header
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
sed 's/@VERSION@/1.0/' manual.txt.in > manual.txt
gzip -n -9 manual.txt
cp manual.txt.gz "$OUT/"
