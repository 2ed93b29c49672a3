"""Actor throughput: the bare actor loop on one core, before and after batched environments.

One child process per network, pinned to one core with XLA, BLAS and numba single-threaded (what
a Ray actor gets), K environments (``--envs``, the actors' ``envs_per_actor``), whole episodes
(SPIRAL's 19 actions). Rows, timed in interleaved blocks so that load from other processes hits
them alike:

* per-env loop (before): the actor loop as it was before ``BatchedPaintEnv`` (commit a4a8738):
  K ``PaintEnv``s stepped one by one with dict actions, canvases converted per environment;
* EpisodeRunner (after): ``spiral.actors.acting.EpisodeRunner.unroll``: one jitted policy call and
  one ``BatchedPaintEnv`` call per step (rewards on the learner, so the loop alone is timed; the
  "+ D reward" row adds the actor-side final critic score of the tiny critic);
* with ``--actor_narrow_convs=taps`` (the same function's cheaper few-channel convolutions);
* inference only: the same jitted policy calls on fixed observations, no environment: the
  floor of the loop's cost (the loop's rate / this rate is the share the rest leaves);
* environments only: ``BatchedPaintEnv.step`` with random actions (80% paint).

  python benchmarks/actor_throughput.py [--networks tiny,small,full] [--envs 16] [--write-results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import results_md

ONE_CORE_ENV = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
                "JAX_PLATFORMS": "cpu"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", default="tiny,small,full")
    p.add_argument("--envs", type=int, default=16, help="environments per actor (K)")
    p.add_argument("--seconds", type=float, default=12.0, help="timed seconds per row (in blocks)")
    p.add_argument("--core", type=int, default=1, help="the core the child runs on")
    p.add_argument("--write-results", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_config(network: str, envs: int, narrow_convs: str = "direct",
                rewards_on: str = "learner"):
    from spiral.launch import flags as launch_flags
    values = launch_flags.default_values(
        "mnist", network=network, disc_network="tiny", envs_per_actor=envs, batch_size=envs,
        runtime="local", max_updates=1, run_dir=tempfile.mkdtemp(prefix="actor_bench_"),
        actor_narrow_convs=narrow_convs, rewards_on=rewards_on)
    return launch_flags.config_from_values(values)


class PerEnvLoop:
    """The actor loop before BatchedPaintEnv: K PaintEnvs, one ``step`` and conversion each."""

    def __init__(self, config, seed: int = 0):
        import jax
        from spiral.envs import PaintEnv
        from spiral.learner import Agent
        env = config.env
        self.envs = [PaintEnv(canvas_width=env.canvas_width, grid_width=env.grid_width,
                              episode_length=env.episode_length, brush_sizes=env.brush_sizes,
                              use_color=env.use_color, use_pressure=env.use_pressure,
                              background=env.background, seed=seed + i,
                              observation_width=env.observation_width)
                     for i in range(config.runtime.envs_per_actor)]
        self.agent = Agent(config.agent, config.policy.compute_dtype, "direct")
        self.keys = config.agent.action_keys
        self.num_steps = env.episode_length - 1
        self._sample = jax.jit(self.agent.sample_step)
        self._noise = jax.jit(self.agent.sample_noise, static_argnums=1)
        self._rng = jax.random.PRNGKey(seed)

    def unroll(self, params) -> int:
        import jax
        from spiral.learner import Observation
        k, t_len = len(self.envs), self.num_steps
        shape = self.envs[0].observation_spec()["canvas"].shape
        canvas = np.zeros((k, t_len + 1) + shape, np.uint8)
        mask = np.zeros((k, t_len + 1, len(self.keys)), np.float32)
        for i, env in enumerate(self.envs):
            ts = env.reset()
            canvas[i, 0] = env.canvas_uint8()
            mask[i, 0] = ts.observation["action_mask"]
        self._rng, noise_key = jax.random.split(self._rng)
        noise = self._noise(noise_key, k)
        state = self.agent.initial_state(k)
        is_first = np.ones((k,), bool)
        for t in range(t_len):
            self._rng, key = jax.random.split(self._rng)
            out, state = self._sample(params, Observation(canvas[:, t], mask[:, t]), is_first,
                                      state, noise, key)
            action, _ = jax.device_get((out.action, out.logits))
            for i, env in enumerate(self.envs):
                ts = env.step({name: action[name][i] for name in self.keys})
                canvas[i, t + 1] = env.canvas_uint8()
                mask[i, t + 1] = ts.observation["action_mask"]
            is_first = np.zeros((k,), bool)
        return k * t_len


def child(args) -> list[dict]:
    """Runs pinned to one core with one-thread XLA/numba (set by the parent before any import)."""
    import jax
    from spiral.actors.acting import EpisodeRunner
    from spiral.discriminator import DiscriminatorLearner
    from spiral.envs import BatchedPaintEnv
    from spiral.learner import Agent

    network, k = args.child, args.envs
    base = make_config(network, k)
    params = jax.device_put(Agent(base.agent).init(jax.random.PRNGKey(0)))
    version, weights = DiscriminatorLearner(base.discriminator).publish()
    t_len = base.env.episode_length - 1
    runs = {}

    def add(name, fn):
        fn()   # compile and warm up
        runs[name] = {"fn": fn, "steps": 0, "seconds": 0.0}

    before = PerEnvLoop(base)
    add("per-env loop (before)", lambda: before.unroll(params))
    after = EpisodeRunner(base, 0)
    add("EpisodeRunner (after)", lambda: after.unroll(params, 0).metadata["agent_steps"])
    taps = EpisodeRunner(make_config(network, k, "taps"), 0)
    add("EpisodeRunner, actor_narrow_convs=taps",
        lambda: taps.unroll(params, 0).metadata["agent_steps"])
    rewarded = EpisodeRunner(make_config(network, k, "taps", rewards_on="actors"), 0)
    add("EpisodeRunner, taps, + D reward", lambda: rewarded.unroll(
        params, 0, weights, version).metadata["agent_steps"])
    for form, runner in (("direct", after), ("taps", taps)):
        ts = runner.env.reset()
        inputs = (ts.observation["canvas"], ts.observation["action_mask"], None,
                  runner._first[1], *runner._begin(runner._base_key, 0))

        def inference(runner=runner, inputs=inputs):
            canvas, mask, target, first, noise, state, rng = inputs
            for _ in range(t_len):
                action, _, state, rng = runner._policy_step(params, canvas, mask, target, first,
                                                            state, noise, rng)
                np.asarray(action)
            return k * t_len

        add(f"inference only ({form})", inference)
    env = BatchedPaintEnv(base.env, np.arange(k))
    rng = np.random.default_rng(0)
    actions = []
    for _ in range(t_len):
        a = np.stack([rng.integers(0, s.num_values, k) for s in base.env.action_spec().values()])
        a[0] = rng.random(k) < 0.8
        actions.append(a.astype(np.int32))

    def environments():
        env.reset()
        for a in actions:
            env.step(a)
        return k * t_len

    add("environments only (BatchedPaintEnv)", environments)
    blocks = 6
    for _ in range(blocks):
        for run in runs.values():
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds / blocks:
                run["steps"] += run["fn"]()
            run["seconds"] += time.perf_counter() - start
    return [{"network": network, "row": name, "steps_per_s": run["steps"] / run["seconds"]}
            for name, run in runs.items()]


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        os.sched_setaffinity(0, {args.core})
        print(json.dumps(child(args)))
        return
    rows = []
    for network in args.networks.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", network, "--envs",
               str(args.envs), "--seconds", str(args.seconds), "--core", str(args.core)]
        out = subprocess.run(cmd, env=dict(os.environ, **ONE_CORE_ENV), capture_output=True,
                             text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    lines = [f"Machine: {results_md.cpu_name()}, {os.cpu_count()} cores (the child pinned to core "
             f"{args.core}, XLA/numba one thread); {datetime.date.today()}; K = {args.envs} "
             f"environments, episodes of 19 actions, interleaved blocks of {args.seconds:.0f} s "
             f"per row; load average at the end: {os.getloadavg()[0]:.1f}.",
             "",
             "| network | loop | agent steps/s (one core) | vs before | vs inference only |",
             "|---|---|---:|---:|---:|"]
    for network in args.networks.split(","):
        mine = {r["row"]: r["steps_per_s"] for r in rows if r["network"] == network}
        before = mine["per-env loop (before)"]
        for name, rate in mine.items():
            form = "taps" if "taps" in name else "direct"
            floor = mine[f"inference only ({form})"]
            vs_floor = "" if "only" in name or "before" in name else f"{rate / floor:.0%}"
            lines.append(f"| {network} | {name} | {rate:,.0f} | {rate / before:.2f}x | {vs_floor} |")
    lines += ["", "Command: `python benchmarks/actor_throughput.py " + " ".join(sys.argv[1:]) + "`"]
    table = "\n".join(lines)
    print(table)
    if args.write_results:
        results_md.write_section("actor_throughput", table)


if __name__ == "__main__":
    main()
