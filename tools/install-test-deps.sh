#!/bin/sh
# Install the Debian packages the test suite needs, when missing (and what tools/install-deps.sh installs):
#   gdb             the debugger tests drive the real gdb
#   xenstore-utils  Xen's own xenstore-ls/-read/-write/-watch talk to our xenstored socket
#   make binutils   the firmware is rebuilt and compared byte for byte with the committed ELFs
#   passt           `--net user`: the network tests run it inside a private network namespace
#   e2fsprogs       mke2fs -d makes ext4 disk images without root, debugfs reads files back (disk tests)
set -e
extra=""
command -v gdb >/dev/null 2>&1 || extra="$extra gdb"
command -v xenstore-ls >/dev/null 2>&1 || extra="$extra xenstore-utils"
command -v make >/dev/null 2>&1 || extra="$extra make"
command -v ld >/dev/null 2>&1 || extra="$extra binutils"
command -v passt >/dev/null 2>&1 || extra="$extra passt"
[ -x /sbin/mke2fs ] || [ -x /usr/sbin/mke2fs ] || command -v mke2fs >/dev/null 2>&1 || extra="$extra e2fsprogs"
# shellcheck disable=SC2086
sh "$(dirname "$0")/install-deps.sh" $extra
