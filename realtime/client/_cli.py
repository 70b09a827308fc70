"""The client commands of `realtime` (click): the channel ones here (`tail`, `exec`, `shell`), the HTTP ones in
`_cli_api.py` (`create`, `stop`, `ls`, `open`, `logs`, `token`, `status`); what they share in
`_cli_common.py`. Exit codes: `exec` exits with the command's own code; every command exits 125 when
it could not do its job, 130 on Ctrl-C, 2 on a usage error.
"""

from __future__ import annotations

import json
import logging
import sys

import anyio
import click

from realtime.client._cli_common import (
    LOG_SOURCES,
    Failed,
    command_options,
    note,
    project_argument,
    runs,
    token_of,
    write,
)
from realtime.client._connection import connect
from realtime.client._errors import CommandLost
from realtime.client._events import Event, Gap, Log, Reset
from realtime.client._http import HttpError, WorkspaceApi
from realtime.client._shell import attach_terminal, pump_stdin

__all__ = ["client_commands"]


# -- tail ----------------------------------------------------------------------------------------


@click.command()
@project_argument()
@click.option("--since", type=click.IntRange(min=0), default=None,
              help="replay the events after this seq first (0: all)")
@click.option("--source", "sources", multiple=True, type=click.Choice(LOG_SOURCES),
              help="only logs of this source (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="every event as one JSON line instead")
@command_options
@runs
async def tail(
    project: str, since: int | None, sources: tuple[str, ...], as_json: bool, url: str, token: str | None
) -> int:
    """Follow a project's logs live, resuming across restarts."""
    logging.getLogger("realtime.client").setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("realtime: %(message)s"))
    logging.getLogger("realtime.client").addHandler(handler)
    token = token_of(token)
    async with WorkspaceApi(url, token) as api:
        try:
            await api.get(project)
        except HttpError as exc:
            if exc.code != "not_found":
                raise
            note(f"{project} has no workspace yet; waiting for one to start (realtime create {project})")
    async with connect(url, token, project, since=since) as ws:
        async for item in ws.events():
            match item:
                case Reset():
                    note(f"the log could not be resumed (epoch {item.epoch}); continuing after seq {item.since}")
                case Gap():
                    note(f"events {item.expected}..{item.got - 1} are missing")
                case Log() if sources and item.source not in sources:
                    pass
                case Event() if as_json:
                    line = {"seq": item.seq, "ts": item.ts, "kind": item.kind, "data": item.data}
                    write(sys.stdout, json.dumps(line) + "\n")
                case Log():
                    write(sys.stderr if item.stream == "stderr" else sys.stdout, item.text)
    return 0


# -- exec ----------------------------------------------------------------------------------------


@click.command(context_settings={"ignore_unknown_options": True})
@project_argument()
@click.option("--cwd", default=None, help="the directory to run in, relative to the workspace root")
@click.option("-i", "--interactive", is_flag=True, help="send this terminal's stdin to the command (EOF ends it)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="seconds  [server default: 600]")
@command_options
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED, required=True)
@runs
async def exec_command(
    project: str, cwd: str | None, interactive: bool, timeout_s: float | None, url: str, token: str | None,
    cmd: tuple[str, ...],
) -> int:
    """Run a command in a workspace and exit with its exit code.

    Options go before the command; everything after `--` is the command, options included
    (`realtime exec demo --cwd app -- ls -la`). One word runs under `sh -c`
    (`realtime exec demo -- 'npm test && ls'`); several are the argv.
    """
    argv = list(cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise Failed("exec needs a command: realtime exec PROJECT [OPTIONS] -- CMD [ARG…]")
    command: str | list[str] = argv[0] if len(argv) == 1 else argv

    def output(log: Log) -> None:
        write(sys.stderr if log.stream == "stderr" else sys.stdout, log.text)

    async with connect(url, token_of(token), project, events=False) as ws, anyio.create_task_group() as tg:

        def started(command_id: str) -> None:
            if interactive:
                tg.start_soon(pump_stdin, ws, command_id)

        try:
            result = await ws.run(command, cwd=cwd, timeout_s=timeout_s, output=output,
                                  stdin=interactive, started=started)
        except CommandLost as exc:
            raise Failed(str(exc)) from None
        finally:
            tg.cancel_scope.cancel()
    if result.exit_code is None:
        raise Failed(f"command {result.command_id} was lost with the instance running it; its exit code is unknown")
    if result.timed_out:
        note(f"command {result.command_id} timed out")
    return result.exit_code


exec_command.name = "exec"


# -- shell ---------------------------------------------------------------------------------------


@click.command()
@project_argument()
@command_options
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@runs
async def shell(project: str, url: str, token: str | None, cmd: tuple[str, ...]) -> int:
    """A terminal in a workspace, attached to this one in raw mode (restored on exit); exits with its code.

    CMD defaults to the workspace's login shell.
    """
    async with connect(url, token_of(token), project) as ws:
        try:
            return await attach_terminal(ws, list(cmd) or None)
        except ValueError as exc:
            raise Failed(str(exc)) from None


def client_commands() -> list[click.Command]:
    """Every client command, for `realtime`'s group."""
    from realtime.client._cli_api import api_commands

    return [tail, exec_command, shell, *api_commands()]
