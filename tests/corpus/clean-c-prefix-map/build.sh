# gcc -g with -ffile-prefix-map: debug information without the build directory
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
gcc -g -O2 -ffile-prefix-map="$(pwd)"=. -c hello.c -o "$OUT/hello.o"
gcc -g -O2 -ffile-prefix-map="$(pwd)"=. -o "$OUT/hello" hello.c
