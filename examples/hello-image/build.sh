#!/bin/sh
# Lays the program and its greeting under /out with explicit modes: the image's layer
# records each output's mode, so nothing here may depend on the build's umask.
set -eu
install -D -m 0755 hello.sh /out/bin/hello
install -D -m 0644 greeting.txt /out/share/hello/greeting.txt
