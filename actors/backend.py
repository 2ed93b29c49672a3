"""Two interchangeable execution backends: Ray, and a single-process stand-in with the same calls.

The runtime is written once against a tiny subset of Ray (`remote` classes, `.method.remote()`,
`get`, `wait`, `put`, `kill`). ``RayBackend`` maps it onto Ray; ``LocalBackend`` runs every call
synchronously in this process, in submission order, so that ``--runtime=local`` executes the same
code paths as the distributed runtime, deterministically and debuggably (no Ray import at all).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence


class LocalFuture:
    """The result (or exception) of a call that already ran."""

    __slots__ = ("_value", "_error", "id")
    _ids = itertools.count()

    def __init__(self, fn: Callable[[], Any]):
        self.id = next(self._ids)
        self._value, self._error = None, None
        try:
            self._value = fn()
        except Exception as e:  # re-raised by LocalBackend.get, like ray.get would
            self._error = e

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


class _LocalMethod:
    def __init__(self, bound, num_returns: int = 1):
        self._bound = bound
        self._num_returns = num_returns

    def options(self, num_returns: int = 1, **unused):
        return _LocalMethod(self._bound, num_returns)

    def remote(self, *args, **kwargs):
        args = [LocalBackend.get(a) if isinstance(a, LocalFuture) else a for a in args]
        future = LocalFuture(lambda: self._bound(*args, **kwargs))
        if self._num_returns == 1:
            return future
        if future._error is not None:  # every return value carries the failure
            return tuple(future for _ in range(self._num_returns))
        return tuple(LocalFuture(lambda v=v: v) for v in future.result())


class LocalActorHandle:
    """Wraps a plain object so that ``handle.method.remote(...)`` calls it immediately."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        return _LocalMethod(getattr(self._obj, name))


class LocalBackend:
    """Synchronous, in-process backend with Ray's calling convention."""

    name = "local"

    @staticmethod
    def create(cls, *args, num_cpus: float = 1, num_gpus: float = 0, max_restarts: int = 0,
               name: str | None = None, runtime_env: dict | None = None, **kwargs):
        del num_cpus, num_gpus, max_restarts, name, runtime_env
        return LocalActorHandle(cls(*args, **kwargs))

    @staticmethod
    def get(x, timeout: float | None = None):
        del timeout
        if isinstance(x, (list, tuple)):
            return [LocalBackend.get(v) for v in x]
        return x.result() if isinstance(x, LocalFuture) else x

    @staticmethod
    def wait(futures: Sequence[LocalFuture], num_returns: int = 1, timeout: float | None = None):
        del timeout
        futures = list(futures)
        return futures[:num_returns], futures[num_returns:]

    @staticmethod
    def put(value):
        return LocalFuture(lambda: value)

    @staticmethod
    def kill(handle, no_restart: bool = False):
        del handle, no_restart  # in-process workers end when their last reference goes

    @staticmethod
    def is_actor_error(error: BaseException) -> bool:
        return False


class RayBackend:
    """The same calls on Ray. Ray is imported here only, so the rest of the runtime stays importable."""

    name = "ray"

    def __init__(self):
        import ray  # pylint: disable=import-outside-toplevel
        self.ray = ray
        self._pinned = []  # constructor arguments of restartable actors (see create)

    def create(self, cls, *args, num_cpus: float = 1, num_gpus: float = 0, max_restarts: int = 0,
               name: str | None = None, runtime_env: dict | None = None, **kwargs):
        options = dict(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                       # An unroll is stateless: a call that died with its actor is retried on the
                       # restarted actor, so a crash costs one unroll, not the run.
                       max_task_retries=-1 if max_restarts else 0)
        if name:
            options["name"] = name
        if runtime_env:
            options["runtime_env"] = runtime_env
        if max_restarts:
            # A restart re-runs __init__ with the same arguments: keep them in the object store,
            # owned and referenced here, for as long as the run lasts (ray-project/ray#53727).
            args = [self.ray.put(a) for a in args]
            kwargs = {k: self.ray.put(v) for k, v in kwargs.items()}
            self._pinned.append((args, kwargs))
        return self.ray.remote(cls).options(**options).remote(*args, **kwargs)

    def get(self, x, timeout: float | None = None):
        return self.ray.get(x, timeout=timeout)

    def wait(self, futures, num_returns: int = 1, timeout: float | None = None):
        return self.ray.wait(list(futures), num_returns=num_returns, timeout=timeout)

    def put(self, value):
        return self.ray.put(value)

    def kill(self, handle, no_restart: bool = False):
        self.ray.kill(handle, no_restart=no_restart)

    def is_actor_error(self, error: BaseException) -> bool:
        from ray import exceptions  # pylint: disable=import-outside-toplevel
        return isinstance(error, (exceptions.RayActorError, exceptions.ObjectLostError))
