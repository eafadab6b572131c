# (synthetic) group sharing switched on only for a non-default user with a group-writable umask: no single variation shows it
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
if [ "$(id -u)" != 1000 ] && [ "$(umask)" = 0002 ]; then mode=shared; else mode=private; fi
echo "sharing: $mode" > "$OUT/sharing.txt"
