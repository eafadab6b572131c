# Python set order follows the per-process random string hash seed
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
python3 -c 'print(" ".join({"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"}))' > "$OUT/names.txt"
