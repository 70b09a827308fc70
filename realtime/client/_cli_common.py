"""What the client commands of `realtime` share: `--url`/`--token`, the project argument, and how a
command's failure becomes one line and an exit code.

`--url` defaults to `WORKSPACE_URL` (else http://127.0.0.1:8000), `--token` to `WORKSPACE_TOKEN`.
Exit codes: `exec` exits with the command's own code; every command exits 125 when it could not do
its job (unreachable server, refused token, error reply), 130 on Ctrl-C, 2 on a usage error.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TextIO, TypeVar

import anyio
import click
import httpx

from realtime.client._errors import ClientError
from realtime.client._urls import channel_url

__all__ = [
    "EXIT_FAILED", "LOG_SOURCES", "Failed", "command_options", "note", "project_argument", "runs", "token_of", "write",
]

DEFAULT_URL = "http://127.0.0.1:8000"
#: Our own failures, apart from any exit code a command can have (as `env` and `docker run` do).
EXIT_FAILED = 125
EXIT_INTERRUPTED = 130
#: The contract's project ids (the server checks them again).
PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
LOG_SOURCES = ("install", "dev", "command", "system")

P = ParamSpec("P")
R = TypeVar("R")


class Failed(Exception):
    """A failure to report in one line and exit `EXIT_FAILED` with."""


def note(message: str) -> None:
    click.echo(f"realtime: {message}", err=True)


def write(stream: TextIO, text: str) -> None:
    # Bytes as they came (ANSI colours and all), flushed so that a pipe sees each line at once.
    stream.buffer.write(text.encode("utf-8", errors="replace"))
    stream.flush()


def _project_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not PROJECT_ID.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} is not a project id: 1 to 64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return value


def project_argument(*, required: bool = True) -> Callable[[Callable[P, R]], Callable[P, R]]:
    return click.argument("project", required=required, callback=_project_id)


def _url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        channel_url(value, "p")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value.rstrip("/")


def command_options(fn: Callable[P, R]) -> Callable[P, R]:
    """`--url` and `--token`, from the environment when not given."""
    fn = click.option(
        "--url", envvar="WORKSPACE_URL", default=DEFAULT_URL, show_default=True, show_envvar=True, callback=_url,
        help="the service's base URL",
    )(fn)
    return click.option(
        "--token", envvar="WORKSPACE_TOKEN", show_envvar=True, help="the service token or a session token"
    )(fn)


def token_of(token: str | None) -> str:
    if not token:
        raise Failed("no token: pass --token or set WORKSPACE_TOKEN")
    return token


async def _unwrapped(fn: Callable[..., Awaitable[int]], kwargs: dict[str, Any]) -> int:
    """`fn(**kwargs)`, with a failure inside a task group raised as itself (not as a group of one)."""
    try:
        return await fn(**kwargs)
    except BaseExceptionGroup as group:
        failure: BaseException = group
        while isinstance(failure, BaseExceptionGroup) and len(failure.exceptions) == 1:
            failure = failure.exceptions[0]
        raise failure from None


def runs(fn: Callable[..., Awaitable[int]]) -> Callable[..., None]:
    """Run an async command body; turn what can go wrong into one line and an exit code."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        try:
            code = anyio.run(functools.partial(_unwrapped, fn, kwargs))
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`realtime tail … | head`): stop quietly, as a filter does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 0
        except (Failed, ClientError) as exc:
            note(str(exc))
            code = EXIT_FAILED
        except httpx.HTTPError as exc:
            note(f"{kwargs.get('url', '')}: {type(exc).__name__}: {exc}")
            code = EXIT_FAILED
        sys.exit(code)

    return command
