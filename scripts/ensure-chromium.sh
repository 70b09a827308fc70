#!/usr/bin/env bash
# Browser tests drive Debian's chromium through Playwright (which cannot download its own here).
set -euo pipefail
command -v chromium >/dev/null && exit 0
echo "ensure-chromium: installing chromium with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
chromium --version
