"""The Modal runtime: one named Modal sandbox per project, driven through the SDK's `.aio` API only.

How it maps the `runtime.base` protocols onto Modal (SDK 1.6.4), module by module:

* `runtime`: sandboxes are created named after the project, or reconnected to by name.
* `sandbox`: one project's sandbox, made of the collaborators below, all sharing `calls`
  (the SDK handle behind the retries of `provider`).
* `files`: a batch of writes is one tarball (`uploads`) and one exec that unpacks it.
* `process`: every command runs detached under a supervisor shell (`scripts`) writing its
  output to files, which the adapter tails from byte offsets: a dropped stream resumes, and
  another adapter `attach`es after a failover with no gap or repeat. `processes` starts,
  attaches, lists and lets go of them.
* `devserver`: the dev server outlives its owner: recorded in the sandbox, its delivered offsets
  checkpointed (`checkpoint`), followed on by the next owner (`runtime.base.DevReattach`).
* `watch`: file changes from `sb.filesystem.watch`, debounced, folded by `changes`, with the
  service's own writes kept out; `watchers` re-arms the watcher before its timeout (overlapping)
  and catches up after a failed one with one listing of the workspace.
* `provider`: transient failures are retried with backoff (stamina), only for idempotent calls;
  permanent ones raise `ProviderError` at once, saying what to fix.
* `snapshots` and `keeper`: the workspace is snapshotted (`snapshot_filesystem`) while it changes
  and on `suspend` (runtime.base.Suspendable); the ids are recorded per project (a Modal Dict, or
  any `runtime.base.SnapshotStore`), and `open` resumes a project without a running sandbox from
  its newest one. Every exec the runtime keeps running (followers, the watch) has a timeout and
  is re-armed only while followed, so Modal's `idle_timeout` ends a sandbox nobody drives.

Only this package imports the `modal` SDK, and only when a `ModalRuntime` is built without one.
"""

from runtime.modal.config import ModalConfig, RetryPolicy, sandbox_name
from runtime.modal.process import ModalProcess
from runtime.modal.runtime import ModalRuntime
from runtime.modal.sandbox import ModalSandbox

__all__ = ["ModalConfig", "ModalProcess", "ModalRuntime", "ModalSandbox", "RetryPolicy", "sandbox_name"]
