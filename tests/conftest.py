from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run anyio tests on asyncio only: redis.asyncio and Modal are asyncio-only."""
    return "asyncio"
