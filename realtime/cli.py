"""The `realtime` command line: `realtime serve [--host] [--port]`, `realtime check [--host] [--port]`,
and the clients `realtime tail|exec|token|status` (in `realtime.client._cli`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import anyio
from dotenv import load_dotenv

from realtime.config import logs
from realtime.config.envfile import help_text
from realtime.config.masking import secret_values
from realtime.config.settings import ConfigError, Settings
from realtime.config.variables import describe, unknown_names
from realtime.web.app import create_app
from realtime.web.server import Server, uvicorn_config

__all__ = ["main"]


def _config_errors(exc: ConfigError) -> int:
    """Every problem of the configuration, one a line with the variable's description; exit status 2."""
    for problem in exc.problems:
        print(f"realtime: configuration error: {problem}", file=sys.stderr)
        described = describe(problem.split(" ", 1)[0])
        if described:
            print(f"    ({described})", file=sys.stderr)
    return 2


def _unknown_warnings() -> list[str]:
    return [f"{name} is not a setting of this service (ignored)" for name, close in unknown_names(os.environ)
            if close is None]


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(host=args.host, port=args.port)
    except ConfigError as exc:
        return _config_errors(exc)
    logs.configure(args.log_level, args.log_format, settings.instance_id, secret_values(settings))
    if settings.token_generated:
        print(f"realtime: dev token (WORKSPACE_TOKEN): {settings.token}", flush=True)
    for warning in _unknown_warnings():
        print(f"realtime: WARNING: {warning}", file=sys.stderr, flush=True)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        return _config_errors(exc)
    if settings.runtime == "local" and settings.isolation == "none":
        print("realtime: WARNING: WORKSPACE_ISOLATION=none: workspaces run as the server's user "
              "and can read its secrets; use it on a trusted machine only", file=sys.stderr, flush=True)
    print(f"realtime: serving on http://{args.host}:{args.port} (runtime {settings.runtime})", flush=True)
    config = uvicorn_config(app, settings, host=args.host, port=args.port, log_level=args.log_level)
    Server(config, app.state.hub, settings.drain_timeout_s).run()
    return 0


def _check(args: argparse.Namespace) -> int:
    """Print the effective configuration (secrets masked) and the checks; 0 if none failed, 1, or 2."""
    from realtime.check import config_findings, exit_code, format_report, run_checks
    from realtime.config.masking import effective_config

    try:
        settings = Settings.from_env(host=args.host, port=args.port)
    except ConfigError as exc:  # every problem, with what each variable is for
        return _config_errors(exc)
    findings = [*config_findings(None), *anyio.run(run_checks, settings)]
    print(format_report(effective_config(settings), findings), flush=True)
    return exit_code(findings)


def main(argv: Sequence[str] | None = None) -> int:
    load_dotenv(".env", override=False)
    parser = argparse.ArgumentParser(prog="realtime", description="QAI workspace service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="start the server", epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="listen port (default: %(default)s)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="(default: %(default)s)")
    serve.add_argument(
        "--log-format", default=os.environ.get("WORKSPACE_LOG_FORMAT") or "text", choices=["text", "json"],
        help="json: one object per line with instance, project_id and connection_id (WORKSPACE_LOG_FORMAT)",
    )
    serve.set_defaults(handler=_serve)
    check = commands.add_parser(
        "check", help="print the effective configuration and check it", epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--host", default="127.0.0.1", help="as for serve: off loopback, secrets are required")
    check.add_argument("--port", type=int, default=8000)
    check.set_defaults(handler=_check)
    from realtime.client._cli import add_client_commands  # tail, exec, token, status

    add_client_commands(commands)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
