# reproducible-builds.org/docs/source-date-epoch, "Bash / POSIX shell"
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
DATE_FMT="+%Y-%m-%d"
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(date +%s)}"
BUILD_DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" "$DATE_FMT" 2>/dev/null || date -u -r "$SOURCE_DATE_EPOCH" "$DATE_FMT" 2>/dev/null || date -u "$DATE_FMT")
echo "built on $BUILD_DATE" > "$OUT/build-date.txt"
date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%dT%H:%M:%SZ' > "$OUT/build-time.txt"
