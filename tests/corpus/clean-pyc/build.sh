# py_compile with SOURCE_DATE_EPOCH set: checked-hash .pyc, no file time
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
python3 -m compileall -q pkg
cp pkg/__pycache__/util.*.pyc "$OUT/util.pyc"
