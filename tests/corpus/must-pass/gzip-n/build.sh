# reproducible-builds.org/docs/archives: gzip -n stores neither name nor time
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
date -u -d "@$SOURCE_DATE_EPOCH" '+release notes of %Y-%m-%d' > notes.txt
gzip -9n notes.txt
cp notes.txt.gz "$OUT/"
gzip -9n -c < "$OUT/notes.txt.gz" > "$OUT/notes.txt.gz.gz"
