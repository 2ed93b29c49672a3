"""End-to-end runs of the training loop: local (deterministic) and on a 2-CPU local Ray.

Tiny networks and short episodes keep each run to seconds of compute; what is checked is the
plumbing: counts, finite losses, throughput, checkpoints, resume, the reward at the last step,
policy versions, the queue bound, and a killed actor's restart.
"""

import os
import threading
import time

import jax
import numpy as np
import pytest

from spiral.actors import checkpointing, run_loop
from spiral.actors.runtime import RunError
from spiral.actors.acting import EpisodeRunner
from spiral.discriminator import DiscriminatorLearner, canvas_scores
from spiral.launch import flags as launch_flags
from spiral.learner import Agent


def tiny_values(tmp_path, **overrides):
    """Flag values of a tiny MNIST run: tiny networks, 4 strokes, batches of 8."""
    values = dict(dataset_limit=512, episode_length=5, network="tiny", disc_network="tiny",
                  disc_batch_size=8, replay_batches=4, runtime="local", num_actors=1,
                  envs_per_actor=4, batch_size=8, max_updates=6, run_dir=str(tmp_path / "run"),
                  log_every_seconds=1.0, image_every_updates=2)
    values.update(overrides)
    return launch_flags.default_values("mnist", **values)


def descendants(pid: int) -> set[int]:
    """Every process started, directly or not, by process ``pid``."""
    children = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(p))
        except (OSError, IndexError, ValueError):
            pass
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def worker_pids(title: str) -> list[int]:
    """This test process's Ray workers whose command line starts with ``title`` (Ray names a
    worker ``ray::<Class>``); never another process's on a shared machine."""
    pids = []
    for pid in sorted(descendants(os.getpid())):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(title.encode()):
                    pids.append(pid)
        except OSError:
            pass
    return pids


def tiny_config(tmp_path, **overrides):
    return launch_flags.config_from_values(tiny_values(tmp_path, **overrides))


