# a timestamp-checked .pyc records its source's size and mtime (SOURCE_DATE_EPOCH unset)
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
unset SOURCE_DATE_EPOCH
python3 -m compileall -q --invalidation-mode timestamp pkg
cp pkg/__pycache__/util.*.pyc "$OUT/util.pyc"
