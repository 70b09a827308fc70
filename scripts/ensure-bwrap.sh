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
if [ ${#missing[@]} -gt 0 ]; then
    echo "ensure-bwrap: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    bwrap --version
fi
# pasta runs unprivileged and opens /dev/net/tun inside the workspace's namespace: the device must
# be usable by every user, as udev makes it on a desktop (some container hosts leave it 0600).
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ] && [ "$(id -u)" = 0 ]; then
    chmod 0666 /dev/net/tun
    echo "ensure-bwrap: made /dev/net/tun usable by unprivileged users (chmod 0666)" >&2
fi
