# files the build creates get their mode from the umask, and tar records it
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir -p stage/etc
echo "setting = 1" > stage/etc/app.conf
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -cf "$OUT/stage.tar" stage
