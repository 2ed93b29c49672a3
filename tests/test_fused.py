"""The fused one-device runtime (``spiral.actors.fused``) against the distributed runtime's pieces.

What must agree with the other runtime, each against an independent reference:
* the record: the numba ``PaintEnv`` replaying the recorded actions gives the recorded canvases
  and masks; the teacher-forced agent gives the recorded behaviour logits; the rewards are the
  CPU actor's (``make_episode_reward_fn`` + ``stroke_penalties``);
* the updates: ``PolicyLearner.update`` and ``DiscriminatorLearner.update`` on the same batches
  give the fused step's parameters (the rollout differs between runtimes, the update must not);
* the replay ring and the discriminator-update accounting: the host ``Replay`` and the driver's
  credit rule;
* a short run: finite metrics, the driver's checkpoints, and resume in both directions between
  the fused and the local runtime; data parallelism over 2 CPU devices in a subprocess.

Tiny network, 4 episodes of 2 actions: the fused step compiles once for the whole module (the
compile dominates; one step runs in a fraction of a second).
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SHARED_DATA, skip_unless
from spiral.actors import acting, checkpointing, fused, monitoring, run_loop
from spiral.actors.runtime import RunError
from spiral.discriminator import DiscriminatorLearner, Replay, make_episode_reward_fn
from spiral.discriminator import learning as disc_learning
from spiral.envs import PaintEnv, jax_engine
from spiral.evaluation import log_checkpoint_metrics, read_eval_log
from spiral.launch import flags as launch_flags
from spiral.learner import FIRST, LAST, MID, PolicyLearner, batch_to_time_major, check_trajectory
from test_runtime_e2e import tiny_values

BATCH, EPISODE_LENGTH = 4, 3
T = EPISODE_LENGTH - 1


def fused_config(tmp_path, **overrides):
    # The critic's batch is the policy's, so its replay holds one batch after the first step
    # and every step has one discriminator update: one compiled step for the whole module.
    values = dict(runtime="fused", episode_length=EPISODE_LENGTH, batch_size=BATCH,
                  disc_batch_size=BATCH, dataset_limit=64)
    values.update(overrides)
    return launch_flags.config_from_values(tiny_values(tmp_path, **values))


def _data_dir() -> pathlib.Path:
    path = os.environ.get("SPIRAL_DATA_DIR")
    skip_unless(bool(path) and pathlib.Path(path).is_dir(), "no dataset folder (SPIRAL_DATA_DIR)")
    return pathlib.Path(path)


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """Two fused steps from a fresh state, and everything needed to check them."""
    _data_dir()
    # Final-step rewards here (the TCA rewards have their own test below).
    config = fused_config(tmp_path_factory.mktemp("fused"), temporal_credit_assignment=False)
    parts = fused.make_parts(config)
    data = jax.tree.map(jnp.asarray, fused.load_data(config))
    states = [parts.init_state(data)]
    step = fused.make_fused_step(config)
    keys = [fused.step_key(config.runtime.seed, i) for i in range(2)]
    metrics = []
    for key in keys:
        state, m = step(states[-1], key)
        states.append(state)
        metrics.append(jax.device_get(m))
    rollout = jax.jit(parts.rollout, static_argnums=5)
    rollouts = [jax.device_get(rollout(s.policy.params, s.policy.step,
                                       disc_learning.scoring_weights(s.disc), None,
                                       jax.random.split(k)[0], BATCH))
                for s, k in zip(states, keys)]
    return dict(config=config, parts=parts, data=data, states=states, keys=keys,
                metrics=metrics, rollouts=rollouts)


# ---------------------------------------------------------------------------- small pure pieces

@pytest.mark.parametrize("xp", ["numpy", "jax.numpy under jit"])
def test_stroke_penalties_against_an_explicit_loop(xp):
    """One function for both runtimes (numpy in the actors, jax.numpy in the fused step)."""
    rng = np.random.default_rng(0)
    flags = rng.integers(0, 2, size=(7, 64)).astype(np.int32)
    flags[:, :5] = 0                      # blank episodes get the blank penalty
    flags[:, 5] = 1                       # one long stroke: one new-stroke penalty
    expected = np.zeros((7, 64), np.float32)
    for b in range(64):
        for t in range(7):
            if flags[t, b] == 1 and (t == 0 or flags[t - 1, b] == 0):
                expected[t, b] += np.float32(-0.25)
        if not flags[:, b].any():
            expected[-1, b] += np.float32(-3.0)
    if xp == "numpy":
        got = acting.stroke_penalties(flags, -0.25, -3.0)
    else:
        got = np.asarray(jax.jit(lambda f: acting.stroke_penalties(f, -0.25, -3.0, xp=jnp))(flags))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert got[-1, :5].tolist() == [-3.0] * 5 and got[:, 5].sum() == -0.25


def test_replay_ring_keeps_what_the_host_replay_keeps():
    capacity = 8
    host = Replay(capacity, image_channels=1, seed=0)
    ring = fused.replay_init(capacity, 1, conditional=False)
    add = jax.jit(fused.replay_add)
    counter = 0
    for count in (3, 4, 2, 11, 1, 8):     # wraps, and one add larger than the capacity
        canvases = (counter + np.arange(count, dtype=np.uint8))[:, None, None, None] * np.ones(
            (1, 64, 64, 1), np.uint8)
        counter += count
        host.add(canvases)
        ring = add(ring, jnp.asarray(canvases))
        np.testing.assert_array_equal(np.asarray(ring.canvases), host._canvases)  # pylint: disable=protected-access
        assert int(ring.size) == len(host) and int(ring.next) == host._next  # pylint: disable=protected-access


def test_replay_samples_uniformly_from_the_filled_slots_only():
    ring = fused.replay_init(16, 1, conditional=False)
    ring = fused.replay_add(ring, jnp.arange(1, 6, dtype=jnp.uint8)[:, None, None, None]
                            * jnp.ones((1, 64, 64, 1), jnp.uint8))
    fake, targets = fused.replay_sample(ring, jax.random.PRNGKey(0), 5000)
    values = np.asarray(fake[:, 0, 0, 0])
    assert targets is None and set(values.tolist()) == {1, 2, 3, 4, 5}
    counts = np.bincount(values, minlength=6)[1:]
    # Uniform over 5 slots: each count ~ Binomial(5000, 0.2), sd 28; 5 sd either side.
    assert np.all(np.abs(counts - 1000) < 140), counts


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_disc_updates_due_pays_floor_of_rate_times_steps(rate):
    """The driver's credit rule: after k ready steps, floor(k·rate) updates in all (exact for
    these binary fractions); steps before the replay holds a batch run none and drop theirs."""
    credit, done = 0.0, []
    for step in range(12):
        n, credit = fused.disc_updates_due(credit, rate, ready=step >= 2)
        done.append(n)
    assert done[:2] == [0, 0]
    for k in range(1, 11):
        assert sum(done[2:2 + k]) == int(np.floor((k + 2) * rate)) - int(np.floor(2 * rate)), (k, done)


# ---------------------------------------------------------------------------- the rollout record

def test_rollout_records_what_the_cpu_actor_records(two_steps):
    config, parts = two_steps["config"], two_steps["parts"]
    state, key = two_steps["states"][0], two_steps["keys"][0]
    traj = two_steps["rollouts"][0].trajectory
    assert check_trajectory(traj, config.agent, batched=True) == (BATCH, T)
    np.testing.assert_array_equal(traj.step_type, [[FIRST] + [MID] * (T - 1) + [LAST]] * BATCH)
    np.testing.assert_array_equal(traj.discount, [[1.0] * (T - 1) + [0.0]] * BATCH)
    np.testing.assert_array_equal(traj.policy_version, 0)
    np.testing.assert_array_equal(traj.noise, np.broadcast_to(traj.noise[:, :1], traj.noise.shape))

    # The numba environment, seeded as the fused reset seeded each episode, replays the actions.
    reset_key = jax.random.split(jax.random.split(key)[0], 3)[0]
    seeds = np.asarray(jax_engine.reset(reset_key, BATCH, config.env).seed)
    e = config.env
    differing = 0
    for b in range(BATCH):
        env = PaintEnv(canvas_width=e.canvas_width, grid_width=e.grid_width,
                       episode_length=e.episode_length, brush_sizes=e.brush_sizes,
                       use_color=e.use_color, use_pressure=e.use_pressure, renderer="numba",
                       seed=int(seeds[b]), observation_width=e.observation_width)
        ts = env.reset()
        canvases, masks = [env.canvas_uint8().copy()], [ts.observation["action_mask"]]
        for t in range(T):
            ts = env.step({k: int(v[b, t]) for k, v in traj.action.items()})
            canvases.append(env.canvas_uint8().copy())
            masks.append(ts.observation["action_mask"])
        assert ts.last()
        np.testing.assert_array_equal(traj.observation.action_mask[b], np.stack(masks))
        delta = np.abs(traj.observation.canvas[b].astype(int) - np.stack(canvases).astype(int))
        assert delta.max() <= 1   # RENDERER.md's twin contract: ≤ 1 level at < 1e-3 of pixels
        differing += int((delta > 0).sum())
    assert differing <= 1e-3 * traj.observation.canvas.size
    assert (traj.observation.canvas[:, -1] < 255).any(), "nothing was painted: a weak check"

    # The behaviour logits are the agent's own along the recorded path (teacher forcing).
    tm = batch_to_time_major(jax.tree.map(jnp.asarray, traj))
    out = jax.jit(parts.agent.unroll)(state.policy.params, tm.observation, tm.step_type == FIRST,
                                      tm.action, tm.initial_state, tm.noise)
    for k, logits in traj.behaviour_logits.items():
        np.testing.assert_allclose(np.swapaxes(np.asarray(out.logits[k]), 0, 1), logits,
                                   rtol=1e-4, atol=1e-4, err_msg=k)

    # Rewards: the CPU actor's reward function on the same canvases, plus its penalties.
    weights = jax.device_get(disc_learning.scoring_weights(state.disc))
    reward_fn = make_episode_reward_fn(config.discriminator, acting.reward_mode(config))
    expected = reward_fn(weights, np.swapaxes(traj.observation.canvas, 0, 1))
    expected = expected + acting.stroke_penalties(traj.action["flag"].T, config.new_stroke_penalty,
                                                  config.blank_penalty)
    np.testing.assert_allclose(traj.reward, expected.T, rtol=1e-5, atol=1e-6)
    assert np.all(traj.reward[:, :-1] == 0.0) and np.all(traj.reward[:, -1] != 0.0)
    np.testing.assert_allclose(two_steps["metrics"][0]["mean_episode_return"],
                               traj.reward.sum(axis=1).mean(), rtol=1e-6)


def test_rollout_rewards_with_penalties_and_tca(tmp_path, two_steps):
    """TCA rewards and stroke penalties on a recorded episode, as the CPU actor computes them."""
    config = fused_config(tmp_path, temporal_credit_assignment=True, new_stroke_penalty=-0.1,
                          blank_penalty=-1.0)
    traj = two_steps["rollouts"][0].trajectory
    weights = jax.device_get(disc_learning.scoring_weights(two_steps["states"][0].disc))
    canvases = np.swapaxes(traj.observation.canvas, 0, 1)
    flags = traj.action["flag"].T.copy()
    flags[:, 0] = 0   # one blank episode
    got = jax.jit(lambda w, c, f: fused._episode_rewards(  # pylint: disable=protected-access
        config, "tca", w, c, None) + acting.stroke_penalties(f, -0.1, -1.0, xp=jnp))(weights, canvases, flags)
    expected = (make_episode_reward_fn(config.discriminator, "tca")(weights, canvases)
                + acting.stroke_penalties(flags, -0.1, -1.0))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- the same updates

def update_differences(fused_state, learner_state) -> dict:
    """How far two policy learner states are apart after the same updates.

    Adam's first moment (``mu``, a running mean of the gradients) is the sharp check that the
    gradients are the same. Parameters are compared by the fraction that moved differently:
    Adam divides each gradient by its own magnitude (+ eps 1e-8), so an element whose gradient
    is ~1e-8 moves by a fraction of the learning rate set by its gradient's last bits, which
    any change in summation order (another XLA fusion, another device split) can flip.
    """
    flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64))
                                        for x in jax.tree.leaves(jax.device_get(tree))])
    params = np.abs(flat(fused_state.params) - flat(learner_state.params))
    adam = lambda state: state.opt_state[1]
    relative = lambda a, b: float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
    return {
        "mu": relative(flat(adam(fused_state).mu), flat(adam(learner_state).mu)),
        "nu": relative(flat(adam(fused_state).nu), flat(adam(learner_state).nu)),
        "params_max": float(params.max()),
        "params_fraction_off": float(np.mean(params > 2e-6)),
    }


def assert_same_update(diff: dict, learning_rate: float):
    # Rounding only: the value targets' normalisation (a std of the batch's returns, computed
    # in two differently fused programs) moves mu by ~2e-5 relative; a wrong gradient moves it
    # by orders of magnitude more.
    assert diff["mu"] < 5e-5 and diff["nu"] < 1e-4, diff
    assert diff["params_fraction_off"] < 1e-3, diff
    assert diff["params_max"] <= 2 * learning_rate, diff   # at most one Adam step apart

def test_fused_policy_update_is_the_policy_learners_update(two_steps):
    """Same batches, same seeds: the fused step's parameters are PolicyLearner.update's."""
    config, states, metrics = two_steps["config"], two_steps["states"], two_steps["metrics"]
    learner = PolicyLearner(config.agent, config.policy, seed=config.runtime.seed)
    for i, rollout in enumerate(two_steps["rollouts"]):
        assert int(rollout.trajectory.policy_version[0]) == i
        reference = learner.update(rollout.trajectory)
        fused_state = jax.device_get(states[i + 1].policy)
        # float32 sums over the batch in two differently fused XLA programs: a few ulps of
        # each term (1.4e-5 relative seen on the normalised value loss).
        for name in ("total_loss", "pg_loss", "baseline_loss", "entropy", "grad_norm"):
            np.testing.assert_allclose(metrics[i][name], reference[name], rtol=5e-5, atol=1e-6,
                                       err_msg=name)
        assert int(fused_state.step) == learner.step == i + 1
        assert_same_update(update_differences(fused_state, learner.state),
                           config.policy.learning_rate)
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                         states[0].policy.params, states[2].policy.params)
    assert max(jax.tree.leaves(moved)) > 1e-5, "the parameters did not change: a vacuous check"


def test_fused_discriminator_update_is_the_discriminator_learners_update(two_steps):
    """Each step adds its final canvases to the replay and runs one critic update, equal to
    DiscriminatorLearner.update on the same replayed and real batch."""
    config, parts, states = two_steps["config"], two_steps["parts"], two_steps["states"]
    learner = DiscriminatorLearner(config.discriminator, seed=config.runtime.seed)
    finals = np.concatenate([r.final_canvases for r in two_steps["rollouts"]])
    for i in range(2):
        assert int(states[i + 1].replay.size) == (i + 1) * BATCH
        np.testing.assert_array_equal(np.asarray(states[i + 1].replay.canvases[:(i + 1) * BATCH]),
                                      finals[:(i + 1) * BATCH])
        disc_key = jax.random.split(two_steps["keys"][i])[1]
        fake, real, targets = parts.disc_batch(states[i + 1].replay, two_steps["data"],
                                               jax.random.fold_in(disc_key, 0))
        assert targets is None and set(np.unique(np.asarray(fake)).tolist()) <= set(
            np.unique(finals[:(i + 1) * BATCH]).tolist())
        reference = jax.device_get(learner.update(np.asarray(fake), np.asarray(real)))
        np.testing.assert_allclose(two_steps["metrics"][i]["d_loss"], reference["loss"],
                                   rtol=1e-5, atol=1e-6)
    got = jax.device_get(disc_learning.state_to_tree(states[2].disc))
    want = jax.device_get(disc_learning.state_to_tree(learner.state))
    assert int(got["step"]) == 2
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=0, atol=2e-6), got, want)


# ---------------------------------------------------------------------------- the shell

def _trees(path):
    return tuple(checkpointing.restore_tree(os.path.join(path, part))
                 for part in ("policy", "discriminator", "replay"))


def _assert_same_trees(a, b):
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_fused_run_checkpoints_and_resumes_across_runtimes(two_steps, tmp_path):
    """A fused run writes the driver's checkpoint; the local runtime resumes it (and vice versa)
    with the policy and discriminator states carried over exactly."""
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    result = run_loop.train(fused_config(tmp_path, max_updates=3), on_checkpoint=log_checkpoint_metrics)
    last_line = monitoring.progress_line(result["progress"], 0.0)   # the last line it printed
    assert " | upd 3 | D upd 3 | act " in last_line and " | return " in last_line, last_line
    assert "D(real)" in last_line and "pg loss" in last_line, last_line
    counters = result["counters"]
    assert counters["updates"] == 3 and counters["disc_updates"] == 3
    assert counters["agent_steps"] == 3 * BATCH * T and counters["episodes"] == 3 * BATCH
    for key in ("total_loss", "pg_loss", "baseline_loss", "entropy", "grad_norm"):
        assert np.isfinite(result["policy_metrics"][key]), key
    for key in ("loss", "critic_real", "critic_fake"):
        assert np.isfinite(result["disc_metrics"][key]), key
    assert result["checkpoint"] == str(ckpt_dir / "ckpt_00000003")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir / "tb"))
    evaluation = read_eval_log(str(ckpt_dir))   # the evaluation hook ran at the checkpoint
    assert [r["updates"] for r in evaluation] == [3] and "error" not in evaluation[0], evaluation
    assert all(np.isfinite(v) for v in evaluation[0]["metrics"].values())
    saved_config, saved_counters = checkpointing.read_run_info(result["checkpoint"])
    assert saved_config["runtime"]["runtime"] == "fused" and saved_counters["updates"] == 3
    fused_trees = _trees(result["checkpoint"])
    assert int(fused_trees[0]["step"]) == 3 and int(fused_trees[1]["step"]) == 3
    assert (int(fused_trees[2]["size"]), int(fused_trees[2]["added"])) == (3 * BATCH, 3 * BATCH)

    # The local runtime restores it (nothing left to do at 3 updates) and saves it unchanged ...
    local_config = fused_config(tmp_path, runtime="local", max_updates=3, resume=True)
    assert run_loop.train(local_config)["counters"]["updates"] == 3
    _assert_same_trees(_trees(ckpt_dir / "ckpt_00000003"), fused_trees)
    # ... and trains on from it.
    local = run_loop.train(fused_config(tmp_path, runtime="local", max_updates=4, resume=True))
    assert local["counters"]["updates"] == 4 and local["counters"]["episodes"] == 4 * BATCH
    local_trees = _trees(local["checkpoint"])
    assert int(local_trees[0]["step"]) == 4 and int(local_trees[2]["added"]) >= 4 * BATCH

    # The fused runtime restores the local checkpoint exactly, and trains on from it.
    assert run_loop.train(fused_config(tmp_path, max_updates=4, resume=True))["counters"]["updates"] == 4
    _assert_same_trees(_trees(ckpt_dir / "ckpt_00000004"), local_trees)
    resumed = run_loop.train(fused_config(tmp_path, max_updates=5, resume=True))
    assert resumed["counters"]["updates"] == 5 and resumed["counters"]["episodes"] == 5 * BATCH
    final_trees = _trees(resumed["checkpoint"])
    assert int(final_trees[0]["step"]) == 5 and int(final_trees[1]["step"]) == int(local_trees[1]["step"]) + 1
    assert int(final_trees[2]["added"]) == int(local_trees[2]["added"]) + BATCH   # the replay went on


def test_fused_resume_refuses_a_different_network(two_steps, tmp_path):
    run_loop.train(fused_config(tmp_path, max_updates=1))
    with pytest.raises(RunError, match="agent"):
        run_loop.train(fused_config(tmp_path, max_updates=2, resume=True, network="small"))


def test_fused_runs_conditional_with_the_complement_critic_and_two_updates_per_step(tmp_path):
    """End to end through the run loop: conditional MNIST targets, SPIRAL++'s complement
    discriminator, two critic updates per policy update."""
    _data_dir()
    config = fused_config(tmp_path, conditional=True, complement_discriminator=True,
                          disc_updates_per_policy_update=2.0, max_updates=3)
    result = run_loop.train(config)
    counters = result["counters"]
    assert counters["updates"] == 3 and counters["disc_updates"] == 6
    assert all(np.isfinite(result["disc_metrics"][k]) for k in ("loss", "critic_real", "critic_fake"))
    assert np.isfinite(result["policy_metrics"]["total_loss"])
    policy, disc, replay = _trees(result["checkpoint"])
    assert int(policy["step"]) == 3 and int(disc["step"]) == 6
    # The replay holds each canvas with the target it was painted from: MNIST digits (ink on
    # white), not blank canvases.
    size = int(replay["size"])
    assert size == 3 * BATCH and replay["targets"].shape == replay["canvases"].shape
    assert (replay["targets"][:size] < 128).any(axis=(1, 2, 3)).all()


def test_fused_runs_the_l2_reward_without_a_discriminator(tmp_path):
    _data_dir()
    config = fused_config(tmp_path, conditional=True, reward="l2", max_updates=3)
    result = run_loop.train(config)
    assert result["counters"]["updates"] == 3 and result["counters"]["disc_updates"] == 0
    assert result["disc_metrics"] == {}
    # Normalised L2: the blank canvas scores -1 and a perfect copy 0.
    assert -5.0 < result["progress"]["mean_episode_return"] <= 0.0, result["progress"]
    assert sorted(os.listdir(result["checkpoint"])) == ["policy", "run.json"]


def test_bad_device_count_is_refused(two_steps, tmp_path):
    config = fused_config(tmp_path)
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        fused.make_fused_step(config, num_devices=3)
    with pytest.raises(ValueError, match="devices but JAX sees"):
        fused.fused_mesh(len(jax.devices()) + 1)


# ---------------------------------------------------------------------------- data parallelism

_TWO_DEVICES = textwrap.dedent("""
    import json, os, pathlib, sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    from test_fused import BATCH, fused_config, update_differences
    from spiral.actors import fused
    from spiral.learner import PolicyLearner
    assert len(jax.devices()) == 2, jax.devices()
    config = fused_config(pathlib.Path({tmp!r}))
    parts = fused.make_parts(config)
    state = fused.place_state(parts.init_state(jax.tree.map(jnp.asarray, fused.load_data(config))), 2)
    step = fused.make_fused_step(config, num_devices=2, return_trajectory=True)
    learner = PolicyLearner(config.agent, config.policy, seed=config.runtime.seed)
    out = {{"diffs": [], "loss_diff": [], "finite": True}}
    for i in range(2):
        state, metrics = step(state, fused.step_key(config.runtime.seed, i))
        metrics = jax.device_get(metrics)
        reference = learner.update(metrics["trajectory"])
        out["diffs"].append(update_differences(state.policy, learner.state))
        out["loss_diff"].append(abs(float(metrics["total_loss"]) - reference["total_loss"]))
        out["finite"] &= bool(np.isfinite(metrics["total_loss"]) and np.isfinite(metrics["d_loss"]))
    canvases = metrics["trajectory"].observation.canvas[:, -1]
    out["halves_differ"] = bool((canvases[:BATCH // 2] != canvases[BATCH // 2:]).any())
    out["d_step"] = int(state.disc.step)
    out["learning_rate"] = config.policy.learning_rate
    sharding = state.policy.params["value"]["kernel"].sharding
    out["replicated_on"] = len(sharding.device_set) if sharding.is_fully_replicated else 0
    print("RESULT", json.dumps(out))
""")


def test_two_device_data_parallel_step_keeps_the_same_update(tmp_path):
    """2 CPU devices (a subprocess: the device count is fixed when JAX starts): each plays half
    the batch, and the update equals PolicyLearner.update on the whole batch."""
    _data_dir()
    tests = str(pathlib.Path(__file__).parent)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    env.setdefault("SPIRAL_DATA_DIR", str(SHARED_DATA))
    script = _TWO_DEVICES.format(tests=tests, tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=1200, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["finite"] and out["halves_differ"] and out["d_step"] == 2
    for diff in out["diffs"]:
        assert_same_update(diff, out["learning_rate"])
    assert max(out["loss_diff"]) < 1e-4, out
    assert out["replicated_on"] == 2, out   # the parameters stay replicated on both devices
