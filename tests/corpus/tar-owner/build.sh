# tar records the uid/gid of the build user for files the build wrote
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
mkdir -p stage/bin
printf '#!/bin/sh\necho tool\n' > stage/bin/tool
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --mode=go-w -cf "$OUT/stage.tar" stage
