# tar records the modification times of files the build wrote
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir -p stage/etc
echo "setting = 1" > stage/etc/app.conf
tar --sort=name --owner=0 --group=0 --numeric-owner --mode=go-w -cf "$OUT/stage.tar" stage
