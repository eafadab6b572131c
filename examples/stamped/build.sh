#!/bin/sh
# Deliberately NOT reproducible: the kinds of mistake rebuild exists to catch.
set -eu
mkdir -p /out/share
echo "built on $(date -u +%F) by $(id -un 2>/dev/null || id -u)@$(uname -n)" > /out/share/stamp.txt
find . -type f > /out/share/files.txt   # directory order
tar -cf - . | gzip > /out/share/src.tar.gz   # mtimes, owners, order, gzip timestamp
