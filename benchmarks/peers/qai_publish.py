"""qai publisher: the project's own `realtime.publisher.Publisher` (run with the project's .venv).

Each message becomes a `custom` event `{"type": "bench", "data": {"i", "t"}}` in the room's log.
"""

from __future__ import annotations

import argparse

from publoop import main


async def setup(args: argparse.Namespace):
    from realtime.publisher import Publisher

    publisher = Publisher(args.url)
    await publisher.__aenter__()

    async def send(room: str, message: dict[str, int]) -> None:
        await publisher.publish(room, "bench", message)

    async def close() -> None:
        await publisher.__aexit__(None, None, None)

    return send, close


if __name__ == "__main__":
    main(setup)
