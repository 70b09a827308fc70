"""The HTTP commands of `realtime`: `create`, `stop`, `ls`, `open`, `logs`, `token` and `status`."""

from __future__ import annotations

import json
import os
import sys
import webbrowser
from pathlib import Path
from typing import Any

import click
import httpx

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
from realtime.client._http import HttpError, WorkspaceApi

__all__ = ["api_commands"]

#: Never uploaded by `create --dir`: what the sandbox makes itself or what is not the project's.
SKIPPED_DIRS = frozenset({"node_modules", ".git", ".next", ".workspaces", "__pycache__", ".venv"})
#: `create --dir` refuses a folder past these (the server's body limit is 32 MiB by default).
MAX_UPLOAD_FILES = 10_000
MAX_UPLOAD_BYTES = 24 * 1024 * 1024


def folder_files(root: Path) -> dict[str, str | bytes]:
    """The files of a local folder as the API takes them, relative paths with `/`, links skipped."""
    if not root.is_dir():
        raise Failed(f"--dir {str(root)!r} is not a directory")
    files: dict[str, str | bytes] = {}
    total = 0
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames if name not in SKIPPED_DIRS)
        for name in sorted(filenames):
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            content = path.read_bytes()
            total += len(content)
            if len(files) >= MAX_UPLOAD_FILES or total > MAX_UPLOAD_BYTES:
                raise Failed(f"--dir {str(root)!r} is over {MAX_UPLOAD_FILES} files or "
                             f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MiB (node_modules and .git are skipped)")
            try:
                files[path.relative_to(root).as_posix()] = content.decode("utf-8")
            except UnicodeDecodeError:
                files[path.relative_to(root).as_posix()] = content
    return files


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _env_pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


@click.command()
@project_argument()
@click.option("--dir", "folder", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="upload this folder's files (node_modules, .git and .next are skipped); default: the template")
@click.option("--env", "env", multiple=True, callback=_env_pairs, metavar="NAME=VALUE",
              help="an environment variable of the workspace (repeatable)")
@click.option("--wait/--no-wait", default=False, show_default=True, help="return once the preview is ready")
@click.option("--json", "as_json", is_flag=True, help="print the whole answer as JSON")
@command_options
@runs
async def create(
    project: str, folder: Path | None, env: dict[str, str], wait: bool, as_json: bool, url: str, token: str | None
) -> int:
    """Provision a project's workspace (or reconnect to it), from a local folder or the template."""
    files = folder_files(folder) if folder is not None else None
    async with WorkspaceApi(url, token_of(token), timeout=None if wait else 60) as api:
        created = await api.create(project, files=files, env=env or None, wait=wait)
    if as_json:
        _print_json(created)
    else:
        preview = f"  {created['preview_url']}" if created.get("preview_url") else ""
        click.echo(f"{project}: {created.get('state')}{preview}")
    return 1 if created.get("state") == "failed" else 0


@click.command()
@project_argument()
@command_options
@runs
async def stop(project: str, url: str, token: str | None) -> int:
    """Stop a project's workspace (its files stay; `create` starts it again)."""
    async with WorkspaceApi(url, token_of(token)) as api:
        await api.stop(project)
    click.echo(f"{project}: stopped")
    return 0


@click.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="print the snapshots as JSON")
@command_options
@runs
async def list_workspaces(as_json: bool, url: str, token: str | None) -> int:
    """List the workspaces the service knows, with their state."""
    async with WorkspaceApi(url, token_of(token)) as api:
        workspaces = await api.list()
    if as_json:
        _print_json(workspaces)
        return 0
    rows = [("PROJECT", "STATE", "OWNER", "SEQ")] + [
        (w.get("project_id", ""), w.get("state", ""), w.get("owner") or "", str(w.get("seq", ""))) for w in workspaces
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


@click.command(name="open")
@project_argument()
@click.option("--browser", is_flag=True, help="open it in the default browser instead of printing it")
@command_options
@runs
async def open_preview(project: str, browser: bool, url: str, token: str | None) -> int:
    """Print (or open) a freshly signed preview URL of the project."""
    async with WorkspaceApi(url, token_of(token)) as api:
        preview = await api.refresh_preview(project)
    preview_url = preview.get("preview_url")
    if not preview_url:
        raise Failed(f"{project} has no preview ({preview.get('state')})")
    if browser and webbrowser.open(preview_url):
        note(f"opened {project}'s preview")
    else:
        click.echo(preview_url)
    return 0


@click.command()
@project_argument()
@click.option("-n", "--lines", "count", type=click.IntRange(min=1, max=100_000), default=100, show_default=True,
              help="how many of the last log lines")
@click.option("--source", "sources", multiple=True, type=click.Choice(LOG_SOURCES),
              help="only this source (repeatable)")
@command_options
@runs
async def logs(project: str, count: int, sources: tuple[str, ...], url: str, token: str | None) -> int:
    """Print the last log lines of a project from its history (`tail` follows live)."""
    async with WorkspaceApi(url, token_of(token)) as api:
        latest = int((await api.get(project)).get("seq") or 0)
        window = max(1000, count * 4)
        while True:
            since = max(0, latest - window)
            lines = await _log_lines(api, project, since, latest, sources)
            if len(lines) >= count or since == 0:
                break
            window *= 4
    for stream, text in lines[-count:]:
        write(sys.stderr if stream == "stderr" else sys.stdout, text)
    return 0


async def _log_lines(
    api: WorkspaceApi, project: str, since: int, until: int, sources: tuple[str, ...]
) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    while since < until:
        page = await api.events(project, since=since, limit=10_000)
        if not page["events"]:
            break
        for event in page["events"]:
            data = event.get("data") or {}
            if event["kind"] == "log" and (not sources or data.get("source") in sources):
                stream = data.get("stream", "stdout")
                lines.extend((stream, line) for line in str(data.get("text", "")).splitlines(keepends=True))
        since = page["events"][-1]["seq"]
    return lines


@click.command(name="token")
@project_argument()
@click.option("--scope", type=click.Choice(["read", "write"]), default="read", show_default=True)
@click.option("--ttl", type=click.IntRange(min=1), default=None, help="lifetime in seconds  [server default: 3600]")
@click.option("--json", "as_json", is_flag=True, help="print {token, expires_at, scope}")
@command_options
@runs
async def mint(project: str, scope: str, ttl: int | None, as_json: bool, url: str, token: str | None) -> int:
    """Mint a session token for a project and print it."""
    async with WorkspaceApi(url, token_of(token)) as api:
        minted = await api.mint_token(project, scope=scope, ttl_s=ttl)  # type: ignore[arg-type]
    click.echo(json.dumps(minted) if as_json else minted["token"])
    return 0


@click.command()
@project_argument(required=False)
@command_options
@runs
async def status(project: str | None, url: str, token: str | None) -> int:
    """A workspace's snapshot, or the server's health, readiness and workspaces."""
    if project is not None:
        async with WorkspaceApi(url, token_of(token)) as api:
            _print_json(await api.get(project))
        return 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
    if health.is_error:
        raise Failed(f"{url}/healthz: HTTP {health.status_code}")
    report: dict[str, Any] = {"url": url, "healthz": health.json(), "readyz": ready.json()}
    if token:
        try:
            async with WorkspaceApi(url, token) as api:
                # One line per workspace: what `realtime status PROJECT` would show in full.
                report["workspaces"] = [
                    {key: snapshot.get(key) for key in ("project_id", "state", "detail", "owner", "seq")}
                    for snapshot in await api.list()
                ]
        except HttpError as exc:
            note(str(exc))
    _print_json(report)
    return 0 if ready.is_success else 1


def api_commands() -> list[click.Command]:
    return [create, stop, list_workspaces, open_preview, logs, mint, status]
