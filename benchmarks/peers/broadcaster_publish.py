"""broadcaster publisher: `broadcast.publish(channel, message)` with the message as JSON text."""

from __future__ import annotations

import argparse
import json

from broadcaster import Broadcast
from publoop import main


async def setup(args: argparse.Namespace):
    broadcast = Broadcast(args.url)
    await broadcast.connect()

    async def send(room: str, message: dict[str, int]) -> None:
        await broadcast.publish(channel=room, message=json.dumps(message))

    return send, broadcast.disconnect


if __name__ == "__main__":
    main(setup)
