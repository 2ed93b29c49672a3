"""An episode's program: the strokes and jumps an agent made, resolution-free, replayable, JSON-able.

Coordinates are **normalised by the canvas width**: a point (y, x) is (y_px / W, x_px / W), so
grid cell c of a 32-grid sits at c / 32 at any resolution, and a radius is r_px / W (brush size
1 on a 64 canvas is 1/64). Pressures are in [0, 1] and colours are per channel in [0, 1] (one
value for grayscale, the ink). Every entry of ``steps`` is one action of the episode, in order,
so entry i used the RNG key ``stroke_key(seed, episode, i)``; replaying with the same seed
reproduces the numba/JAX canvas exactly, at any ``canvas_width`` with the same look.

``jump_start`` is the environment mode the program was painted in (``PaintConfig.jump_start``):
a released-mode stroke after a jump to (y, x) starts at (y, y), and the replay needs the mode to
paint it as the environment did. JSON without the key (older programs) reads as "corrected".
"""

from __future__ import annotations

import dataclasses
import json
from typing import List, Optional, Tuple, Union

import numpy as np

from spiral.envs import stroke as spec
from spiral.envs.config import PaintConfig

Point = Tuple[float, float]
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Stroke:
    """A painted quadratic Bezier, start → control → end, pressure p0 → p1, one radius and colour."""
    start: Point
    control: Point
    end: Point
    pressure: Tuple[float, float]
    radius: float
    color: Tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Jump:
    """The brush lifted and moved to ``end``."""
    end: Point


Step = Union[Stroke, Jump]


@dataclasses.dataclass
class Program:
    """One episode's steps plus what a replay needs: the env seed, the episode index, the
    background, the environment mode."""
    seed: int
    episode: int
    background: str = "white"
    channels: int = 1
    steps: List[Step] = dataclasses.field(default_factory=list)
    jump_start: str = "corrected"

    @property
    def strokes(self) -> List[Stroke]:
        return [s for s in self.steps if isinstance(s, Stroke)]

    def to_dict(self) -> dict:
        steps = []
        for s in self.steps:
            if isinstance(s, Stroke):
                steps.append({"type": "stroke", "start": list(s.start), "control": list(s.control),
                              "end": list(s.end), "pressure": list(s.pressure), "radius": s.radius,
                              "color": list(s.color)})
            else:
                steps.append({"type": "jump", "end": list(s.end)})
        return {"version": FORMAT_VERSION, "coordinates": "(y, x) / canvas_width", "seed": self.seed,
                "episode": self.episode, "background": self.background, "channels": self.channels,
                "jump_start": self.jump_start, "steps": steps}

    @classmethod
    def from_dict(cls, data: dict) -> "Program":
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"Unsupported program format version {data.get('version')!r}; "
                             f"this code reads version {FORMAT_VERSION}.")
        steps: List[Step] = []
        for i, s in enumerate(data["steps"]):
            kind = s.get("type")
            if kind == "stroke":
                steps.append(Stroke(tuple(s["start"]), tuple(s["control"]), tuple(s["end"]),
                                    tuple(s["pressure"]), float(s["radius"]), tuple(s["color"])))
            elif kind == "jump":
                steps.append(Jump(tuple(s["end"])))
            else:
                raise ValueError(f"Program step {i} has type {kind!r}; expected 'stroke' or 'jump'.")
        return cls(int(data["seed"]), int(data["episode"]), data["background"], int(data["channels"]),
                   steps, data.get("jump_start", "corrected"))

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Program":
        return cls.from_dict(json.loads(text))


def render_program(program: Program, canvas_width: int = 64, renderer: str = "numba",
                   seed: Optional[int] = None) -> np.ndarray:
    """Replay a program on a fresh ``canvas_width`` canvas; return it as float32 (W, W, C) in [0, 1].

    ``seed`` overrides the program's env seed (the dab noise); with the program's own seed and
    the numba engine this reproduces the environment's canvas bit for bit. Use
    ``spiral.envs.observe_canvas`` for the agent's 64×64 quantised view of the result.
    """
    from spiral.envs.engines import make_engine

    config = PaintConfig(canvas_width=canvas_width, use_color=program.channels == 3,
                         background=program.background, jump_start=program.jump_start)
    engine = make_engine(renderer, config)
    engine.reset()
    use_seed = program.seed if seed is None else seed
    w = float(canvas_width)
    for i, step in enumerate(program.steps):
        if isinstance(step, Jump):
            engine.jump(step.end[0] * w, step.end[1] * w)
            continue
        if len(step.color) != program.channels:
            raise ValueError(f"Program step {i}: colour {step.color} has {len(step.color)} values but "
                             f"the program has {program.channels} channels.")
        engine.paint((step.start[0] * w, step.start[1] * w), (step.control[0] * w, step.control[1] * w),
                     (step.end[0] * w, step.end[1] * w), step.pressure[0], step.pressure[1],
                     step.radius * w, step.color, spec.stroke_key(use_seed, program.episode, i))
    return engine.full_canvas()
