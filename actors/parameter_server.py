"""The parameter service: the newest version of each published set of parameters, by reference.

Learners ``ray.put`` each new version once and publish the reference here; actors ask for the
newest one at the start of each unroll (pull, not push: a pushed update can be lost while an actor
is busy). References are wrapped in a one-element list so Ray hands them over as references
instead of resolving them. In the local runtime the "reference" is the parameters themselves.

It holds nothing that cannot be published again: Ray restarts it after a crash (empty, with a
new ``incarnation``), the runtime notices the new incarnation and has the learners publish again,
and meanwhile actors keep acting with the parameters they hold.
"""

from __future__ import annotations

import os


class ParameterServer:
    """Holds ``name -> (version, [reference])``; versions only move forward, except by ``force``."""

    def __init__(self):
        self._latest: dict[str, tuple[int, list]] = {}
        self.incarnation = os.urandom(4).hex()

    def get_incarnation(self) -> str:
        """Differs after each restart of the server's process."""
        return self.incarnation

    def publish(self, name: str, version: int, wrapped_ref: list, force: bool = False) -> int:
        """Make ``version`` the newest of ``name``. An older (or equal) version arriving late is
        ignored unless ``force`` (a learner restored to an earlier state replaces what it had
        published, whose reference may have died with its old process)."""
        current = self._latest.get(name)
        if current is not None and version <= current[0] and not force:
            return current[0]
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

