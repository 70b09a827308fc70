#!/usr/bin/env bash
# The local runtime runs every workspace process in a bubblewrap sandbox (WORKSPACE_ISOLATION=sandbox):
# install Debian's bubblewrap when missing.
set -euo pipefail
command -v bwrap >/dev/null && exit 0
echo "ensure-bwrap: installing bubblewrap with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
bwrap --version
