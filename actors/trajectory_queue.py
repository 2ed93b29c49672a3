"""The bounded trajectory queue between the actors and the policy learner.

It holds object references, never arrays: each actor's ``unroll`` call returns two objects, a
small metadata dict and the trajectory itself; the queue waits on the metadata and hands the
trajectory references to the learner, which fetches them straight from the object store.
The driver (the caller) owns both objects, so an actor dying after an unroll loses nothing.

Bounds and back-pressure: at most ``capacity`` unrolls are outstanding (running or finished but
not yet consumed); an actor gets its next ``unroll`` call only when there is room, so when the
learner is the bottleneck actors wait, and the policy lag stays bounded. Each actor has at most
one call in flight, so its unrolls reach the learner in the order it made them.

Stale data is dropped, not trained on: an unroll whose acting policy is more than
``max_policy_lag`` versions behind the learner is discarded and counted.

The queue counts each actor's unroll calls from ``first_unrolls`` (``next_unrolls``): an actor's
randomness is a function of its unroll index, so a resumed run builds its actors at the saved
``next_unrolls`` and they continue their streams instead of replaying them. (An actor Ray
restarts mid-run draws from fresh streams, ``ActorWorker``'s seed offset, so it never repeats
episodes either.)

``prefetch=False`` (the in-process runtime, where every call runs when it is made) starts an
unroll only when ``get`` needs one: acting ahead would only add policy lag there, and the queue
is empty between batches, so a checkpoint holds everything needed to continue exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Sequence


@dataclasses.dataclass
class QueueStats:
    """Counters since the start of the run (the runtime turns them into rates)."""
    unrolls_received: int = 0
    unrolls_consumed: int = 0
    unrolls_dropped_stale: int = 0
    unrolls_failed: int = 0
    consumer_wait_s: float = 0.0
    lags: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=1000))


class TrajectoryQueue:
    """Bounded queue of unroll results, fed by ``actor.unroll`` calls.

    Args:
      backend: ``RayBackend`` or ``LocalBackend`` (``actors.backend``).
      actors: actor handles with an ``unroll()`` method returning ``(metadata, trajectory)``;
        ``metadata["policy_version"]`` is the policy version the unroll acted with.
      capacity: most unrolls outstanding at once (in flight + ready). Must be >= len(actors).
      max_policy_lag: drop unrolls whose policy is more than this many versions old.
      on_actor_failure: called with (actor_index, exception) when an unroll call fails.
      max_consecutive_failures: an actor whose unrolls fail this many times in a row is broken
        (not merely restarted): the queue raises instead of retrying it forever.
      first_unrolls: the index of each actor's first unroll call (default 0 for every actor).
      prefetch: keep ``capacity`` unrolls outstanding (True), or start them only on demand.
    """

    def __init__(self, backend, actors: Sequence[Any], capacity: int, max_policy_lag: int,
                 on_actor_failure: Callable[[int, BaseException], None] | None = None,
                 max_consecutive_failures: int = 5, first_unrolls: Sequence[int] | None = None,
                 prefetch: bool = True):
        if capacity < len(actors):
            raise ValueError(f"queue capacity ({capacity}) must be at least the number of actors "
                             f"({len(actors)}), or some actors would never run.")
        if max_policy_lag < 0:
            raise ValueError(f"max_policy_lag must be >= 0, got {max_policy_lag}.")
        self._backend = backend
        self._actors = list(actors)
        self.capacity = capacity
        self.max_policy_lag = max_policy_lag
        self._on_actor_failure = on_actor_failure
        self._max_failures = max_consecutive_failures
        self._failures_in_a_row = collections.Counter()
        self._in_flight: dict[Any, tuple[int, Any]] = {}  # metadata ref -> (actor index, traj ref)
        self._ready: collections.deque = collections.deque()  # (metadata, traj ref)
        self._idle_actors: collections.deque = collections.deque(range(len(self._actors)))
        self.next_unrolls = list(first_unrolls) if first_unrolls is not None else [0] * len(self._actors)
        if len(self.next_unrolls) != len(self._actors):
            raise ValueError(f"first_unrolls has {len(self.next_unrolls)} entries for "
                             f"{len(self._actors)} actors.")
        self.prefetch = prefetch
        self.stats = QueueStats()

    def __len__(self) -> int:
        """Unrolls outstanding: in flight plus ready."""
        return len(self._in_flight) + len(self._ready)

    def _submit(self, wanted: int | None = None):
        """Start unrolls on idle actors while there is room (at most ``wanted`` more outstanding
        than ready, when given)."""
        while self._idle_actors and len(self) < self.capacity:
            if wanted is not None and len(self) >= wanted:
                return
            i = self._idle_actors.popleft()
            self.next_unrolls[i] += 1
            meta_ref, traj_ref = self._actors[i].unroll.options(num_returns=2).remote()
            self._in_flight[meta_ref] = (i, traj_ref)

    def _collect(self, timeout: float | None):
        """Move finished calls to the ready list (waiting up to ``timeout`` for at least one)."""
        if not self._in_flight:
            return
        done, _ = self._backend.wait(list(self._in_flight), num_returns=1, timeout=timeout)
        # Take everything else that is already finished too, without waiting.
        more, _ = self._backend.wait([r for r in self._in_flight if r not in done],
                                     num_returns=len(self._in_flight) - len(done), timeout=0)
        for ref in list(done) + list(more):
            i, traj_ref = self._in_flight.pop(ref)
            self._idle_actors.append(i)
            try:
                meta = self._backend.get(ref)
            except Exception as e:  # pylint: disable=broad-except
                self.stats.unrolls_failed += 1
                self._failures_in_a_row[i] += 1
                if self._on_actor_failure is None:
                    raise
                if self._failures_in_a_row[i] >= self._max_failures:
                    raise RuntimeError(f"actor {i} failed {self._failures_in_a_row[i]} unrolls in a "
                                       f"row; the last error was: {e}") from e
                self._on_actor_failure(i, e)
                continue
            self._failures_in_a_row[i] = 0
            self.stats.unrolls_received += 1
            self._ready.append((meta, traj_ref))

    def get(self, num_unrolls: int, learner_version: int, timeout_s: float = 600.0):
        """Block until ``num_unrolls`` fresh unrolls are ready; return [(metadata, trajectory ref)].

        Unrolls more than ``max_policy_lag`` versions behind ``learner_version`` are dropped.
        Raises ``TimeoutError`` if no unroll arrives for ``timeout_s`` seconds (actors hung).
        """
        if num_unrolls > self.capacity:
            raise ValueError(f"asked for {num_unrolls} unrolls per batch but the queue holds at most "
                             f"{self.capacity}; raise the queue capacity.")
        out = []
        start = time.perf_counter()
        last_progress = start
        stale_in_a_row = 0
        while len(out) < num_unrolls:
            wanted = None if self.prefetch else num_unrolls - len(out)
            self._submit(wanted)
            while self._ready and len(out) < num_unrolls:
                meta, traj_ref = self._ready.popleft()
                lag = learner_version - int(meta["policy_version"])
                if lag > self.max_policy_lag:
                    self.stats.unrolls_dropped_stale += 1
                    stale_in_a_row += 1
                    if stale_in_a_row > 10 * self.capacity:
                        raise RuntimeError(
                            f"the last {stale_in_a_row} unrolls were all more than {self.max_policy_lag} "
                            f"policy versions behind the learner (version {learner_version}); the actors "
                            "are not receiving new parameters.")
                    continue
                stale_in_a_row = 0
                self.stats.lags.append(lag)
                out.append((meta, traj_ref))
            if len(out) < num_unrolls:
                self._submit(None if self.prefetch else num_unrolls - len(out))
                received = self.stats.unrolls_received + self.stats.unrolls_failed
                self._collect(timeout=1.0)
                now = time.perf_counter()
                if self.stats.unrolls_received + self.stats.unrolls_failed > received:
                    last_progress = now
                elif now - last_progress > timeout_s:
                    raise TimeoutError(f"no unroll arrived from any of {len(self._actors)} actors for "
                                       f"{timeout_s:.0f} s; are the actors alive (see `ray status`)?")
        if self.prefetch:
            self._submit()  # keep the actors busy while the learner trains on this batch
        self.stats.consumer_wait_s += time.perf_counter() - start
        self.stats.unrolls_consumed += len(out)
        return out

    def lag_summary(self) -> dict[str, float]:
        lags = self.stats.lags
        if not lags:
            return {"policy_lag_mean": 0.0, "policy_lag_max": 0.0}
        return {"policy_lag_mean": sum(lags) / len(lags), "policy_lag_max": float(max(lags))}
