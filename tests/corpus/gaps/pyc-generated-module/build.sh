# a timestamp .pyc of a module the build writes records the module's mtime via stat(2)
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir -p pkg
printf 'VERSION = "1.0"\n' > pkg/_version.py
python3 -m compileall -q --invalidation-mode timestamp pkg
cp pkg/__pycache__/_version.*.pyc "$OUT/_version.pyc"
