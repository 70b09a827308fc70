#!/usr/bin/env bash
# The local runtime runs every workspace process in a bubblewrap sandbox with a network of its own
# (pasta, from Debian's passt) when WORKSPACE_ISOLATION=sandbox (the default): install both when missing.
set -euo pipefail
command -v bwrap >/dev/null && command -v pasta >/dev/null && exit 0
echo "ensure-bwrap: installing bubblewrap and passt with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap passt >/dev/null
bwrap --version
