# reproducible-builds.org/docs/archives, zip: clamp times with touch -d @SOURCE_DATE_EPOCH,
# fix modes, sort the members, zip -X (no extra fields) in UTC (zip stores local DOS times)
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir stage
cp files/* stage/
echo "generated" > stage/generated.txt
chmod 755 stage && chmod 644 stage/*
find stage -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +
find stage -print | LC_ALL=C sort | TZ=UTC zip -X -q -@ "$OUT/bundle.zip"
