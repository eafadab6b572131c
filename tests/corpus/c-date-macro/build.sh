# __DATE__ and __TIME__ without SOURCE_DATE_EPOCH: the build's local date and time
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
unset SOURCE_DATE_EPOCH
gcc -O2 -o "$OUT/hello" hello.c
