"""`realtime serve` moves what start-up made out of the garbage collector's reach (`gc.freeze`), so
full collections walk only what the service makes while it serves; servers built in tests do not."""

from __future__ import annotations

import gc
import socket

import pytest
import uvicorn
from starlette.applications import Starlette

from realtime.fanout.hub import Hub
from realtime.fanout.outbox import OutboxLimits
from realtime.log.memory import MemoryBroker
from realtime.web.server import Server

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("freeze", [True, False])
async def test_startup_freezes_the_heap_only_when_asked(freeze: bool) -> None:
    hub = Hub(MemoryBroker(), OutboxLimits())
    config = uvicorn.Config(Starlette(), lifespan="off", log_config=None)
    server = Server(config, hub, 1.0, freeze_heap=freeze)
    config.load()  # as uvicorn's `serve` does before `startup`
    server.lifespan = config.lifespan_class(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    gc.unfreeze()
    try:
        await server.startup(sockets=[sock])
        assert (gc.get_freeze_count() > 0) is freeze
        await server.shutdown(sockets=[sock])
    finally:
        gc.unfreeze()
        sock.close()
