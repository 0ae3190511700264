#!/usr/bin/env bash
# Installs what `make venv` needs to build the media relay's native packet path
# (media/relay_native/_relay.c) and the TURN relay's batched UDP path
# (turn/fastpath_native/_fastpath.c: gcc and the Python headers only) when it is missing:
# gcc, pkg-config, libsrtp2-dev and the Python headers of the interpreter the venv is made
# from. The builds are optional: without
# these the venv still installs and the pure-Python path is used.
set -euo pipefail
PYTHON="${1:-python3}"
need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -f /usr/include/srtp2/srtp.h ] || need+=(libsrtp2-dev)
"$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)
[ ${#need[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: the native relay will not be built (missing ${need[*]})"; exit 0; }
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing build dependencies: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "could not install ${need[*]}: the pure-Python relay path will be used"