def test_reward_sits_on_the_last_step_and_equals_the_critic_score(data_dir, tmp_path):
    """Final-step rewards (no TCA): r_T = D(final canvas), earlier rewards 0."""
    config = tiny_config(tmp_path, temporal_credit_assignment=False)
    runner = EpisodeRunner(config, actor_index=0)
    params = Agent(config.agent).init(jax.random.PRNGKey(1))
    version, weights = DiscriminatorLearner(config.discriminator, seed=3).publish()
    result = runner.unroll(params, 7, weights, version)
    traj = result.trajectory
    assert traj.reward.shape == (4, config.env.episode_length - 1)
    np.testing.assert_array_equal(traj.reward[:, :-1], 0.0)
    expected = np.asarray(canvas_scores(weights, result.final_canvases, config=config.discriminator))
    np.testing.assert_allclose(traj.reward[:, -1], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(traj.discount[:, -1], 0.0)
    np.testing.assert_array_equal(traj.discount[:, :-1], 1.0)
    np.testing.assert_array_equal(traj.observation.canvas[:, -1], result.final_canvases)
    assert (traj.policy_version == 7).all()


def test_rewards_on_the_learner_equal_rewards_on_the_actors(data_dir, tmp_path):
    """--rewards_on=learner: actors record only the stroke penalties; the learner adds the
    critic's rewards from the canvases, giving the rewards the actors would have computed."""
    from spiral.actors import backend as backend_lib
    from spiral.actors.acting import CanvasRewards
    from spiral.actors.parameter_server import ParameterServer
    from spiral.actors.workers import DISCRIMINATOR, PolicyLearnerWorker
    on_actors = tiny_config(tmp_path, new_stroke_penalty=-0.25, temporal_credit_assignment=True)
    on_learner = tiny_config(tmp_path, new_stroke_penalty=-0.25, temporal_credit_assignment=True,
                             rewards_on="learner")
    params = Agent(on_actors.agent).init(jax.random.PRNGKey(1))
    version, weights = DiscriminatorLearner(on_actors.discriminator, seed=3).publish()
    full = EpisodeRunner(on_actors, 0).unroll(params, 0, weights, version).trajectory
    partial = EpisodeRunner(on_learner, 0).unroll(params, 0, None, -1).trajectory
    np.testing.assert_array_equal(partial.observation.canvas, full.observation.canvas)
    assert np.abs(full.reward - partial.reward).max() > 1e-3  # the critic's part was left out
    added = CanvasRewards(on_learner)(weights, partial)
    np.testing.assert_allclose(partial.reward + added, full.reward, rtol=1e-5, atol=1e-6)

    be = backend_lib.LocalBackend()
    server = be.create(ParameterServer)
    be.get(server.publish.remote(DISCRIMINATOR, version, [be.put(weights)]))
    worker = PolicyLearnerWorker(on_learner, server, "local")
    metrics = worker.update(partial)
    assert metrics["reward_disc_version"] == version
    np.testing.assert_allclose(metrics["mean_reward_per_unroll"], full.reward.sum(axis=1).mean(),
                               rtol=1e-5)


def test_local_runtime_is_deterministic_and_resumes(data_dir, tmp_path):
    first = run_loop.train(tiny_config(tmp_path / "a"))
    second = run_loop.train(tiny_config(tmp_path / "b"))
    assert first["counters"]["updates"] == 6 and first["counters"]["disc_updates"] > 0
    for key in ("total_loss", "entropy", "grad_norm"):
        assert np.isfinite(first["policy_metrics"][key])
        assert first["policy_metrics"][key] == second["policy_metrics"][key], key
    assert first["disc_metrics"]["loss"] == second["disc_metrics"]["loss"]

    # Resume the first run to 9 updates: the counters continue from the checkpoint.
    resumed = run_loop.train(tiny_config(tmp_path / "a", max_updates=9, resume=True))
    assert resumed["counters"]["updates"] == 9
    assert resumed["counters"]["episodes"] == 9 * 8
    paths = checkpointing.list_checkpoints(str(tmp_path / "a" / "run" / "checkpoints"))
    assert [os.path.basename(p) for p in paths] == ["ckpt_00000006", "ckpt_00000009"]
    # The discriminator's replay was checkpointed and restored: its count of canvases ever
    # added continues past the first run's (6 updates × 8: the local runtime acts only when the
    # learner asks), where a fresh replay would restart from 0.
    replays = [checkpointing.restore_tree(os.path.join(p, "replay")) for p in paths]
    added = [int(r["added"]) for r in replays]
    assert added == [6 * 8, 9 * 8]
    assert int(replays[1]["size"]) == 32  # capacity: replay_batches 4 × disc batch 8


def test_resume_refuses_a_different_network(data_dir, tmp_path):
    run_loop.train(tiny_config(tmp_path, max_updates=2))
    with pytest.raises(RunError, match="agent"):
        run_loop.train(tiny_config(tmp_path, max_updates=3, resume=True, network="small"))


@pytest.fixture(scope="module")
def ray_2cpu():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_runtime_trains_checkpoints_and_resumes(data_dir, tmp_path, ray_2cpu):
    result = run_loop.train(tiny_config(tmp_path, runtime="ray", max_updates=8, num_actors=1,
                                      ray_num_cpus=2))
    counters = result["counters"]
    assert counters["updates"] == 8 and counters["disc_updates"] >= 1
    assert counters["agent_steps"] == 8 * 8 * 4
    for key in ("total_loss", "pg_loss", "baseline_loss", "entropy"):
        assert np.isfinite(result["policy_metrics"][key]), key
    assert np.isfinite(result["disc_metrics"]["loss"])
    assert result["policy_metrics"]["learner_update_seconds"] > 0
    # The queue bound held and no unroll acted with a policy more than the allowed lag behind.
    assert max(result["queue"]["lags"]) <= 20
    # Each actor's unrolls arrive with non-decreasing policy versions (it pulls the newest).
    for actor, versions in result["policy_versions_by_actor"].items():
        assert versions == sorted(versions) and versions[-1] > 0, (actor, versions)
    assert result["checkpoint"].endswith("ckpt_00000008")
    resumed = run_loop.train(tiny_config(tmp_path, runtime="ray", max_updates=10, resume=True))
    assert resumed["counters"]["updates"] == 10
    assert resumed["counters"]["agent_steps"] == 10 * 8 * 4


def test_a_killed_actor_is_restarted_and_the_run_finishes(data_dir, tmp_path, ray_2cpu):
    """Kill one actor's process (SIGKILL) mid-run: Ray restarts it and the run still completes."""
    killed = []

    def killer():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            pids = worker_pids("ray::ActorWorker")
            if pids and os.path.isdir(tmp_path / "run" / "tb"):
                time.sleep(3.0)  # let it paint a few unrolls first
                os.kill(pids[0], 9)
                killed.append(pids[0])
            time.sleep(0.5)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_loop.train(tiny_config(tmp_path, runtime="ray", max_updates=40, num_actors=1))
    thread.join(timeout=5)
    assert killed, "the test never found an actor to kill"
    assert result["counters"]["updates"] == 40
    assert result["counters"]["actor_restarts"] == 1
