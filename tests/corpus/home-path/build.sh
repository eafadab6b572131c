# a generated configuration records $HOME (a cache directory under it)
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
echo "cache_dir = $HOME/.cache/app" > "$OUT/app.conf"
