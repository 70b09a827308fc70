"""The `realtime` command line (click): `serve` and `check` here, `gc` and `image build` (the Modal
runtime's, by hand), the client commands (`create`, `stop`, `ls`, `open`, `logs`, `tail`, `exec`,
`token`, `status`) in `realtime.client._cli`, and `completion`.

Shell completion: `eval "$(realtime completion bash)"` (or zsh, fish).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import anyio
import click
from click.shell_completion import get_completion_class
from dotenv import load_dotenv

from realtime.client._cli import client_commands
from realtime.config import logs
from realtime.config.envfile import help_text
from realtime.config.masking import secret_values
from realtime.config.settings import ConfigError, Settings
from realtime.config.variables import describe, unknown_names
from realtime.web.app import create_app, modal_config
from realtime.web.server import Server, uvicorn_config

__all__ = ["cli", "main"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def _epilog() -> str:
    """Every setting's variable, default and description (`realtime.config.variables`), unwrapped."""
    return "\b\n" + help_text().replace("\n\n", "\n")


def _config_errors(exc: ConfigError, fmt: logs.Format = "text") -> NoReturn:
    """Every problem of the configuration, each with the variable's description; exit status 2."""
    for problem in exc.problems:
        described = describe(problem.split(" ", 1)[0])
        logs.say(fmt, f"configuration error: {problem}", level="error", err=True,
                 **({"help": described} if described else {}))
    sys.exit(2)


def _settings(host: str, port: int, fmt: logs.Format = "text") -> Settings:
    try:
        return Settings.from_env(host=host, port=port)
    except ConfigError as exc:
        _config_errors(exc, fmt)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="qai-workspace", prog_name="realtime")
def cli() -> None:
    """QAI workspace service: sandboxes, live logs and signed previews for every project."""
    load_dotenv(".env", override=False)


def _listen_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
                      help="the port to listen on")(fn)
    return click.option("--host", default="127.0.0.1", show_default=True,
                        help="the address to listen on; off loopback, WORKSPACE_TOKEN and WORKSPACE_SIGNING_KEY "
                             "are required")(fn)


@cli.command(epilog=_epilog())
@_listen_options
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="WORKSPACE_LOG_FORMAT", show_envvar=True,
              help="json: one object per line with instance, project_id and connection_id")
def serve(host: str, port: int, log_level: str, log_format: logs.Format) -> None:
    """Start the server."""
    settings = _settings(host, port, log_format)
    logs.configure(log_level, log_format, settings.instance_id, secret_values(settings))
    if settings.token_generated:
        logs.say(log_format, "dev token (WORKSPACE_TOKEN)", token=settings.token)
    for name, close in unknown_names(os.environ):
        if close is None:
            logs.say(log_format, f"{name} is not a setting of this service (ignored)", level="warning", err=True)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        _config_errors(exc, log_format)
    if settings.runtime == "local" and settings.isolation == "none":
        logs.say(log_format, "WORKSPACE_ISOLATION=none: workspaces run as the server's user and can read its "
                 "secrets; use it on a trusted machine only", level="warning", err=True)
    logs.say(log_format, f"serving on http://{host}:{port} (runtime {settings.runtime})")
    config = uvicorn_config(app, settings, host=host, port=port, log_level=log_level)
    Server(config, app.state.hub, settings.drain_timeout_s, freeze_heap=True).run()


@cli.command(epilog=_epilog())
@_listen_options
def check(host: str, port: int) -> None:
    """Print the effective configuration (secrets masked) and check it: exit 0 if all passed, 1 if a
    check failed, 2 if the configuration itself is wrong."""
    from realtime.check import config_findings, exit_code, format_report, run_checks
    from realtime.config.masking import effective_config

    settings = _settings(host, port)
    findings = [*config_findings(None), *anyio.run(run_checks, settings)]
    click.echo(format_report(effective_config(settings), findings))
    sys.exit(exit_code(findings))


# -- the Modal runtime by hand: `realtime gc`, `realtime image build` ---------------------------------


def _modal_settings() -> Settings:
    settings = _settings("127.0.0.1", 8000)
    if settings.runtime != "modal":
        click.echo(f"realtime: WORKSPACE_RUNTIME is {settings.runtime!r}; this command is for the modal runtime",
                   err=True)
        sys.exit(2)
    return settings


@cli.command()
@click.option("--all", "every", is_flag=True, help="without REDIS_URL: end every sandbox of this service")
def gc(every: bool) -> None:
    """End the Modal sandboxes no workspace owns (an active one in the registry); print what it ended."""
    from runtime.errors import RuntimeFailure
    from runtime.modal import ModalRuntime

    settings = _modal_settings()
    if not settings.redis_url and not every:
        click.echo("realtime gc: without REDIS_URL no registry says which workspaces are owned; pass --all to end "
                   "every sandbox of this service (only while no server runs)", err=True)
        sys.exit(2)
    runtime = ModalRuntime(modal_config(settings))

    async def sweep() -> list[str]:
        if not settings.redis_url:
            async def nobody(project_id: str) -> bool:
                return False

            return await runtime.sweep(nobody)
        from realtime.redis.connection import connect
        from realtime.redis.keys import RedisKeys

        client = connect(settings.redis_url, client_name="realtime-gc")
        active = RedisKeys(settings.redis_prefix).active

        async def owned(project_id: str) -> bool:
            return bool(await client.sismember(active, project_id))  # type: ignore[misc]

        try:
            return await runtime.sweep(owned)
        finally:
            await client.aclose()

    try:
        ended = anyio.run(sweep)
    except RuntimeFailure as exc:
        click.echo(f"realtime gc: {exc}", err=True)
        sys.exit(1)
    for line in ended:
        click.echo(f"ended {line}")
    click.echo(f"realtime gc: {len(ended)} orphaned sandbox(es) ended")


@cli.group()
def image() -> None:
    """The Modal workspace image."""


@image.command()
def build() -> None:
    """Build (or pull) the workspace image once and print its id, for WORKSPACE_IMAGE."""
    from runtime.errors import RuntimeFailure
    from runtime.modal import ModalRuntime

    runtime = ModalRuntime(modal_config(_modal_settings()))
    try:
        image_id = anyio.run(runtime.build_image)
    except RuntimeFailure as exc:
        click.echo(f"realtime image build: {exc}", err=True)
        sys.exit(1)
    click.echo(image_id)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(realtime completion bash)"."""
    completer = get_completion_class(shell)
    assert completer is not None
    click.echo(completer(cli, {}, "realtime", "_REALTIME_COMPLETE").source())


for _command in client_commands():
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command and return its exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="realtime",
                 complete_var="_REALTIME_COMPLETE")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
