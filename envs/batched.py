"""``BatchedPaintEnv``: K paint environments stepped together in one compiled call (EnvPool's idea).

One job: what ``PaintEnv`` does for one environment, for K at once, with arrays in and arrays out
and no Python per environment, so that an actor's step costs one numba call. Environment k behaves
exactly as ``PaintEnv(seed=seeds[k], targets=targets, ...)`` fed the k-th action of every step:
same canvases bit for bit (the same engine kernels, ``numba_engine.render_stroke`` and
``observe``), same targets, action masks, step types, rewards and programs
(``tests/test_batched_env.py`` checks this against K ``PaintEnv``s).

Arrays in: ``step(actions)`` takes a dict key → int array [K] (the keys of
``config.action_keys``) or one int array [num_keys, K] in that key order. Values are checked
(all of them, before any environment changes): an out-of-range value raises ``ValueError``
naming the key, the environment and the valid range; nothing is clipped.

Arrays out: ``BatchedTimeStep(step_type uint8 [K], reward float64 [K] | None, discount
float32 [K] | None, observation)``; reward and discount are None at FIRST, as dm_env's
``restart``. The observation holds ``canvas`` uint8 levels [K, ow, ow, C] (k means k/255: the
agent and the trajectory records read levels; ``spiral.envs.levels.to_float`` gives
``PaintEnv``'s float32 canvas), ``action_mask`` float32 [K, num_keys], ``episode_step`` and
``episode_length`` int32 [K] (``PaintEnv``'s, DeepMind's counters) and, in conditional mode,
``target`` uint8 levels [K, ow, ow, C]. Each step returns new arrays (safe to keep). Both
``jump_start`` modes of ``PaintConfig`` are supported ("released": DeepMind's environment).

Episodes run in lockstep (every episode has ``episode_length`` steps): ``reset()`` starts the
next episode of every environment; a ``step`` after LAST (or before any reset) does the same and
ignores its actions, as ``PaintEnv`` does. The kernel is serial: an actor has one core, and a
``prange`` over the environments measured 4-16x slower than serial on a shared 2-core machine
(numba's threads compete with the other processes; benchmarks/env_throughput.py, git history).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence, Union

import dm_env
import numpy as np
from numba import njit

from spiral.envs import specs
from spiral.envs import stroke as spec
from spiral.envs import targets as target_data
from spiral.envs.config import PaintConfig
from spiral.envs.numba_engine import _mix32, observe, render_stroke, render_stroke_released
from spiral.envs.program import Jump, Program, Stroke

F32 = np.float32
FIRST, MID, LAST = (int(s) for s in (dm_env.StepType.FIRST, dm_env.StepType.MID,
                                     dm_env.StepType.LAST))
MAX_SEED = 2 ** 32
# Sub-action keys by their row in the kernel's action table (absent keys keep their row).
_KEY_ROWS = {key: row for row, key in enumerate(specs.ACTION_ORDER)}
# Columns of the per-step record that ``program`` turns into Stroke / Jump entries.
_FLAG, _SY, _SX, _CY, _CX, _EY, _EX, _P0, _P1, _RADIUS, _COLOR = range(11)

_GOLDEN = np.uint64(spec.GOLDEN)
_TARGET_SALT = np.uint64(spec.TARGET_SALT)
_PAINT = specs.PAINT
_FIXED_PRESSURE = F32(specs.FIXED_PRESSURE)


class BatchedTimeStep(NamedTuple):
    """One step of K environments (see the module docstring)."""
    step_type: np.ndarray             # uint8 [K]: dm_env.StepType
    reward: Optional[np.ndarray]      # float64 [K]; None at FIRST
    discount: Optional[np.ndarray]    # float32 [K]; None at FIRST
    observation: dict                 # canvas, action_mask, (target)

    def first(self) -> bool:
        return bool(self.step_type[0] == FIRST)

    def last(self) -> bool:
        return bool(self.step_type[0] == LAST)


@njit(cache=True, error_model="numpy")
def _stroke_key(seed, episode, step):
    """``spiral.envs.stroke.stroke_key`` (the dab-noise key of one action) in numba."""
    h = _mix32(np.uint64(seed) + _GOLDEN)
    h = _mix32(h + np.uint64(episode) + _GOLDEN)
    return _mix32(h + np.uint64(step) + _GOLDEN)


@njit(cache=True, error_model="numpy")
def _target_indices(seeds, episode, num_targets, out):
    """``spiral.envs.stroke.target_index`` of every environment."""
    for k in range(seeds.shape[0]):
        out[k] = _stroke_key(seeds[k], episode, _TARGET_SALT) % np.uint64(num_targets)


@njit(cache=True, error_model="numpy")
def _first_bad_action(actions, present, sizes):
    """(row, env) of the first action out of range, or (-1, -1)."""
    for row in range(actions.shape[0]):
        if present[row]:
            limit = sizes[row]
            for k in range(actions.shape[1]):
                v = actions[row, k]
                if v < 0 or v >= limit:
                    return row, k
    return -1, -1


@njit(cache=True, error_model="numpy")
def _step_one(k, actions, present, cell_y, cell_x, pressures, radii, brushes, released_brushes,
              colors, ink, seeds, episode, t, released, canvas, transmittance, carry, speed, pen,
              lifted, brush, painting, pressure, weights, record, levels, scratch, masks,
              paint_mask, jump_mask):
    """Environment k: one action (PaintEnv.step's paint or jump), then its observation.

    ``released``: DeepMind's released mode (``PaintConfig.jump_start``): after a jump to (y, x)
    the brush is at (y, y) and the pen at (y, x); a stroke from a lifted pen first moves it
    (the ``lead``), and the brush follows libmypaint 1.3.0 (``render_stroke_released``).
    """
    end = actions[1, k]
    ey = cell_y[end]
    ex = cell_x[end]
    rec = record[k, t]
    if actions[0, k] == _PAINT:
        control = actions[2, k]
        cy = cell_y[control]
        cx = cell_x[control]
        p1 = pressures[actions[4, k]] if present[4] else _FIXED_PRESSURE
        # Pressure runs on from the previous stroke; after a reset or a jump it is constant.
        p0 = pressure[k] if painting[k] else p1
        size = actions[3, k] if present[3] else 0
        color = ink.copy()
        if present[5]:
            color[0] = colors[actions[5, k]]
            color[1] = colors[actions[6, k]]
            color[2] = colors[actions[7, k]]
        key = _stroke_key(seeds[k], episode, t)
        sy, sx = F32(brush[k, 0]), F32(brush[k, 1])
        if released:
            lead = F32(0.0)
            if lifted[k]:
                dy, dx = sy - pen[k, 0], sx - pen[k, 1]
                lead = np.sqrt(dy * dy + dx * dx)
            b = released_brushes[size]
            new_carry, new_speed, _ = render_stroke_released(
                canvas[k], transmittance[k], sy, sx, F32(cy), F32(cx), F32(ey), F32(ex), p0, p1,
                b[0], b[1], b[2], b[3], b[4], color, key, carry[k], speed[k], lead, weights)
            speed[k] = new_speed
            pen[k, 0] = F32(ey)
            pen[k, 1] = F32(ex)
            lifted[k] = False
        else:
            new_carry, _ = render_stroke(
                canvas[k], transmittance[k], sy, sx, F32(cy), F32(cx), F32(ey), F32(ex), p0, p1,
                brushes[size, 0], brushes[size, 1], brushes[size, 2], brushes[size, 3], color,
                key, carry[k], weights)
        carry[k] = new_carry
        rec[_FLAG] = 1.0
        rec[_SY] = brush[k, 0]
        rec[_SX] = brush[k, 1]
        rec[_CY] = cy
        rec[_CX] = cx
        rec[_P0] = p0
        rec[_P1] = p1
        rec[_RADIUS] = radii[size]
        for c in range(color.shape[0]):
            rec[_COLOR + c] = color[c]
        painting[k] = True
        pressure[k] = p1
        masks[k] = paint_mask
        brush[k, 1] = ex
    else:
        carry[k] = F32(0.0)   # a jump ends a connected run of strokes
        speed[k] = F32(0.0)
        pen[k, 0] = F32(ey)
        pen[k, 1] = F32(ex)
        lifted[k] = True
        rec[_FLAG] = 0.0
        painting[k] = False
        masks[k] = jump_mask
        brush[k, 1] = ey if released else ex   # DeepMind's _update_brush_params(y=y, x=y)
    rec[_EY] = ey
    rec[_EX] = ex
    brush[k, 0] = ey
    observe(canvas[k], levels[k], scratch[k])


@njit(cache=True, error_model="numpy")
def _step_all(actions, present, cell_y, cell_x, pressures, radii, brushes, released_brushes,
              colors, ink, seeds, episode, t, released, canvas, transmittance, carry, speed, pen,
              lifted, brush, painting, pressure, weights, record, levels, scratch, masks,
              paint_mask, jump_mask):
    """Every environment's step (``_step_one``), in one compiled call."""
    for k in range(canvas.shape[0]):
        _step_one(k, actions, present, cell_y, cell_x, pressures, radii, brushes, released_brushes,
                  colors, ink, seeds, episode, t, released, canvas, transmittance, carry, speed,
                  pen, lifted, brush, painting, pressure, weights, record, levels, scratch, masks,
                  paint_mask, jump_mask)


@njit(cache=True, error_model="numpy")
def _observe_all(canvas, levels, scratch):
    for k in range(canvas.shape[0]):
        observe(canvas[k], levels[k], scratch[k])


@njit(cache=True, error_model="numpy")
def _l2_rewards(levels, targets, indices, out):
    """−Σ(canvas − target)² per environment, exactly as PaintEnv: an integer sum / 255²."""
    for k in range(levels.shape[0]):
        a = levels[k].ravel()
        b = targets[indices[k]].ravel()
        total = 0
        for i in range(a.shape[0]):
            d = np.int64(a[i]) - np.int64(b[i])
            total += d * d
        out[k] = -np.float64(total) / 255.0 ** 2


def check_seeds(seeds) -> np.ndarray:
    """uint64 [K] of the given uint32 seeds (one per environment); ValueError otherwise."""
    arr = np.asarray(seeds)
    if arr.ndim != 1 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.integer) \
            or arr.dtype == np.bool_:
        raise ValueError(f"seeds must be a 1-D integer array with one seed per environment, got "
                         f"{arr.dtype} of shape {arr.shape}.")
    if arr.min() < 0 or arr.max() >= MAX_SEED:
        raise ValueError(f"seeds must lie in [0, 2**32), got values in [{arr.min()}, {arr.max()}].")
    return arr.astype(np.uint64)


