#!/usr/bin/env bash
# The browser tests (tests/browser) drive the system's Chromium; Playwright's own browser download
# needs the internet. Install Debian's package when it is missing and we can; otherwise say how.
set -euo pipefail
chromium="${1:-/usr/bin/chromium}"
[ -x "$chromium" ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing Chromium for the browser tests (apt-get install chromium)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
else
  echo "The browser tests need Chromium at $chromium: on Debian or Ubuntu, 'sudo apt-get install chromium'" \
       "(or set TEST_CHROMIUM to another Chromium)." >&2
fi
