"""Structured logs: context bound per task reaches every record, in text and in JSON."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import anyio
import orjson
import pytest

from realtime.config import logs

pytestmark = pytest.mark.anyio


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter("i-1"))
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_context_follows_tasks_and_stays_in_them(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured

    async def socket(project_id: str, connection_id: str) -> None:
        logs.bind(project_id=project_id, connection_id=connection_id)

        async def child() -> None:
            logger.info("from a child task of %s", connection_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(child)

    async with anyio.create_task_group() as tg:
        tg.start_soon(socket, "p1", "c_1")
        tg.start_soon(socket, "p2", "c_2")
    logger.info("outside")
    lines = records(stream)
    by_message = {line["message"]: line for line in lines}
    assert by_message["from a child task of c_1"]["project_id"] == "p1"
    assert by_message["from a child task of c_1"]["connection_id"] == "c_1"
    assert by_message["from a child task of c_2"]["project_id"] == "p2"
    assert "project_id" not in by_message["outside"]
    assert all(line["instance"] == "i-1" and line["level"] == "info" for line in lines)


def test_exceptions_and_explicit_extras(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"project_id": "given"})
    (line,) = records(stream)
    assert line["project_id"] == "given"
    assert line["level"] == "error"
    assert "ValueError: boom" in str(line["exc"])


def test_text_format_appends_the_context() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    logs.ContextFilter("i-2").filter(record)
    record.project_id = "demo"
    text = logs.TextFormatter("%(levelname)s %(message)s").format(record)
    assert text == "WARNING hello you [instance=i-2 project_id=demo]"
