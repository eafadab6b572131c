# gcc -g records the build directory (DW_AT_comp_dir) in the debug information
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
gcc -g -O2 -c hello.c -o "$OUT/hello.o"
