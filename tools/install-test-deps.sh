#!/bin/sh
# Install the Debian packages the test suite needs, when missing:
#   gdb             the debugger tests drive the real gdb
#   xenstore-utils  Xen's own xenstore-ls/-read/-write/-watch talk to our xenstored socket
#   gcc make        the firmware is rebuilt and compared byte for byte with the committed ELFs
#   lzop            makes the LZO-compressed bzImage the loader tests decompress
set -e
missing=""
command -v gdb >/dev/null 2>&1 || missing="$missing gdb"
command -v xenstore-ls >/dev/null 2>&1 || missing="$missing xenstore-utils"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
command -v make >/dev/null 2>&1 || missing="$missing make"
command -v ld >/dev/null 2>&1 || missing="$missing binutils"
command -v lzop >/dev/null 2>&1 || missing="$missing lzop"
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "installing:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
fi
