"""The offline fake of `modal` (tests/fake_modal) cannot accept a call the installed SDK would reject.

Every public class, method, property and parameter of the fake is checked against the installed
`modal` package: same kind of member, same blocking / `.aio` shape (coroutine or async generator),
every fake parameter exists in the real signature with the same kind and default, every required
real parameter is required by the fake, and the exception hierarchy, enums and dataclasses match.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import inspect
from typing import Any

import modal
import modal.container_process
import modal.exception
import modal.io_streams
import modal.sandbox.sandbox
import modal.stream_type
import modal.types
import pytest
from modal._utils.async_utils import synchronizer as real_synchronizer

from tests import fake_modal
from tests.fake_modal._impl import synchronizer as fake_synchronizer

#: (dotted name, fake object, real object): every wrapped class the fake exposes.
CLASSES = [
    ("App", fake_modal.App, modal.App),
    ("Dict", fake_modal.Dict, modal.Dict),
    ("Image", fake_modal.Image, modal.Image),
    ("Secret", fake_modal.Secret, modal.Secret),
    ("Sandbox", fake_modal.Sandbox, modal.Sandbox),
    ("container_process.ContainerProcess", fake_modal.container_process.ContainerProcess,
     modal.container_process.ContainerProcess),
    ("io_streams.StreamReader", fake_modal.io_streams.StreamReader, modal.io_streams.StreamReader),
    ("io_streams.StreamWriter", fake_modal.io_streams.StreamWriter, modal.io_streams.StreamWriter),
    ("sandbox.sandbox.SandboxFilesystem", fake_modal.sandbox.sandbox.SandboxFilesystem,
     modal.sandbox.sandbox.SandboxFilesystem),
]

_MISSING = object()


def _members(cls: type) -> dict[str, Any]:
    """Public members defined by the class itself (plus async iteration), as stored in its dict."""
    return {name: value for name, value in vars(cls).items()
            if (not name.startswith("_") or name in ("__aiter__", "__iter__"))}


def _shape(value: Any) -> str:
    if isinstance(value, property):
        return "property"
    kind = type(value).__name__
    if kind in ("FunctionWithAio", "MethodWithAio"):
        return "aio"
    if isinstance(value, staticmethod | classmethod):
        return "sync-static"
    if inspect.isfunction(value):
        return "sync"
    return kind


def _same_default(fake: Any, real: Any) -> bool:
    if fake is inspect.Parameter.empty or real is inspect.Parameter.empty:
        return fake is real
    if isinstance(fake, enum.Enum) and isinstance(real, enum.Enum):
        return (fake.name, fake.value) == (real.name, real.value)
    return bool(type(fake) is type(real) and fake == real)


def _check_signature(where: str, fake: inspect.Signature, real: inspect.Signature) -> list[str]:
    problems = []
    real_params = real.parameters
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    fake_pos = [p.name for p in fake.parameters.values() if p.kind in positional]
    real_pos = [p.name for p in real_params.values() if p.kind in positional]
    if fake_pos != real_pos[: len(fake_pos)]:
        problems.append(f"{where}: positional parameters {fake_pos} are not a prefix of {real_pos}")
    for name, param in fake.parameters.items():
        other = real_params.get(name)
        if other is None:
            problems.append(f"{where}: parameter {name!r} does not exist in modal")
            continue
        if param.kind != other.kind:
            problems.append(f"{where}: {name!r} is {param.kind.name}, modal has {other.kind.name}")
        if not _same_default(param.default, other.default):
            problems.append(f"{where}: {name!r} defaults to {param.default!r}, modal to {other.default!r}")
    for name, other in real_params.items():
        required = other.default is inspect.Parameter.empty and other.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if required and name not in fake.parameters:
            problems.append(f"{where}: required parameter {name!r} is missing from the fake")
    return problems


def _impl(synchronizer: Any, cls: type) -> type:
    return synchronizer._translate_in(cls)  # the class the blocking wrapper was made from


@pytest.mark.parametrize(("name", "fake", "real"), CLASSES, ids=[c[0] for c in CLASSES])
def test_class_members_match_modal(name: str, fake: type, real: type) -> None:
    problems: list[str] = []
    fake_impl, real_impl = _impl(fake_synchronizer, fake), _impl(real_synchronizer, real)
    for member, value in _members(fake).items():
        where = f"{name}.{member}"
        other = inspect.getattr_static(real, member, _MISSING)  # inherited members count
        if other is _MISSING:
            problems.append(f"{where}: modal has no such member")
            continue
        if _shape(value) != _shape(other):
            problems.append(f"{where}: fake is {_shape(value)}, modal is {_shape(other)}")
            continue
        if isinstance(value, property) or member.startswith("__"):
            continue
        fake_attr, real_attr = getattr(fake, member), getattr(real, member)
        if hasattr(fake_attr, "aio") != hasattr(real_attr, "aio"):
            problems.append(f"{where}: `.aio` presence differs")
        # coroutine vs async generator, on the implementation classes
        f_orig, r_orig = getattr(fake_impl, member), getattr(real_impl, member)
        for check in (inspect.iscoroutinefunction, inspect.isasyncgenfunction):
            if check(f_orig) != check(r_orig):
                problems.append(f"{where}: {check.__name__} differs")
        problems += _check_signature(where, inspect.signature(fake_attr), inspect.signature(real_attr))
        if hasattr(fake_attr, "aio"):
            problems += _check_signature(where + ".aio", inspect.signature(fake_attr.aio),
                                         inspect.signature(real_attr.aio))
    assert problems == []


def test_top_level_names_exist_in_modal() -> None:
    for name in fake_modal.__all__:
        if name in ("CLOUD", "FakeCloud"):
            continue  # the fake's control plane, not part of the SDK surface
        assert hasattr(modal, name), name
    for module in ("exception", "types", "stream_type", "io_streams", "container_process"):
        fake_mod, real_mod = getattr(fake_modal, module), getattr(modal, module)
        for name in fake_mod.__all__:
            assert hasattr(real_mod, name), f"modal.{module}.{name}"


def test_removed_apis_are_absent() -> None:
    """The APIs removed in 1.6.0 (or never there) must not exist in the fake either."""
    for name in ("open", "ls", "mkdir", "rm", "watch"):
        assert not hasattr(fake_modal.Sandbox, name)
    for name in ("kill", "terminate", "pid"):
        assert not hasattr(fake_modal.container_process.ContainerProcess, name)
    assert not hasattr(fake_modal.Image.from_registry, "aio")
    assert not hasattr(fake_modal.Image.from_dockerfile, "aio")
    assert not hasattr(fake_modal.Secret.from_name, "aio")


def test_exception_hierarchy_matches_modal() -> None:
    names = fake_modal.exception.__all__
    for name in names:
        fake_cls, real_cls = getattr(fake_modal.exception, name), getattr(modal.exception, name)
        for other in names:
            fake_other, real_other = getattr(fake_modal.exception, other), getattr(modal.exception, other)
            assert issubclass(fake_cls, fake_other) == issubclass(real_cls, real_other), (name, other)
        for builtin in (builtins.TimeoutError, builtins.ConnectionError, builtins.OSError):
            assert issubclass(fake_cls, builtin) == issubclass(real_cls, builtin), (name, builtin)
    assert fake_modal.Error is fake_modal.exception.Error
    assert fake_modal.exception.TimeoutError is not builtins.TimeoutError
    assert fake_modal.exception.ConnectionError is not builtins.ConnectionError


@pytest.mark.parametrize("name", ["StreamType", "FileType", "FileWatchEventType"])
def test_enums_match_modal(name: str) -> None:
    module = "stream_type" if name == "StreamType" else "types"
    fake = getattr(getattr(fake_modal, module), name)
    real = getattr(getattr(modal, module), name)
    assert {m.name: m.value for m in fake} == {m.name: m.value for m in real}
    assert issubclass(fake, enum.Enum) and issubclass(real, enum.Enum)


@pytest.mark.parametrize(
    ("fake", "real"),
    [
        (fake_modal.types.FileInfo, modal.types.FileInfo),
        (fake_modal.types.FileWatchEvent, modal.types.FileWatchEvent),
        (fake_modal.Tunnel, modal.Tunnel),
        (fake_modal.types.SandboxConnectCredentials, modal.types.SandboxConnectCredentials),
    ],
)
def test_dataclasses_match_modal(fake: type, real: type) -> None:
    def describe(cls: type) -> list[tuple[str, bool]]:
        return [(f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                for f in dataclasses.fields(cls)]

    assert describe(fake) == describe(real)
    assert fake.__dataclass_params__.frozen == real.__dataclass_params__.frozen  # type: ignore[attr-defined]
    fake_members = {n for n in vars(fake) if not n.startswith("_")}
    assert fake_members <= set(dir(real))


def test_tunnel_url_matches_modal() -> None:
    for port in (443, 8443):
        assert fake_modal.Tunnel("abc.modal.host", port, "", 0).url == modal.Tunnel("abc.modal.host", port, "", 0).url
