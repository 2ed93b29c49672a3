"""The parameter service: the newest version of each published set of parameters, by reference.

Learners ``ray.put`` each new version once and publish the reference here; actors ask for the
newest one at the start of each unroll (pull, not push: a pushed update can be lost while an actor
is busy). References are wrapped in a one-element list so Ray hands them over as references
instead of resolving them. In the local runtime the "reference" is the parameters themselves.
"""

from __future__ import annotations

from typing import Any


class ParameterServer:
    """Holds ``name -> (version, [reference])``; versions only move forward."""

    def __init__(self):
        self._latest: dict[str, tuple[int, list]] = {}

    def publish(self, name: str, version: int, wrapped_ref: list) -> int:
        current = self._latest.get(name)
        if current is not None and version <= current[0]:
            return current[0]  # an out-of-order older publish never replaces a newer one
        self._latest[name] = (int(version), wrapped_ref)
        return int(version)

    def latest(self, name: str, have_version: int = -1) -> tuple[int, list] | None:
        """The newest (version, [ref]) of ``name`` if newer than ``have_version``, else None."""
        current = self._latest.get(name)
        if current is None or current[0] <= have_version:
            return None
        return current

    def versions(self) -> dict[str, int]:
        return {name: v for name, (v, _) in self._latest.items()}


def unwrap(backend, wrapped: Any):
    """Fetch the parameters behind a published ``[reference]``."""
    return backend.get(wrapped[0])
