"""The injected `modal` module: which of its failures are transient, retrying them, and saying what to fix.

Transient (retried with exponential backoff, jitter and a cap, by stamina): modal's
`ConnectionError`, `ServiceError`, `InternalError`, `ResourceExhaustedError`, a bare modal
`TimeoutError` (not its sandbox or exec subclasses), an image build cut by an external shut-down,
a terminated gRPC stream, and `SandboxUnavailable`. Only idempotent calls may go through
`Provider.call`. Everything else raises `ProviderError` at once, with a message naming the
setting or the action that fixes it; the SDK's exception stays the `__cause__`.

The module is passed in (`ModalRuntime(modal_module=…)`), never imported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, TypeVar

import stamina

from runtime.errors import FileNotFound, NotADirectory, PathError, ProviderError
from runtime.modal.config import ModalConfig, RetryPolicy

__all__ = ["Provider", "SandboxGone", "SandboxUnavailable", "first_exception"]

T = TypeVar("T")


class SandboxUnavailable(Exception):
    """A filesystem call said "Sandbox is unavailable" while the sandbox still runs: transient."""


class SandboxGone(Exception):
    """A filesystem call failed and the sandbox no longer runs: permanent."""


def first_exception(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first leaf of a (nested) exception group: what a task group's one failing child raised."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class Provider:
    """The `modal` module (`m`, its exceptions `exc`), with error classification, retries and messages."""

    def __init__(self, module: ModuleType, config: ModalConfig) -> None:
        self.m = module
        self.exc = module.exception
        self.config = config
        self.policy: RetryPolicy = config.retry

    def transient(self, exc: Exception) -> bool:
        e = self.exc
        if isinstance(exc, SandboxUnavailable):
            return True
        if isinstance(exc, e.ServiceError | e.InternalError | e.ConnectionError | e.ResourceExhaustedError):
            return True
        if isinstance(exc, e.TimeoutError):
            # A bare modal TimeoutError is an RPC/scheduling timeout; its sandbox/exec subclasses are not.
            return not isinstance(exc, e.SandboxTimeoutError | e.ExecTimeoutError)
        if isinstance(exc, e.ImageBuildError):
            return "external shut-down" in str(exc)
        return type(exc).__name__ == "StreamTerminatedError"  # grpclib's, leaks through the SDK

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` (idempotent!), retrying transient failures; raise ProviderError for the rest."""
        p = self.policy
        try:
            async for attempt in stamina.retry_context(
                on=self.transient, attempts=p.attempts, timeout=p.timeout, wait_initial=p.wait_initial,
                wait_max=p.wait_max, wait_jitter=p.wait_jitter,
            ):
                with attempt:
                    return await fn()
        except (ProviderError, FileNotFound, NotADirectory, PathError):
            raise
        except SandboxGone as exc:
            raise ProviderError(f"{what}: the sandbox has ended ({exc}); POST /api/workspaces to start a new one "
                                "(from its newest snapshot)") from None
        except Exception as exc:
            if isinstance(exc, self.exc.Error) or self.transient(exc):
                raise ProviderError(self.explain(what, exc)) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def explain(self, what: str, exc: Exception) -> str:
        e, c = self.exc, self.config
        detail = f"{type(exc).__name__}: {exc}"
        if self.transient(exc):
            return (f"Modal is unavailable: {what} still failed after {self.policy.attempts} attempts ({detail}); "
                    "try again later")
        if isinstance(exc, e.AuthError):
            return (f"Modal rejected the credentials during {what} ({detail}): set MODAL_TOKEN_ID and "
                    "MODAL_TOKEN_SECRET (or ~/.modal.toml) to a valid token")
        if isinstance(exc, e.PermissionDeniedError):
            return f"the Modal token may not {what} ({detail}): use a token with access to app {c.app_name!r}"
        if isinstance(exc, e.ImageBuildError):
            source = f"WORKSPACE_IMAGE={c.image!r}" if c.image else str(c.template_dir / "workspace.Dockerfile")
            return f"the sandbox image failed to build during {what} ({detail}): fix {source}"
        if isinstance(exc, e.NotFoundError):
            hint = f"check that the image WORKSPACE_IMAGE={c.image!r} exists" if c.image else "check the app"
            if c.registry_secret:
                hint += (f" and that the Modal secret WORKSPACE_MODAL_REGISTRY_SECRET={c.registry_secret!r} exists "
                         "with REGISTRY_USERNAME and REGISTRY_PASSWORD (`modal secret create`)")
            return f"Modal could not find something needed to {what} ({detail}): {hint}"
        if isinstance(exc, e.ConflictError | e.SandboxTerminatedError | e.SandboxTimeoutError):
            return f"could not {what}: the sandbox has ended ({detail}); POST /api/workspaces to start a new one"
        if isinstance(exc, e.InvalidError):
            return f"Modal refused to {what} as invalid ({detail}): check the WORKSPACE_MODAL_* settings"
        return f"Modal failed to {what} ({detail})"
