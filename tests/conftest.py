from __future__ import annotations

import importlib
import pkgutil
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Imported here, at a shallow stack: the hypothesis plugin otherwise imports its internals lazily
# from deep inside pytest's terminal summary, where CPython 3.11.7's parser can fail with
# "SystemError: AST constructor recursion depth mismatch" under pytest's assertion rewriting.
import hypothesis.internal.conjecture.providers  # noqa: F401
import pytest
import redis

if TYPE_CHECKING:
    from tests.fake_modal import FakeCloud


def _import_anyio_eagerly() -> None:
    """The same for anyio: it is a pytest plugin, so its modules are rewritten too, and it imports
    several (`open_process`, `Path`, …) lazily, deep inside a test."""
    import anyio

    for module in pkgutil.walk_packages(anyio.__path__, "anyio."):
        if "trio" not in module.name and "pytest_plugin" not in module.name:
            importlib.import_module(module.name)


_import_anyio_eagerly()

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", 'runtime(*kinds, reason=...): run only on these runtimes of the `runtime_kind` fixture'
    )


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


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A private three-node Redis Cluster for the session (tests/redis_cluster.py); the URL of one node."""
    from tests.redis_cluster import private_cluster

    with private_cluster() as url:
        yield url


def redis_url_of(kind: str, request: pytest.FixtureRequest) -> str:
    """The Redis of a broker kind: this machine's ("redis"), or the private cluster ("redis-cluster")."""
    return str(request.getfixturevalue("redis_cluster_url")) if kind == "redis-cluster" else REDIS_URL


@pytest.fixture(params=["memory", "redis"])
def broker_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test once per broker: servers built by `tests.harness.make_settings` pick it up.

    A test module may widen it with `@pytest.mark.parametrize("broker_kind", [..., "redis-cluster"],
    indirect=True)`: the servers then use the private three-node Redis Cluster (`REDIS_CLUSTER=1`).
    """
    if request.param == "memory":
        yield "memory"
        return
    prefix = "qaitest-" + secrets.token_hex(6)
    url = redis_url_of(request.param, request)
    monkeypatch.setenv("QAI_TEST_REDIS_URL", url)
    monkeypatch.setenv("QAI_TEST_REDIS_PREFIX", prefix)
    if request.param == "redis-cluster":
        monkeypatch.setenv("QAI_TEST_REDIS_CLUSTER", "1")
    try:
        yield request.param
    finally:
        if request.param == "redis":
            delete_prefix(REDIS_URL, prefix)


@pytest.fixture(params=["local", "modal"])
def runtime_kind(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Run a test once per runtime: servers started by `tests.harness.running_server` pick it up.

    "modal" is `runtime.modal.ModalRuntime` over the offline fake of `modal` (tests/fake_modal),
    whose sandboxes are real directories and processes, and whose tunnels reach them on loopback.
    A test that only makes sense on one runtime marks itself `@pytest.mark.runtime("local")`.
    """
    marker = request.node.get_closest_marker("runtime")
    if marker is not None and request.param not in marker.args:
        pytest.skip(f"{request.param} runtime: {marker.kwargs.get('reason', 'not applicable')}")
    if request.param == "local":
        yield "local"
        return
    from tests.fake_modal import CLOUD

    root: Path = tmp_path_factory.mktemp("modal-cloud")
    CLOUD.reset(root)
    monkeypatch.setenv("QAI_TEST_RUNTIME", "modal")
    try:
        yield "modal"
    finally:
        CLOUD.shutdown()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[FakeCloud]:
    """The offline fake of Modal's cloud (tests/fake_modal), fresh for the test: faults, call counts."""
    from tests.fake_modal import CLOUD

    root = tmp_path / "cloud"
    root.mkdir()
    CLOUD.reset(root)
    try:
        yield CLOUD
    finally:
        CLOUD.shutdown()
