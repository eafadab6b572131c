# zip stores DOS times in local time: the same instant differs by time zone
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir stage
cp README stage/README
chmod 644 stage/README
touch -d "@$SOURCE_DATE_EPOCH" stage/README
cd stage
zip -X -q "$OUT/bundle.zip" README
