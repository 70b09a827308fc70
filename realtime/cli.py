"""The `realtime` command line: `realtime serve [--host] [--port]`, `realtime check [--host] [--port]`,
and the clients `realtime tail|exec|token|status` (in `realtime.client._cli`)."""

from __future__ import annotations

import argparse
import os
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


def _config_errors(exc: ConfigError, fmt: logs.Format = "text") -> int:
    """Every problem of the configuration, each with the variable's description; exit status 2."""
    for problem in exc.problems:
        described = describe(problem.split(" ", 1)[0])
        logs.say(fmt, f"configuration error: {problem}", level="error", err=True,
                 **({"help": described} if described else {}))
    return 2


def _serve(args: argparse.Namespace) -> int:
    fmt: logs.Format = args.log_format
    try:
        settings = Settings.from_env(host=args.host, port=args.port)
    except ConfigError as exc:
        return _config_errors(exc, fmt)
    logs.configure(args.log_level, fmt, settings.instance_id, secret_values(settings))
    if settings.token_generated:
        logs.say(fmt, "dev token (WORKSPACE_TOKEN)", token=settings.token)
    for name, close in unknown_names(os.environ):
        if close is None:
            logs.say(fmt, f"{name} is not a setting of this service (ignored)", level="warning", err=True)
    try:
        app = create_app(settings)
    except ConfigError as exc:
        return _config_errors(exc, fmt)
    if settings.runtime == "local" and settings.isolation == "none":
        logs.say(fmt, "WORKSPACE_ISOLATION=none: workspaces run as the server's user and can read its secrets; "
                 "use it on a trusted machine only", level="warning", err=True)
    logs.say(fmt, f"serving on http://{args.host}:{args.port} (runtime {settings.runtime})")
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
