#!/bin/sh
# Install the Debian packages miniguest needs to be installed into a virtual environment, when missing:
#   python3-venv    Debian's python3 has no venv/ensurepip without it (and refuses `pip install` outside one)
#   gcc             one small C file (the virtual clock's block hook) is compiled when miniguest is installed
# Then: python3 -m venv .venv && .venv/bin/pip install .   (see README.md)
set -e
missing=""
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
for pkg in "$@"; do
    missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "installing:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
fi
