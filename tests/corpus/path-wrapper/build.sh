# a generated wrapper script embeds $PATH
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
printf '#!/bin/sh\nexport PATH="%s"\nexec tool "$@"\n' "$PATH" > "$OUT/tool-wrapper"
