"""How fast the discriminator trains, and what its reward costs an actor.

Two parts, each printing a markdown table:

1. ``update``: updates/s of ``DiscriminatorLearner`` at batch 64 with the paper's critic
   (64-128-256-512), for WGAN-GP, SN-GAN and the complement WGAN-GP, on the CPU (all cores, XLA's
   default threading) and on a GPU when JAX sees one. Baseline in the same process: one forward
   pass of the same critic over the 128 images an update sees; the ratio says how many forward
   passes an update costs.
2. ``reward`` (run in a child process pinned to ONE core, with
   ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``, like an actor): the reward's cost per canvas
   at batch 1, 8 and 32, next to one ``PaintEnv`` step (numba engine) timed in the same process.
   The "share" columns are the reward's fraction of (env step + reward) time per agent step for
   SPIRAL's final-only reward (one critic pass per 19-step episode) and for SPIRAL++'s TCA (a pass
   per step), leaving out the policy network; the last two columns add the policy's 2.2 ms per
   step (SPIRAL.md §2's figure, quoted, not measured here).

Usage: ``python benchmarks/discriminator_throughput.py [--quick] [--part update|reward|all]
[--critic full|small|tiny] [--profile]``. ``--quick`` uses the tiny critic and few repetitions
(a smoke run of the script itself); ``--profile`` adds where each update's time goes (forward,
backward, the gradient penalty's double backward: XLA's per-op times, benchmarks/xla_profile.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

SINGLE_CORE_FLAG = "--xla_cpu_multi_thread_eigen=false"
# The policy network's sampling cost per step on one core at batch 8-32, from SPIRAL.md §2
# (about 455 steps/s); quoted, not measured here.
POLICY_STEP_S = 1 / 455


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _configs(quick: bool, critic: str = "full"):
    from spiral.discriminator import DiscriminatorConfig
    from spiral.launch.flags import DISC_SIZES
    channels = DISC_SIZES["tiny" if quick else critic]
    return {
        "wgan_gp": DiscriminatorConfig(channels=channels),
        "sngan": DiscriminatorConfig(loss="sngan", channels=channels),
        "wgan_gp complement": DiscriminatorConfig(conditional=True, complement=True,
                                                  channels=channels),
    }


def update_part(quick: bool, profile: bool = False, critic: str = "full") -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from spiral.discriminator import DiscriminatorLearner, networks

    repeats = 2 if quick else 5
    devices = [("cpu", jax.devices("cpu")[0])]
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if gpus:
        devices.append(("gpu", gpus[0]))

    print(f"\n### Updates at batch 64 (jax {jax.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()})\n")
    print("| device | loss | updates/s | ms/update | forward of 128 images (ms) | update / forward |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    profiles = []
    for device_name, device in devices:
        label = device_name if device_name == "cpu" else f"gpu ({device.device_kind})"
        for name, config in _configs(quick, critic).items():
            with jax.default_device(device):
                learner = DiscriminatorLearner(config, seed=0)
                fake = jax.device_put(rng.integers(0, 256, (64, 64, 64, 1), dtype=np.uint8), device)
                targets = fake if config.conditional else None
                real = None if config.conditional else jax.device_put(rng.random((64, 64, 64, 1), dtype=np.float32), device)

                def one_update():
                    jax.block_until_ready(learner.update(fake, real, targets))

                one_update()  # compile
                one_update()
                update_s = _median_time(one_update, repeats)
                if profile:   # forward, backward and the penalty's double backward
                    import xla_profile
                    compiled = learner._update.lower(learner.state, fake, real, targets).compile()
                    table, coverage = xla_profile.op_table(compiled, one_update,
                                                           group=lambda op, name: (
                                                               xla_profile.direction(name), op))
                    profiles.append((f"{label} {name}", table, coverage))

                forward = jax.jit(networks.critic_forward)
                _, weights = learner.publish()
                weights = jax.device_put(weights, device)
                images = jax.device_put(jnp.zeros((128, 64, 64, config.input_channels), jnp.float32), device)
                jax.block_until_ready(forward(weights, images))
                forward_s = _median_time(lambda: jax.block_until_ready(forward(weights, images)), repeats)
            print(f"| {label} | {name} | {1 / update_s:.2f} | {1e3 * update_s:.0f} | {1e3 * forward_s:.0f} "
                  f"| {update_s / forward_s:.1f} |", flush=True)
    if not gpus:
        print("| gpu | all | not measured: no GPU here | | | |")
    for title, table, coverage in profiles:
        print(f"\nWhere the update's time goes, {title} (XLA per-op times; the ops' events cover "
              f"{coverage:.0%} of the wall time):\n")
        print("| direction | op | ms/update | share |\n|---|---|---:|---:|")
        for (direction, op), seconds, share in table[:6]:
            print(f"| {direction} | {op} | {1e3 * seconds:.1f} | {share:.0%} |")


def reward_part(quick: bool) -> None:
    """Runs pinned to one core; XLA_FLAGS must have been set before JAX was imported."""
    import numpy as np

    from spiral.discriminator import DiscriminatorLearner, make_reward_fn, put_weights

    assert SINGLE_CORE_FLAG in os.environ.get("XLA_FLAGS", ""), "run through main() (one core, one XLA thread)"
    repeats = 3 if quick else 20
    rng = np.random.default_rng(0)

    env_step_s, env_note = _env_step_seconds(rng, 200 if quick else 2000)

    print(f"\n### Reward cost on one core (affinity {sorted(os.sched_getaffinity(0))}, XLA_FLAGS={os.environ['XLA_FLAGS']})\n")
    print(f"One env step ({env_note}): **{1e6 * env_step_s:.0f} µs**.\n")
    print("| critic | batch | ms per call | ms per canvas | canvas / env step | share, final-only | share, TCA "
          f"| with policy ({1e3 * POLICY_STEP_S:.1f} ms/step): final-only | with policy: TCA |")
    print("|---|---|---|---|---|---|---|---|---|")
    episode_steps = 19
    for name, config in _configs(quick).items():
        if name == "sngan":
            continue  # the same forward as wgan_gp: spectral normalisation is folded into the weights
        _, weights = DiscriminatorLearner(config, seed=0).publish()
        weights = put_weights(weights)
        reward = make_reward_fn(config)
        label = "plain (wgan_gp / sngan)" if name == "wgan_gp" else "complement (4 masks)"
        for batch in (1, 8, 32):
            canvases = rng.integers(0, 256, (batch, 64, 64, 1), dtype=np.uint8)
            targets = canvases if config.conditional else None
            reward(weights, canvases, targets)  # compile
            call_s = _median_time(lambda: reward(weights, canvases, targets), repeats)
            per_canvas = call_s / batch
            final_share = (per_canvas / episode_steps) / (env_step_s + per_canvas / episode_steps)
            tca_share = per_canvas / (env_step_s + per_canvas)
            final_policy_share = (per_canvas / episode_steps) / (env_step_s + POLICY_STEP_S + per_canvas / episode_steps)
            tca_policy_share = per_canvas / (env_step_s + POLICY_STEP_S + per_canvas)
            print(f"| {label} | {batch} | {1e3 * call_s:.2f} | {1e3 * per_canvas:.2f} | {per_canvas / env_step_s:.0f}× "
                  f"| {100 * final_share:.1f}% | {100 * tca_share:.1f}% | {100 * final_policy_share:.1f}% "
                  f"| {100 * tca_policy_share:.1f}% |", flush=True)


def _env_step_seconds(rng, steps: int):
    """Seconds per PaintEnv step with uniformly random actions, or RENDERER.md's stroke target."""
    try:
        from spiral.envs import PaintEnv
    except ImportError:
        return 40e-6, "not measured: spiral.envs.PaintEnv is missing; RENDERER.md's ~40 µs/stroke target"
    env = PaintEnv(seed=0)
    spec = env.action_spec()
    actions = [{k: int(rng.integers(0, s.num_values)) for k, s in spec.items()} for _ in range(steps)]
    env.reset()
    for action in actions[:50]:  # numba compile and warm-up
        env.step(action)
    start = time.perf_counter()
    for action in actions:
        env.step(action)  # a step after LAST resets, as an actor's loop does
    return (time.perf_counter() - start) / steps, "PaintEnv, numba engine, uniformly random actions, resets included"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="narrow critic, few repetitions")
    parser.add_argument("--part", choices=("update", "reward", "all"), default="all")
    parser.add_argument("--critic", choices=("full", "small", "tiny"), default="full",
                        help="critic widths (launch/flags.py DISC_SIZES) of the update rows")
    parser.add_argument("--profile", action="store_true",
                        help="where each update's time goes: forward, backward, the gradient "
                             "penalty's double backward (XLA per-op times)")
    parser.add_argument("--child-core", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_core is not None:
        os.sched_setaffinity(0, {args.child_core})  # before JAX starts its threads
        reward_part(args.quick)
        return
    print(f"discriminator_throughput, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}")
    if args.part in ("update", "all"):
        update_part(args.quick, args.profile, args.critic)
    if args.part in ("reward", "all"):
        # A fresh process: XLA reads its flags once, at import, and the actor runs on one core.
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + SINGLE_CORE_FLAG).strip(),
                   OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", JAX_PLATFORMS="cpu")
        core = min(os.sched_getaffinity(0))
        command = [sys.executable, __file__, "--child-core", str(core)] + (["--quick"] if args.quick else [])
        subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
