"""Finding live processes by working directory, to prove a workspace left nothing behind."""

from __future__ import annotations

import os
from pathlib import Path


def processes_under(directory: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose working directory is `directory` or below it."""
    target = str(directory.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd == target or cwd.startswith(target + os.sep)):
            found.append(int(entry))
    return found
