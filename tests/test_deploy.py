"""The Dockerfile and deploy/compose.yaml against the service they deploy: every variable they set is
a setting (and a valid value of it), every command they run exists with the options they pass."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from realtime.config.settings import Settings, source
from realtime.web.api import routes

REPO = Path(__file__).resolve().parent.parent
#: Variables read by something other than `Settings`: the CLI's log format, and the Modal SDK's own.
OTHER_NAMES = {"WORKSPACE_LOG_FORMAT", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_ENVIRONMENT"}
#: Compose's own: builds the two URLs and Caddy's hosts; not passed to the service.
COMPOSE_ONLY = {"WORKSPACE_DOMAIN"}


def known_names() -> set[str]:
    names = {source(field.name) for field in dataclasses.fields(Settings)}
    return {name for name in names if name and not name.startswith("--")} | OTHER_NAMES


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    return loaded


def substituted(value: object) -> str:
    """A compose value with `${NAME:?…}`/`${NAME:-default}` filled as a user's .env would."""
    samples = {"WORKSPACE_DOMAIN": "workspaces.example.com", "WORKSPACE_MODAL_INBOUND_CIDRS": "203.0.113.0/24"}

    def fill(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        if name in samples:
            return samples[name]
        return default if match.group(2) == ":-" else "x" * 48

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", fill, str(value))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: substituted(value) for name, value in env.items()}


def instances() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def test_the_dockerfile_sets_only_settings_and_runs_a_real_command() -> None:
    instructions = dockerfile()
    env_names = [
        pair.split("=", 1)[0] for kind, args in instructions if kind == "ENV" for pair in shlex.split(args)
    ]
    ours = [name for name in env_names if name.startswith(("WORKSPACE_", "REDIS_"))]
    assert ours and set(ours) <= known_names(), set(ours) - known_names()
    env = dict(pair.split("=", 1) for kind, args in instructions if kind == "ENV" for pair in shlex.split(args))
    Settings.from_env({name: env[name] for name in ours}, host="127.0.0.1")
    assert [args for kind, args in instructions if kind == "USER"] == ["qai"]  # not root
    [cmd] = [args for kind, args in instructions if kind == "CMD"]
    argv = yaml.safe_load(cmd)  # the JSON form
    assert argv[:2] == ["realtime", "serve"]
    _accepted_by_the_cli(argv[1:])
    [health] = [args for kind, args in instructions if kind == "HEALTHCHECK"]
    probe = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", health)
    assert probe and probe.group(1) == argv[argv.index("--port") + 1]
    assert probe.group(2) in {route.path for route in routes}


def _accepted_by_the_cli(args: list[str]) -> None:
    """The command's options exist: `--help` after them parses them and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", *args, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for option in (arg for arg in args if arg.startswith("--")):
        assert option in result.stdout, option


def test_compose_instances_set_only_settings_with_values_the_service_accepts() -> None:
    services = instances()
    assert len(services) >= 2  # the point of the file: several instances sharing Redis
    for name, service in services.items():
        env = service_env(service)
        unknown = set(env) - known_names()
        assert not unknown, (name, unknown)
        settings = Settings.from_env(env, host="0.0.0.0", port=8000)
        assert settings.redis_url and settings.proxy_headers and settings.runtime == "modal", name
        assert settings.signing_key == Settings.from_env(service_env(services[next(iter(services))]),
                                                         host="0.0.0.0").signing_key
    ids = [service_env(service)["WORKSPACE_INSTANCE_ID"] for service in services.values()]
    assert len(set(ids)) == len(ids)


def test_compose_wires_redis_and_the_proxy_to_the_instances() -> None:
    services = compose()["services"]
    redis_host = re.match(r"redis://([\w-]+):", service_env(next(iter(instances().values())))["REDIS_URL"])
    assert redis_host and redis_host.group(1) in services
    caddyfile = (REPO / "deploy" / "Caddyfile").read_text()
    upstreams = re.findall(r"([\w-]+):8000", caddyfile)
    assert upstreams and set(upstreams) == set(instances())
    assert "*.preview.{$WORKSPACE_DOMAIN}" in caddyfile  # the wildcard preview host
    example = (REPO / "deploy" / ".env.example").read_text()
    names = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert names <= known_names() | COMPOSE_ONLY, names - known_names() - COMPOSE_ONLY
    required = set(re.findall(r"\$\{(\w+):\?", (REPO / "deploy" / "compose.yaml").read_text()))
    assert required <= names, required - names
