# Python zipfile with a fixed date_time (time.gmtime of SOURCE_DATE_EPOCH), sorted members
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
python3 - "$OUT/bundle.zip" <<'PY'
import os
import sys
import time
import zipfile

stamp = time.gmtime(int(os.environ["SOURCE_DATE_EPOCH"]))[:6]
members = {"b.txt": b"bee\n", "a.txt": b"ay\n", "dir/c.txt": b"sea\n"}
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as archive:
    for name in sorted(members):
        info = zipfile.ZipInfo(name, date_time=stamp)
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, members[name])
PY
