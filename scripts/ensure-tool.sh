#!/usr/bin/env bash
# A program some tests drive (libfaketime's `faketime` for the clock-skew test, `ip` and `nft` for the
# network-fault harness): install its Debian package when it is missing and we can; otherwise say how.
# Usage: ensure-tool.sh PROGRAM PACKAGE WHY
set -euo pipefail
program="$1" package="$2" why="$3"
command -v "$program" >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing $package for $why (apt-get install $package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$package" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$package" >/dev/null; }
else
  echo "$why needs '$program': on Debian or Ubuntu, 'sudo apt-get install $package' (those tests are skipped" \
       "until then)." >&2
fi
