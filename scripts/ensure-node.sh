#!/usr/bin/env bash
# Node.js 18+ and npm run the workspaces' install and dev servers; install Debian's when missing.
set -euo pipefail
if command -v node >/dev/null && command -v npm >/dev/null; then
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -ge 18 ]; then exit 0; fi
  echo "ensure-node: node $(node --version) is too old (need 18+)" >&2
fi
echo "ensure-node: installing nodejs and npm with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
node --version
