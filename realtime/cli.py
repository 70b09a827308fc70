"""The `realtime` command line: `realtime serve [--host] [--port]`, `realtime check [--host] [--port]`,
`realtime gc [--all]` and `realtime image build` (the Modal runtime's), and the clients
`realtime tail|exec|token|status` (in `realtime.client._cli`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
from dotenv import load_dotenv

from realtime.config import logs
from realtime.config.masking import secret_values
from realtime.config.settings import ConfigError, Settings
from realtime.web.app import create_app, modal_config
from realtime.web.server import Server, uvicorn_config

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(host=args.host, port=args.port)
    except ConfigError as exc:
        print(f"realtime: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_level, args.log_format, settings.instance_id, secret_values(settings))
    if settings.token_generated:
        print(f"realtime: dev token (WORKSPACE_TOKEN): {settings.token}", flush=True)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"realtime: configuration error: {exc}", file=sys.stderr)
        return 2
    if settings.runtime == "local" and settings.isolation == "none":
        print("realtime: WARNING: WORKSPACE_ISOLATION=none: workspaces run as the server's user "
              "and can read its secrets; use it on a trusted machine only", file=sys.stderr, flush=True)
    print(f"realtime: serving on http://{args.host}:{args.port} (runtime {settings.runtime})", flush=True)
    config = uvicorn_config(app, settings, host=args.host, port=args.port, log_level=args.log_level)
    Server(config, app.state.hub, settings.drain_timeout_s).run()
    return 0


def _check(args: argparse.Namespace) -> int:
    """Print the effective configuration (secrets masked) and the checks; 0 if none failed, 1, or 2."""
    from realtime.check import exit_code, format_report, run_checks
    from realtime.config.masking import effective_config

    try:
        settings = Settings.from_env(host=args.host, port=args.port)
    except ConfigError as exc:
        print(f"realtime: configuration error: {exc}", file=sys.stderr)
        return 2
    findings = anyio.run(run_checks, settings)
    print(format_report(effective_config(settings), findings), flush=True)
    return exit_code(findings)


# -- the Modal runtime by hand: `realtime gc`, `realtime image build` (issue 15) ---------------------


def _modal_settings() -> Settings | None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"realtime: configuration error: {exc}", file=sys.stderr)
        return None
    if settings.runtime != "modal":
        print(f"realtime: WORKSPACE_RUNTIME is {settings.runtime!r}; this command is for the modal runtime",
              file=sys.stderr)
        return None
    return settings


def _gc(args: argparse.Namespace) -> int:
    """End every sandbox of this service that no workspace owns (an active one in the registry)."""
    from runtime.errors import RuntimeFailure
    from runtime.modal import ModalRuntime

    settings = _modal_settings()
    if settings is None:
        return 2
    if not settings.redis_url and not args.all:
        print("realtime gc: without REDIS_URL no registry says which workspaces are owned; pass --all to end "
              "every sandbox of this service (only while no server runs)", file=sys.stderr)
        return 2
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
        print(f"realtime gc: {exc}", file=sys.stderr)
        return 1
    for line in ended:
        print(f"ended {line}", flush=True)
    print(f"realtime gc: {len(ended)} orphaned sandbox(es) ended", flush=True)
    return 0


def _image_build(args: argparse.Namespace) -> int:
    """Build (or pull) the workspace image once and print its id, for WORKSPACE_IMAGE."""
    from runtime.errors import RuntimeFailure
    from runtime.modal import ModalRuntime

    settings = _modal_settings()
    if settings is None:
        return 2
    runtime = ModalRuntime(modal_config(settings))
    try:
        image_id = anyio.run(runtime.build_image)
    except RuntimeFailure as exc:
        print(f"realtime image build: {exc}", file=sys.stderr)
        return 1
    print(image_id, flush=True)
    return 0


def _add_modal_commands(commands: Any) -> None:
    gc = commands.add_parser("gc", help="end the Modal sandboxes no workspace owns; print what it ended")
    gc.add_argument("--all", action="store_true", help="without REDIS_URL: end every sandbox of this service")
    gc.set_defaults(handler=_gc)
    image = commands.add_parser("image", help="the Modal workspace image")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    build = image_commands.add_parser("build", help="build (or pull) the image once and print its id")
    build.set_defaults(handler=_image_build)


def main(argv: Sequence[str] | None = None) -> int:
    load_dotenv(".env", override=False)
    parser = argparse.ArgumentParser(prog="realtime", description="QAI workspace service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format", default=os.environ.get("WORKSPACE_LOG_FORMAT") or "text", choices=["text", "json"],
        help="json: one object per line with instance, project_id and connection_id (WORKSPACE_LOG_FORMAT)",
    )
    serve.set_defaults(handler=_serve)
    check = commands.add_parser("check", help="print the effective configuration and check it")
    check.add_argument("--host", default="127.0.0.1", help="as for serve: off loopback, secrets are required")
    check.add_argument("--port", type=int, default=8000)
    check.set_defaults(handler=_check)
    _add_modal_commands(commands)
    from realtime.client._cli import add_client_commands  # tail, exec, token, status

    add_client_commands(commands)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
