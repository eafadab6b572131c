# a careful tarball: sorted, clamped times, numeric root owner, fixed modes, gzip -n
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir -p stage/etc
echo "setting = 1" > stage/etc/app.conf
cp -r plugins stage/
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime --owner=0 --group=0 \
    --numeric-owner --mode=go-w,u+rw,a+rX -cf - stage | gzip -n -9 > "$OUT/stage.tar.gz"
