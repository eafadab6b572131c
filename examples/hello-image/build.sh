#!/bin/sh
# A static program and its greeting under /out, with explicit modes: the image's layer
# records each output's mode, so nothing here may depend on the build's umask. The prefix
# map keeps the build directory (a variation) out of the binary.
set -eu
mkdir -p /out/bin
gcc -O2 -static -ffile-prefix-map="$PWD"=. -o /out/bin/hello hello.c
chmod 0755 /out/bin/hello
install -D -m 0644 greeting.txt /out/share/hello/greeting.txt
