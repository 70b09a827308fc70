"""Summarise py-spy collapsed stacks (`py-spy record -f raw`, as `fanout.py --profile` writes them).

    .venv/bin/python benchmarks/profile_summary.py benchmarks/.work/profiles/fan-small-rate-qai.txt [--top 20]

Prints the share of samples by the function on top of the stack (self time) and by every function
on the stack (inclusive time), grouped by `module:function` (line numbers dropped).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/realtime/", "/runtime/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1] if marker != "/realtime/" else "realtime/" + path.split(marker, 1)[1]
            break
    return f"{path.rsplit(':', 1)[0]}:{match.group('fn')}"


def summarise(path: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"{path.name}: {total} samples", "", "self %  | function (top of stack)"]
    lines += [f"{100 * n / total:6.1f} | {name}" for name, n in own.most_common(top)]
    lines += ["", "incl % | function (anywhere on the stack)"]
    lines += [f"{100 * n / total:6.1f} | {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top) + "\n")


if __name__ == "__main__":
    main()
