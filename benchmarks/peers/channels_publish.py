"""Django Channels publisher: `get_channel_layer().group_send(room, {"type": "bench.message", ...})`
from a standalone script with Django settings configured (the same channel layer as the server)."""

from __future__ import annotations

import argparse
import json

import django
from django.conf import settings
from publoop import main, parse_args

settings.configure(
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [parse_args().url]}}
    },
)
django.setup()

from channels.layers import get_channel_layer  # noqa: E402


async def setup(args: argparse.Namespace):
    layer = get_channel_layer()

    async def send(room: str, message: dict[str, int]) -> None:
        await layer.group_send(room, {"type": "bench.message", "text": json.dumps(message)})

    async def close() -> None:
        await layer.close_pools()

    return send, close


if __name__ == "__main__":
    main(setup)
