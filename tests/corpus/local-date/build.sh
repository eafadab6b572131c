# SOURCE_DATE_EPOCH honoured but formatted in the local time zone
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
date -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M' > "$OUT/release-date.txt"
