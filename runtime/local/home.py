"""A sandbox's home directory, seeded once with the npm settings of the workspace image.

The Modal image (`workspace.Dockerfile`) sets `NPM_CONFIG_UPDATE_NOTIFIER=false`,
`NPM_CONFIG_FUND=false` and `NPM_CONFIG_AUDIT=false`. A local sandbox's environment is the contract's
only (no npm variables), and its home is new and empty, so without them npm asks the registry for
its own latest version on a workspace's first `npm run dev` before it runs the script: about
0.4 s of every warm start (benchmarks/RESULTS.md). The same settings go into the home's `.npmrc`
instead, written once; the workspace may change it afterwards (it is its own home).

The home belongs to the workspace's uid, so whatever is there may have been planted by the
workspace: `.npmrc` is created only if nothing by that name exists (a symlink included: never
followed), through a descriptor of the home opened without following a symlink either.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["NPMRC", "seed_home"]

#: What a new sandbox home's `.npmrc` holds.
NPMRC = """\
# Written once by the workspace service: the npm settings of the workspace image (workspace.Dockerfile).
update-notifier=false
fund=false
audit=false
"""


def seed_home(home: Path, uid: int | None) -> None:
    """Give `home` its `.npmrc` unless it has one (or anything by that name); owned by `uid` when given."""
    directory = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            fd = os.open(".npmrc", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=directory)
        except FileExistsError:
            return  # the workspace's own (or planted: left alone, not followed)
        with contextlib.closing(os.fdopen(fd, "w")) as out:
            out.write(NPMRC)
            if uid is not None:
                os.fchown(out.fileno(), uid, uid)
    finally:
        os.close(directory)
