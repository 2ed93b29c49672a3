"""The replay of final canvases the discriminator trains on (SPIRAL: the last 20 batches of 64).

A ring buffer of uint8 images, allocated once. Actors ``add`` final canvases (and, for a
conditional discriminator, the targets they painted); the learner ``sample``s uniformly with
replacement from what it holds. ``add`` copies into the buffer and keeps no reference to its
inputs, so arrays received from Ray (read-only, zero-copy) can be freed as soon as it returns.
When full, each new canvas overwrites the oldest one; one call adding more than the capacity
keeps its newest ``capacity`` canvases, as a sequence of single adds would.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from spiral.discriminator import inputs as inputs_lib
from spiral.discriminator.config import IMAGE_SIZE, DiscriminatorConfig


class Replay:
    """Bounded, uniform replay of final canvases (and their targets when conditional)."""

    def __init__(self, capacity: int, image_channels: int = 1, conditional: bool = False, seed: int = 0,
                 image_size: int = IMAGE_SIZE):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}.")
        if image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {image_channels}.")
        self.capacity = int(capacity)
        self.image_channels = int(image_channels)
        self.conditional = bool(conditional)
        self.image_size = int(image_size)
        shape = (self.capacity, self.image_size, self.image_size, self.image_channels)
        self._canvases = np.zeros(shape, np.uint8)
        self._targets = np.zeros(shape, np.uint8) if self.conditional else None
        self._size = 0
        self._next = 0  # slot the next canvas goes to
        self._added = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # a threaded Ray actor may add and sample concurrently

    @classmethod
    def from_config(cls, config: DiscriminatorConfig, seed: int = 0) -> "Replay":
        return cls(config.replay_capacity, config.image_channels, config.conditional, seed,
                   config.image_size)

    def __len__(self) -> int:
        return self._size

    @property
    def num_added(self) -> int:
        """Canvases added since creation (including those since overwritten)."""
        return self._added

    @property
    def nbytes(self) -> int:
        return self._canvases.nbytes + (0 if self._targets is None else self._targets.nbytes)

    def add(self, canvases, targets=None) -> None:
        """Copies final canvases [N, 64, 64, C] (uint8, or float32 in [0, 1]) into the buffer."""
        inputs_lib.check_images(canvases, "canvases", self.image_channels, self.image_size)
        if self.conditional:
            if targets is None:
                raise ValueError("This replay is conditional: pass the targets the canvases were painted from.")
            inputs_lib.check_images(targets, "targets", self.image_channels, self.image_size)
            if len(targets) != len(canvases):
                raise ValueError(f"canvases and targets must be as many, got {len(canvases)} and {len(targets)}.")
        elif targets is not None:
            raise ValueError("targets were given to an unconditional replay (conditional=False).")
        count = len(canvases)
        keep = min(count, self.capacity)
        with self._lock:
            slots = (self._next + np.arange(keep)) % self.capacity
            # uint8 passes through untouched; float32 is rounded to the nearest of 256 levels.
            self._canvases[slots] = inputs_lib.to_uint8(canvases[count - keep:])
            if self.conditional:
                self._targets[slots] = inputs_lib.to_uint8(targets[count - keep:])
            self._next = (self._next + keep) % self.capacity
            self._size = min(self._size + keep, self.capacity)
            self._added += count

    def get_state(self) -> dict:
        """The buffer's content as arrays (a copy), for checkpoints: canvases (and targets) in
        slot order, the fill level, the next slot and the count of canvases ever added."""
        with self._lock:
            state = {"canvases": self._canvases.copy(), "size": np.int64(self._size),
                     "next": np.int64(self._next), "added": np.int64(self._added)}
            if self.conditional:
                state["targets"] = self._targets.copy()
        return state

    def set_state(self, state: dict) -> None:
        """Restore ``get_state()``'s content; the capacity and image layout must be the same."""
        canvases = np.asarray(state["canvases"])
        if canvases.shape != self._canvases.shape or canvases.dtype != np.uint8:
            raise ValueError(f"saved replay holds {canvases.shape} {canvases.dtype}, this replay "
                             f"{self._canvases.shape} uint8 (different capacity or channels?).")
        if self.conditional != ("targets" in state):
            raise ValueError("saved replay and this one differ in conditional (targets).")
        size, nxt = int(state["size"]), int(state["next"])
        if not (0 <= size <= self.capacity and 0 <= nxt < self.capacity):
            raise ValueError(f"saved replay has an impossible fill level {size} / next slot {nxt}.")
        with self._lock:
            self._canvases[:] = canvases
            if self.conditional:
                self._targets[:] = np.asarray(state["targets"])
            self._size, self._next, self._added = size, nxt, int(state["added"])

    def sample(self, batch_size: int, rng: Optional[np.random.Generator] = None):
        """(canvases, targets or None), uint8 [batch_size, 64, 64, C], drawn uniformly with replacement.

        The arrays are fresh copies. ``rng`` overrides the replay's own generator (the learner
        passes one keyed by its step, for exact continuation after a restore).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        with self._lock:
            if self._size == 0:
                raise ValueError("The replay is empty: add final canvases before sampling.")
            index = (self._rng if rng is None else rng).integers(0, self._size, size=batch_size)
            canvases = self._canvases[index]
            targets = self._targets[index] if self.conditional else None
        return canvases, targets
