#!/usr/bin/env bash
# The local runtime runs every workspace process in a bubblewrap sandbox with a network of its own
# (pasta, from Debian's passt) when WORKSPACE_ISOLATION=sandbox (the default): install both when missing.
set -euo pipefail
if ! command -v bwrap >/dev/null || ! command -v pasta >/dev/null; then
    echo "ensure-bwrap: installing bubblewrap and passt with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap passt >/dev/null
    bwrap --version
fi
# pasta runs unprivileged and opens /dev/net/tun inside the workspace's namespace: the device must
# be usable by every user, as udev makes it on a desktop (some container hosts leave it 0600).
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ] && [ "$(id -u)" = 0 ]; then
    chmod 0666 /dev/net/tun
    echo "ensure-bwrap: made /dev/net/tun usable by unprivileged users (chmod 0666)" >&2
fi
