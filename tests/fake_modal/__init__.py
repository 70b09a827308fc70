"""An offline fake of the `modal` package (1.6.4), limited to what `runtime.modal` uses.

See `_impl` for how it works; `tests/test_modal_fake.py` keeps it faithful to the real SDK.
"""

from __future__ import annotations

from . import container_process, exception, io_streams, sandbox, stream_type, types
from ._impl import CLOUD, App, Dict, FakeCloud, Image, Sandbox, Secret, Tunnel
from .exception import Error

__all__ = [
    "CLOUD",
    "App",
    "Dict",
    "Error",
    "FakeCloud",
    "Image",
    "Sandbox",
    "Secret",
    "Tunnel",
    "container_process",
    "exception",
    "io_streams",
    "sandbox",
    "stream_type",
    "types",
]
