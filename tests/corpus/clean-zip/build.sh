# zip -X in UTC with clamped times and fixed modes
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir stage
cp README stage/README
chmod 644 stage/README
touch -d "@$SOURCE_DATE_EPOCH" stage/README
cd stage
TZ=UTC zip -X -q "$OUT/bundle.zip" README
