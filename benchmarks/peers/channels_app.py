"""Django Channels peer: `RedisChannelLayer` and an `AsyncWebsocketConsumer` per socket, under uvicorn.

The consumer adds its channel to the room's group before accepting, and forwards each
`bench.message` the group receives as a text frame. Settings are configured in this module (no
project, no database): the channel layer is channels_redis' `RedisChannelLayer` with its defaults.

Run: `uvicorn channels_app:application` with `BENCH_REDIS_URL` set.
"""

from __future__ import annotations

import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [os.environ["BENCH_REDIS_URL"]]},
        }
    },
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.urls import path  # noqa: E402

urlpatterns: list = []


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def bench_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter([path("ws/<str:room>/", RoomConsumer.as_asgi())]),
    }
)
