# sort collates by the locale: mixed-case words order differently
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
sort words.txt > "$OUT/index.txt"
