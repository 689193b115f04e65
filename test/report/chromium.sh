#!/usr/bin/env bash
# Debian's chromium for the report test: installed when missing (CI machines install what they need).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
/usr/bin/chromium --version 2>/dev/null
