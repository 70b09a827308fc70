#!/usr/bin/env bash
# The local runtime runs every workspace process in a bubblewrap sandbox with a network of its own
# (pasta, from Debian's passt; private ranges refused with `ip rule`, from iproute2) and limits
# (prlimit, setpriv: util-linux) when WORKSPACE_ISOLATION=sandbox (the default): install what is missing.
set -euo pipefail
missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v pasta >/dev/null || missing+=(passt)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
{ command -v setpriv && command -v prlimit && command -v nsenter; } >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "ensure-bwrap: installing ${missing[*]} with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
bwrap --version
