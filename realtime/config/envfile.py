"""`.env.example` and the settings' help text, rendered from `realtime.config.variables`.

A setting's description is written once, in `Variables`; this module words it for a file (`python -m
realtime.config.envfile > .env.example` regenerates it; a test keeps the file equal to `render`) and
for a terminal (`help_text`, the epilog of `serve --help` and `check --help`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from realtime.config.variables import EXTRA_VARIABLES, Variables, variable_names

__all__ = ["help_text", "render"]

_HEADER = (
    "# Copy to .env (read by `realtime serve`; real environment variables win).\n"
    "# Generated from realtime/config/variables.py: edit the descriptions there, then\n"
    "# `python -m realtime.config.envfile > .env.example`.\n"
)


def _example(field: str) -> tuple[str, bool]:
    """The value shown for `field`, and whether the line is commented out (no default, an example)."""
    info = Variables.model_fields[field]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    example: Any = extra.get("example")
    if example is not None:
        return str(example), bool(extra.get("commented"))
    default = info.default
    if default is None:
        return "", False
    if isinstance(default, bool):
        return ("true" if default else "false"), False
    if isinstance(default, float) and default.is_integer():
        return str(int(default)), False
    if isinstance(default, Path):
        return str(default), False
    return str(default), False


def render() -> str:
    """The text of `.env.example`: each variable's description as comments, then `NAME=value`."""
    parts = [_HEADER]
    for name, field in variable_names().items():
        description = Variables.model_fields[field].description or ""
        value, commented = _example(field)
        comment = "\n".join("# " + line for line in textwrap.wrap(description, 98))
        parts.append(f"{comment}\n{'# ' if commented else ''}{name}={value}\n")
    for name, description in EXTRA_VARIABLES.items():
        if name.startswith("MODAL_"):
            parts.append(f"# {description}\n{name}=\n")
    return "\n".join(parts)


def help_text() -> str:
    """Every variable with its default and description, for `--help`."""
    lines = ["environment (also read from ./.env):"]
    for name, field in variable_names().items():
        info = Variables.model_fields[field]
        default = "" if info.default is None else f" [default: {_example(field)[0] if info.default != '' else ''}]"
        if field in ("service_url", "preview_url", "token", "signing_key"):
            default = ""
        lines.append(f"  {name}{default}")
        lines += textwrap.wrap(info.description or "", 96, initial_indent="      ", subsequent_indent="      ")
    for name, description in EXTRA_VARIABLES.items():
        lines.append(f"  {name}")
        lines += textwrap.wrap(description, 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
