"""The client subcommands of `realtime`: `tail`, `exec`, `shell`, `token` and `status`.

`--url` defaults to `WORKSPACE_URL` (else http://127.0.0.1:8000), `--token` to `WORKSPACE_TOKEN`.
Exit codes: `exec` exits with the command's own code; every subcommand exits 125 when it could not
do its job (unreachable server, refused token, error reply), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import anyio
import httpx

from realtime.client._connection import connect
from realtime.client._errors import ClientError, CommandLost
from realtime.client._events import Event, Gap, Log, Reset
from realtime.client._shell import attach_terminal, pump_stdin
from realtime.client._urls import channel_url

__all__ = ["add_client_commands"]

DEFAULT_URL = "http://127.0.0.1:8000"
#: Our own failures, apart from any exit code a command can have (as `env` and `docker run` do).
EXIT_FAILED = 125
EXIT_INTERRUPTED = 130


class _Failed(Exception):
    """A failure to report in one line and exit `EXIT_FAILED` with."""


def _note(message: str) -> None:
    print(f"realtime: {message}", file=sys.stderr, flush=True)


def _write(stream: TextIO, text: str) -> None:
    # Bytes as they came (ANSI colours and all), flushed so that a pipe sees each line at once.
    stream.buffer.write(text.encode("utf-8", errors="replace"))
    stream.flush()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("WORKSPACE_URL") or DEFAULT_URL, help="$WORKSPACE_URL")
    parser.add_argument("--token", default=os.environ.get("WORKSPACE_TOKEN"), help="$WORKSPACE_TOKEN")


def _token(args: argparse.Namespace) -> str:
    if not args.token:
        raise _Failed("no token: pass --token or set WORKSPACE_TOKEN")
    token: str = args.token
    return token


def _url(args: argparse.Namespace) -> str:
    try:
        channel_url(args.url, args.project)
    except ValueError as exc:
        raise _Failed(f"--url: {exc}") from None
    url: str = args.url
    return url


def _main(run: Callable[[argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return anyio.run(run, args)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`realtime tail … | head`): stop quietly, as a filter does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except (_Failed, ClientError) as exc:
            _note(str(exc))
            return EXIT_FAILED
        except httpx.HTTPError as exc:
            _note(f"{args.url}: {type(exc).__name__}: {exc}")
            return EXIT_FAILED

    return handler


# -- tail ----------------------------------------------------------------------------------------


async def _tail(args: argparse.Namespace) -> int:
    logging.getLogger("realtime.client").setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("realtime: %(message)s"))
    logging.getLogger("realtime.client").addHandler(handler)
    sources = set(args.source or ())
    async with connect(_url(args), _token(args), args.project, since=args.since) as ws:
        async for item in ws.events():
            match item:
                case Reset():
                    _note(f"the log could not be resumed (epoch {item.epoch}); continuing after seq {item.since}")
                case Gap():
                    _note(f"events {item.expected}..{item.got - 1} are missing")
                case Log() if sources and item.source not in sources:
                    pass
                case Event() if args.json:
                    line = {"seq": item.seq, "ts": item.ts, "kind": item.kind, "data": item.data}
                    _write(sys.stdout, json.dumps(line) + "\n")
                case Log():
                    _write(sys.stderr if item.stream == "stderr" else sys.stdout, item.text)
    return 0


# -- exec ----------------------------------------------------------------------------------------


def _exec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cwd", default=None)
    parser.add_argument("-i", "--interactive", action="store_true", help="send this stdin to the command")
    parser.add_argument("--timeout", type=float, default=None, help="seconds (server default 600)")
    _common(parser)


async def _exec(args: argparse.Namespace) -> int:
    argv = list(args.cmd)
    if "--" in argv:
        # argparse's REMAINDER also takes the options between PROJECT and `--`: parse those here.
        split = argv.index("--")
        options = argparse.ArgumentParser(prog="realtime exec PROJECT")
        _exec_options(options)
        options.parse_args(argv[:split], namespace=args)
        argv = argv[split + 1 :]
    if not argv:
        raise _Failed("exec needs a command: realtime exec PROJECT -- CMD [ARG…]")
    # One word runs under `sh -c` (so `realtime exec demo -- 'npm test && ls'` works); several are argv.
    cmd: str | list[str] = argv[0] if len(argv) == 1 else argv

    def output(log: Log) -> None:
        _write(sys.stderr if log.stream == "stderr" else sys.stdout, log.text)

    async with connect(_url(args), _token(args), args.project, events=False) as ws, \
            anyio.create_task_group() as tg:

        def started(command_id: str) -> None:
            if args.interactive:
                tg.start_soon(pump_stdin, ws, command_id)

        try:
            result = await ws.run(cmd, cwd=args.cwd, timeout_s=args.timeout, output=output,
                                  stdin=args.interactive, started=started)
        except CommandLost as exc:
            raise _Failed(str(exc)) from None
        finally:
            tg.cancel_scope.cancel()
    if result.exit_code is None:
        raise _Failed(f"command {result.command_id} was lost with the instance running it; its exit code is unknown")
    if result.timed_out:
        _note(f"command {result.command_id} timed out")
    return result.exit_code


# -- shell ---------------------------------------------------------------------------------------


async def _shell(args: argparse.Namespace) -> int:
    async with connect(_url(args), _token(args), args.project) as ws:
        try:
            return await attach_terminal(ws, list(args.cmd) or None)
        except ValueError as exc:
            raise _Failed(str(exc)) from None


# -- token and status ----------------------------------------------------------------------------


async def _http(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=30) as http:
        return await http.request(method, path, **kwargs)


def _check(response: httpx.Response) -> Any:
    body: Any = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.is_success:
        return body
    error = body.get("error", {}) if isinstance(body, dict) else {}
    raise _Failed(f"HTTP {response.status_code} {error.get('code', '')}: {error.get('message', response.text[:200])}")


async def _mint(args: argparse.Namespace) -> int:
    _token(args)
    body: dict[str, Any] = {"scope": args.scope}
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    minted = _check(await _http(args, "POST", f"/api/workspaces/{args.project}/tokens", json=body))
    print(json.dumps(minted) if args.json else minted["token"], flush=True)
    return 0


async def _status(args: argparse.Namespace) -> int:
    if args.project is not None:
        _token(args)
        snapshot = _check(await _http(args, "GET", f"/api/workspaces/{args.project}"))
        print(json.dumps(snapshot, indent=2), flush=True)
        return 0
    health = _check(await _http(args, "GET", "/healthz"))
    ready = await _http(args, "GET", "/readyz")
    report: dict[str, Any] = {"url": args.url, "healthz": health, "readyz": ready.json()}
    if args.token:
        listing = await _http(args, "GET", "/api/workspaces")
        if listing.is_success:
            # One line per workspace: what `realtime status PROJECT` would show in full.
            report["workspaces"] = [
                {key: snapshot.get(key) for key in ("project_id", "state", "detail", "owner", "seq")}
                for snapshot in listing.json().get("workspaces", [])
            ]
    print(json.dumps(report, indent=2), flush=True)
    return 0 if ready.is_success else 1


def add_client_commands(commands: Any) -> None:
    """Add `tail`, `exec`, `shell`, `token` and `status` to `realtime`'s subcommands (an argparse subparsers object)."""
    tail = commands.add_parser("tail", help="follow a project's logs live, resuming across restarts")
    tail.add_argument("project")
    tail.add_argument("--since", type=int, default=None, help="replay the events after this seq first (0: all)")
    tail.add_argument(
        "--source",
        action="append",
        choices=["install", "dev", "command", "system"],
        help="only logs of this source (repeatable)",
    )
    tail.add_argument("--json", action="store_true", help="every event as one JSON line instead")
    _common(tail)
    tail.set_defaults(handler=_main(_tail))

    run = commands.add_parser("exec", help="run a command in a workspace; exits with its exit code")
    run.add_argument("project")
    _exec_options(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG…] (one word runs under sh -c)")
    run.set_defaults(handler=_main(_exec))

    shell = commands.add_parser("shell", help="a terminal in a workspace, attached to this one (raw mode)")
    shell.add_argument("project")
    _common(shell)
    shell.add_argument("cmd", nargs="*", help="the command (default: the workspace's login shell)")
    shell.set_defaults(handler=_main(_shell))

    token = commands.add_parser("token", help="mint a session token for a project and print it")
    token.add_argument("project")
    token.add_argument("--scope", default="read", choices=["read", "write"])
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default 1 hour)")
    token.add_argument("--json", action="store_true", help="print {token, expires_at, scope}")
    _common(token)
    token.set_defaults(handler=_main(_mint))

    status = commands.add_parser("status", help="a workspace's snapshot, or the server's health and workspaces")
    status.add_argument("project", nargs="?")
    _common(status)
    status.set_defaults(handler=_main(_status))
