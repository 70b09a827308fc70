"""The `realtime` command line: `realtime serve [--host] [--port]`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dotenv import load_dotenv

from realtime.app import create_app
from realtime.server import Server, uvicorn_config
from realtime.settings import ConfigError, Settings

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(host=args.host, port=args.port)
    except ConfigError as exc:
        print(f"realtime: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.token_generated:
        print(f"realtime: dev token (WORKSPACE_TOKEN): {settings.token}", flush=True)
    print(f"realtime: serving on http://{args.host}:{args.port} (runtime {settings.runtime})", flush=True)
    app = create_app(settings)
    config = uvicorn_config(app, settings, host=args.host, port=args.port, log_level=args.log_level)
    Server(config, app.state.hub, settings.drain_timeout_s).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    load_dotenv(".env", override=False)
    parser = argparse.ArgumentParser(prog="realtime", description="QAI workspace service")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=_serve)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
