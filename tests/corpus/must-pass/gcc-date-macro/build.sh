# gcc honours SOURCE_DATE_EPOCH for __DATE__ and __TIME__ (in UTC); the build path is mapped
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
gcc -O2 -ffile-prefix-map="$(pwd)"=. -o "$OUT/hello" hello.c
"$OUT/hello" > "$OUT/banner.txt"
