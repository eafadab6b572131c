# reproducible-builds.org/docs/source-date-epoch, "Python": an aware UTC datetime, time.gmtime
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
python3 - "$OUT/stamp.txt" <<'PY'
import datetime
import os
import sys
import time

epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
build_date = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
with open(sys.argv[1], "w") as out:
    out.write(build_date.isoformat() + "\n")
    out.write(build_date.strftime("%Y-%m-%d %H:%M:%S %Z") + "\n")
    out.write(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "\n")
PY
