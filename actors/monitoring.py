"""What a run shows while it trains: a progress line on stdout and TensorBoard scalars and images.

One progress line every few seconds (updates, steps/s, policy lag, queue waits, reward, critic
scores), the same numbers as TensorBoard scalars, and sample canvases as image summaries. Shared
by every runtime (local, Ray, fused) so their logs read the same.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Mapping, TextIO

import numpy as np


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2,
               pad_value: float = 0.5) -> np.ndarray:
    """Tile images [N, H, W, C] (float in [0, 1] or uint8) into one [H', W', C] uint8 image."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"image_grid needs [N, H, W, C] images, got shape {images.shape}.")
    if images.dtype != np.uint8:
        images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c),
                   int(round(pad_value * 255)), np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


# Keys shown on the progress line, in order, with their format. Missing keys are skipped.
_LINE = (
    ("updates", "upd {:,.0f}"),
    ("disc_updates", "D upd {:,.0f}"),
    ("actor_steps_per_s", "act {:,.0f} st/s"),
    ("learner_steps_per_s", "learn {:,.0f} st/s"),
    ("policy_lag_mean", "lag {:.1f}"),
    ("policy_lag_max", "max {:.0f}"),
    ("consumer_wait_frac", "learner waits {:.0%}"),
    ("producer_wait_frac", "actors wait {:.0%}"),
    ("dropped_stale", "dropped {:,.0f}"),
    ("mean_episode_return", "return {:+.3f}"),
    ("d_real", "D(real) {:+.3f}"),
    ("d_fake", "D(fake) {:+.3f}"),
    ("pg_loss", "pg loss {:+.3f}"),
    ("entropy", "H {:.2f}"),
)


POLICY_PROGRESS_KEYS = ("total_loss", "pg_loss", "baseline_loss", "entropy", "grad_norm", "mean_rho",
                        "clipped_rho_fraction", "value_mse", "skipped_updates")
POLICY_DIAGNOSTIC_KEYS = ("paint_fraction", "value_mean", "value_std", "mean_value", "mean_vs",
                          "mean_abs_advantage")


def learner_values(policy: Mapping[str, float], disc: Mapping[str, float],
                   extra_policy_keys: tuple[str, ...] = ()) -> dict:
    """The progress values the two learners' latest metrics give (the same in every runtime):
    the policy's by name, the discriminator's as ``d_<name>``, with ``d_real``/``d_fake`` always
    present (NaN before the first discriminator update)."""
    values = {k: policy[k] for k in POLICY_PROGRESS_KEYS + extra_policy_keys if k in policy}
    # Per-key entropies, how often the policy paints and the value normalisation's statistics:
    # what to look at first when a policy stops exploring or stops painting.
    values.update({k: v for k, v in policy.items()
                   if k.startswith("entropy/") or k in POLICY_DIAGNOSTIC_KEYS})
    values.update({"d_" + key: value for key, value in disc.items()})
    values["d_real"] = disc.get("critic_real", float("nan"))
    values["d_fake"] = disc.get("critic_fake", float("nan"))
    return values


def progress_line(values: Mapping[str, float], elapsed_s: float) -> str:
    hours, rest = divmod(int(elapsed_s), 3600)
    parts = [f"[{hours:02d}:{rest // 60:02d}:{rest % 60:02d}]"]
    for key, fmt in _LINE:
        if key in values and values[key] is not None and np.isfinite(values[key]):
            parts.append(fmt.format(values[key]))
    return " | ".join(parts)


class Monitor:
    """Progress line every ``print_every_s`` seconds, TensorBoard scalars and images in ``logdir``.

    TensorBoard is a convenience, never a reason to stop a run: when its files cannot be
    written (the disk refuses a flush, or the writer's thread died) the monitor says so once
    through ``say_fn`` and goes on printing progress lines without it.
    """

    def __init__(self, logdir: str | None, print_every_s: float = 5.0, stream: TextIO = sys.stdout,
                 say_fn: Callable[[str], None] | None = None):
        self._writer = None
        self._logdir = logdir
        self._say = say_fn or (lambda message: print(message, file=stream, flush=True))
        if logdir:
            from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
            # A deep queue: tensorboardX's queue blocks the caller when full, and a writer thread
            # that died (the disk refused a write) never empties it; the run must not wait on it.
            self._writer = SummaryWriter(logdir, flush_secs=10, max_queue=100_000)
        self._print_every_s = print_every_s
        self._stream = stream
        self._start = time.monotonic()
        self._last_print = -math.inf
        self.lines_printed = 0

    def _give_up(self, error) -> None:
        # Not close(): it would flush and join a writer that already failed, and can block.
        self._writer = None
        self._say(f"TensorBoard logs in {self._logdir} cannot be written ({error}); training goes "
                  f"on without them.")

    def _check_writer(self) -> None:
        """Flush from this thread (an OSError surfaces here) and check the writer's thread."""
        if self._writer is None:
            return
        try:
            self._writer.flush()
        except OSError as e:
            self._give_up(e)
            return
        self._writer_alive()

    def _writer_alive(self) -> bool:
        """False (after saying so once) when the writer's thread has stopped."""
        if self._writer is None:
            return False
        worker = getattr(getattr(getattr(self._writer, "file_writer", None), "event_writer", None),
                         "_worker", None)
        if worker is not None and not worker.is_alive():
            self._give_up("its writer thread stopped")
            return False
        return True

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = ""):
        if not self._writer_alive():
            return
        for key, value in values.items():
            if value is None:
                continue
            value = float(value)
            if np.isfinite(value):
                self._writer.add_scalar(prefix + key, value, step)

    def images(self, step: int, tag: str, images: np.ndarray):
        if not self._writer_alive():
            return
        self._writer.add_image(tag, image_grid(images), step, dataformats="HWC")

    def progress(self, step: int, values: Mapping[str, float], force: bool = False) -> bool:
        """Log ``values`` as scalars; print the progress line if the interval has passed."""
        self.scalars(step, values)
        now = time.monotonic()
        if not force and now - self._last_print < self._print_every_s:
            return False
        self._last_print = now
        print(progress_line(values, now - self._start), file=self._stream, flush=True)
        self.lines_printed += 1
        self._check_writer()
        return True

    def flush(self):
        self._check_writer()

    def close(self):
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as e:
                self._say(f"TensorBoard logs in {self._logdir} could not be closed ({e}).")
            self._writer = None