class BatchedPaintEnv:
    """K numba paint environments stepped in one call; see the module docstring.

    Args:
      config: the environments' options (``PaintConfig``; ``conditional`` must match ``targets``).
      seeds: one uint32 seed per environment: environment k paints as ``PaintEnv(seed=seeds[k])``.
      targets: conditional mode: uint8 levels [N, ow, ow, C] (used without copying) or float32
        in [0, 1] (quantised once), shared by every environment.
    """

    def __init__(self, config: PaintConfig, seeds: Sequence[int],
                 targets: Optional[np.ndarray] = None):
        if not isinstance(config, PaintConfig):
            raise ValueError(f"config must be a PaintConfig, got {type(config).__name__}.")
        if config.conditional != (targets is not None):
            raise ValueError("Pass targets exactly when config.conditional is True "
                             f"(conditional={config.conditional}, targets "
                             f"{'given' if targets is not None else 'missing'}).")
        self.config = config
        self.seeds = check_seeds(seeds)
        k = self.num_envs = len(self.seeds)
        self._targets = (None if targets is None
                         else target_data.target_levels(targets, config.observation_shape))
        w, c, g = config.canvas_width, config.channels, config.grid_width
        self._keys = config.action_keys
        self._action_spec = config.action_spec()
        self._sizes = np.array([self._action_spec[key].num_values if key in self._action_spec else 1
                                for key in specs.ACTION_ORDER], np.int64)
        self._present = np.array([key in self._action_spec for key in specs.ACTION_ORDER])
        self._rows = np.array([_KEY_ROWS[key] for key in self._keys], np.int64)
        # Grid index -> pixel (y, x), row-major, pixel = W·c/G, as PaintEnv computes it.
        cells = np.arange(g * g)
        self._cell_y = (w * (cells // g) / g).astype(np.float64)
        self._cell_x = (w * (cells % g) / g).astype(np.float64)
        self._pressures = specs.PRESSURE_VALUES.astype(F32)
        self._radii = np.array(config.pixel_radii, np.float64)
        self._brushes = np.array([(b.actual_radius, b.spacing, F32(1.0 / float(b.spacing)),
                                   b.offset_scale)
                                  for b in map(spec.brush_constants, config.pixel_radii)], F32)
        self._released_brushes = np.array([tuple(spec.released_brush_constants(r))
                                           for r in config.pixel_radii], F32)
        self._colors = specs.COLOR_VALUES.astype(F32)
        self._ink = np.full(c, config.ink_value, F32)
        self._weights = spec.bezier_weights()
        self._paint_mask = specs.action_mask(self._keys, painted=True)
        self._jump_mask = specs.action_mask(self._keys, painted=False)
        # State of every environment.
        self._canvas = np.full((k, c, w, w), config.background_value, F32)
        self._transmittance = np.ones((k, w, w), F32)
        self._carry = np.zeros(k, F32)
        self._speed = np.zeros(k, F32)            # released mode: libmypaint's filtered speed
        self._pen = np.zeros((k, 2), F32)         # released mode: where the pen really is
        self._lifted = np.ones(k, np.bool_)       # released mode: no stroke since a jump/reset
        self._brush = np.zeros((k, 2), np.float64)
        self._painting = np.zeros(k, np.bool_)
        self._pressure = np.zeros(k, F32)
        self._scratch = np.empty((k,) + config.observation_shape, F32)
        self._record = np.zeros((k, max(config.episode_length - 1, 1), _COLOR + c), np.float64)
        self._episode = -1
        self._t = 0
        self._step_type = None
        self._target_indices = np.zeros(k, np.uint64)
        self._target = None
        self._levels = None

    # ---- the environment ------------------------------------------------------------------------
    def action_spec(self):
        """One environment's action spec (``PaintEnv.action_spec``); actions come as [K] per key."""
        return self._action_spec

    def reset(self, target_indices: Optional[Sequence[int]] = None,
              episode: Optional[int] = None) -> BatchedTimeStep:
        """Start the next episode of every environment.

        ``target_indices`` (conditional mode): the dataset index each environment paints this
        episode (``PaintEnv.set_next_target``); by default each draws its own from its seed.
        ``episode``: the index of the episode to start (default: the next one). The episode
        index and the seed decide an episode's dab noise and target, so a caller that restores a
        run continues the streams by passing the index it had reached.
        """
        k = self.num_envs
        if episode is not None and (not isinstance(episode, (int, np.integer)) or episode < 0):
            raise ValueError(f"episode must be an int >= 0, got {episode!r}.")
        self._episode = self._episode + 1 if episode is None else int(episode)
        self._t = 0
        self._canvas.fill(self.config.background_value)
        self._carry.fill(0.0)
        self._speed.fill(0.0)
        self._pen.fill(0.0)
        self._lifted.fill(True)
        self._brush.fill(0.0)
        self._painting.fill(False)
        if self._targets is not None:
            if target_indices is None:
                _target_indices(self.seeds, self._episode, len(self._targets), self._target_indices)
            else:
                self._target_indices = self._check_target_indices(target_indices)
            self._target = self._targets[self._target_indices]
        elif target_indices is not None:
            raise ValueError("target_indices need conditional mode (targets=... and "
                             "config.conditional=True).")
        levels = np.empty((k,) + self.config.observation_shape, np.uint8)
        _observe_all(self._canvas, levels, self._scratch)
        self._levels = levels
        self._step_type = FIRST
        masks = np.broadcast_to(self._jump_mask, (k, len(self._keys))).copy()
        return BatchedTimeStep(np.full(k, FIRST, np.uint8), None, None,
                               self._observation(levels, masks))

    def step(self, actions: Union[Mapping[str, np.ndarray], np.ndarray]) -> BatchedTimeStep:
        """One action in every environment (or a reset after LAST, ignoring ``actions``)."""
        if self._step_type is None or self._step_type == LAST:
            return self.reset()
        table = self._action_table(actions)
        k, cfg = self.num_envs, self.config
        levels = np.empty((k,) + cfg.observation_shape, np.uint8)
        masks = np.empty((k, len(self._keys)), F32)
        _step_all(table, self._present, self._cell_y, self._cell_x, self._pressures,
                     self._radii, self._brushes, self._released_brushes, self._colors, self._ink,
                     self.seeds, self._episode, self._t, cfg.released, self._canvas,
                     self._transmittance, self._carry, self._speed, self._pen, self._lifted,
                     self._brush, self._painting, self._pressure, self._weights, self._record,
                     levels, self._scratch, masks, self._paint_mask, self._jump_mask)
        self._levels = levels
        self._t += 1
        if self._t == cfg.episode_length - 1:
            self._step_type = LAST
            reward = np.zeros(k, np.float64)
            if cfg.l2_reward:
                _l2_rewards(levels, self._targets, self._target_indices, reward)
            discount = np.zeros(k, F32)
        else:
            self._step_type = MID
            reward = np.zeros(k, np.float64)
            discount = np.ones(k, F32)
        return BatchedTimeStep(np.full(k, self._step_type, np.uint8), reward, discount,
                               self._observation(levels, masks))

    # ---- extras -----------------------------------------------------------------------------------
    @property
    def episode(self) -> int:
        """Index of the current episode (0 after the first reset), the same in every environment."""
        return self._episode

    @property
    def actions_in_episode(self) -> int:
        """Actions taken in the current episode (0 at FIRST; the observation's ``episode_step`` counts
        DeepMind's way)."""
        return self._t

    @property
    def target_indices(self) -> Optional[np.ndarray]:
        """Dataset index of each environment's current target (conditional mode), int64 [K]."""
        return None if self._targets is None else self._target_indices.astype(np.int64)

    def canvas_uint8(self) -> np.ndarray:
        """The last observation's canvases, uint8 levels [K, ow, ow, C]."""
        if self._levels is None:
            raise ValueError("No observation yet: call reset() first.")
        return self._levels

    def full_canvases(self) -> np.ndarray:
        """The full-resolution float32 canvases [K, W, W, C], unquantised."""
        return self._canvas.transpose(0, 2, 3, 1).copy()

    def program(self, index: int) -> Program:
        """Environment ``index``'s current (or just finished) episode as a ``Program``
        (``PaintEnv.program``: resolution-free, replayable with ``render_program``)."""
        if self._step_type is None:
            raise ValueError("No episode yet: call reset() first.")
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_envs:
            raise ValueError(f"index must be an int in [0, {self.num_envs - 1}], got {index!r}.")
        cfg = self.config
        w = float(cfg.canvas_width)
        program = Program(int(self.seeds[index]), self._episode, cfg.background, cfg.channels,
                          jump_start=cfg.jump_start)
        for rec in self._record[index, :self._t].tolist():
            end = (rec[_EY] / w, rec[_EX] / w)
            if rec[_FLAG] == 0.0:
                program.steps.append(Jump(end))
            else:
                program.steps.append(Stroke((rec[_SY] / w, rec[_SX] / w),
                                            (rec[_CY] / w, rec[_CX] / w), end,
                                            (rec[_P0], rec[_P1]), rec[_RADIUS] / w,
                                            tuple(rec[_COLOR:_COLOR + cfg.channels])))
        return program

    # ---- internals ---------------------------------------------------------------------------------
    def _observation(self, levels, masks) -> dict:
        k, cfg = self.num_envs, self.config
        if self._t == 0:
            # DeepMind's reset reports its counter before resetting it (released mode).
            step = cfg.episode_length if cfg.released and self._episode > 0 else 0
        else:
            step = self._t + 1
        observation = {"canvas": levels, "action_mask": masks,
                       "episode_step": np.full(k, step, np.int32),
                       "episode_length": np.full(k, cfg.episode_length, np.int32)}
        if self._target is not None:
            observation["target"] = self._target
        return observation

    def _check_target_indices(self, indices) -> np.ndarray:
        arr = np.asarray(indices)
        n = len(self._targets)
        if arr.shape != (self.num_envs,) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"target_indices must be {self.num_envs} integers (one per "
                             f"environment), got {arr.dtype} of shape {arr.shape}.")
        if arr.min() < 0 or arr.max() >= n:
            raise ValueError(f"target_indices must lie in [0, {n - 1}], got values in "
                             f"[{arr.min()}, {arr.max()}].")
        return arr.astype(np.uint64)

    def _action_table(self, actions) -> np.ndarray:
        """int64 [8, K]: one row per key of ``specs.ACTION_ORDER`` (absent keys: zeros); checked."""
        k, keys = self.num_envs, self._keys
        table = np.zeros((len(specs.ACTION_ORDER), k), np.int64)
        if isinstance(actions, Mapping):
            missing = [key for key in keys if key not in actions]
            unknown = [key for key in actions if key not in self._action_spec]
            if missing or unknown:
                raise ValueError(f"actions must have exactly the keys {list(keys)}; missing "
                                 f"{missing}, unknown {unknown}.")
            for key in keys:
                value = actions[key]
                _check_integers(value, (k,), f"actions[{key!r}]")
                table[_KEY_ROWS[key]] = value
        else:
            _check_integers(actions, (len(keys), k), "actions (an array)",
                            f" (one row per key of {list(keys)})")
            table[self._rows] = actions
        row, env = _first_bad_action(table, self._present, self._sizes)
        if row >= 0:
            key = specs.ACTION_ORDER[row]
            raise ValueError(f"Action key '{key}' = {table[row, env]} in environment {env} is out "
                             f"of range; valid range is [0, {self._sizes[row] - 1}].")
        return table


def _check_integers(value, shape, name, hint=""):
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        raise ValueError(f"{name} must be an integer array of shape {shape}{hint}, got "
                         f"{arr.dtype} of shape {arr.shape}.")
