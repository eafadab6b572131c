# the whole environment dumped into build information
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
env | LC_ALL=C sort > "$OUT/environment.txt"
