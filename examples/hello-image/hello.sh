#!/bin/sh
# The program of the hello-image example: it reads its greeting from the file the image
# lays beside it, so that a test can see both outputs at work in `docker run`.
cat "${GREETING_FILE:-/app/share/hello/greeting.txt}"
