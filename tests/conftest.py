from __future__ import annotations

import importlib
import pkgutil
import secrets
from collections.abc import Iterator

# Imported here, at a shallow stack: the hypothesis plugin otherwise imports its internals lazily
# from deep inside pytest's terminal summary, where CPython 3.11.7's parser can fail with
# "SystemError: AST constructor recursion depth mismatch" under pytest's assertion rewriting.
import hypothesis.internal.conjecture.providers  # noqa: F401
import pytest
import redis


def _import_anyio_eagerly() -> None:
    """The same for anyio: it is a pytest plugin, so its modules are rewritten too, and it imports
    several (`open_process`, `Path`, …) lazily, deep inside a test."""
    import anyio

    for module in pkgutil.walk_packages(anyio.__path__, "anyio."):
        if "trio" not in module.name and "pytest_plugin" not in module.name:
            importlib.import_module(module.name)


_import_anyio_eagerly()

#: The Redis this machine runs (CI starts one when none answers). Tests use their own key prefix.
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def anyio_backend() -> str:
    """Run anyio tests on asyncio only: redis.asyncio and Modal are asyncio-only."""
    return "asyncio"


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def broker_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test once per broker: servers built by `tests.harness.make_settings` pick it up."""
    if request.param == "memory":
        yield "memory"
        return
    prefix = "qaitest-" + secrets.token_hex(6)
    monkeypatch.setenv("QAI_TEST_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("QAI_TEST_REDIS_PREFIX", prefix)
    try:
        yield "redis"
    finally:
        delete_prefix(REDIS_URL, prefix)
