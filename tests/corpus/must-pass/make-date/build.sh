# make with BUILD_DATE from $(shell date -u -d "@$(SOURCE_DATE_EPOCH)"), as documented
set -eu
OUT=${OUT:-/out}
make -s OUT="$OUT"
