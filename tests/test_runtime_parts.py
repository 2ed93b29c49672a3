"""The runtime's plumbing on the local backend: queue bounds and staleness, parameter service, logs."""

import io
import threading

import numpy as np
import pytest

from spiral.actors import backend as backend_lib
from spiral.actors import monitoring
from spiral.actors.parameter_server import ParameterServer
from spiral.actors.trajectory_queue import TrajectoryQueue


class FakeActor:
    """Returns (metadata, trajectory) like an actor; its policy version comes from a shared clock."""

    def __init__(self, index, clock, fail_on=()):
        self.index, self.clock, self.fail_on = index, clock, set(fail_on)
        self.calls = 0

    def unroll(self):
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError(f"actor {self.index} crashed")
        meta = {"actor": self.index, "call": self.calls, "policy_version": self.clock["version"]}
        return meta, np.full((3,), self.calls)


def _queue(num_actors=2, capacity=3, max_policy_lag=2, fail_on=(), on_failure=None):
    be = backend_lib.LocalBackend()
    clock = {"version": 0}
    objs = [FakeActor(i, clock, fail_on) for i in range(num_actors)]
    handles = [be.create(lambda o=o: o) for o in objs]
    q = TrajectoryQueue(be, handles, capacity=capacity, max_policy_lag=max_policy_lag,
                        on_actor_failure=on_failure)
    return be, clock, objs, q


def test_queue_bound_holds_and_unrolls_arrive_in_order_per_actor():
    be, clock, objs, q = _queue(num_actors=2, capacity=3)
    seen = {0: [], 1: []}
    for version in range(10):
        clock["version"] = version
        batch = q.get(2, learner_version=version)
        assert len(q) <= q.capacity
        for meta, ref in batch:
            seen[meta["actor"]].append(meta["call"])
            np.testing.assert_array_equal(be.get(ref), np.full((3,), meta["call"]))
    for calls in seen.values():
        assert calls == sorted(calls) and len(set(calls)) == len(calls)
    # The bound means no actor ever ran more than `capacity` unrolls ahead of consumption.
    assert sum(o.calls for o in objs) <= q.stats.unrolls_consumed + q.capacity


def test_stale_unrolls_are_dropped_and_counted():
    be, clock, objs, q = _queue(num_actors=1, capacity=2, max_policy_lag=1)
    q.get(1, learner_version=0)  # the actor is sent its next unroll, which acts at version 0
    clock["version"] = 5         # the learner moves on; actors now act with version 5
    batch = q.get(1, learner_version=5)
    assert q.stats.unrolls_dropped_stale == 1  # the unroll made at version 0 was 5 behind
    assert [m["policy_version"] for m, _ in batch] == [5]
    assert q.lag_summary()["policy_lag_max"] == 0


def test_failed_unrolls_are_reported_and_the_actor_is_used_again():
    failures = []
    be, clock, objs, q = _queue(num_actors=2, capacity=2, fail_on={2},
                                on_failure=lambda i, e: failures.append((i, str(e))))
    got = []
    for _ in range(4):
        got += q.get(1, learner_version=0)
    assert len(failures) == 2 and {i for i, _ in failures} == {0, 1}
    assert q.stats.unrolls_failed == 2
    assert {m["actor"] for m, _ in got} == {0, 1}


def test_queue_rejects_capacity_below_actor_count():
    with pytest.raises(ValueError, match="capacity"):
        _queue(num_actors=3, capacity=2)


def test_parameter_server_versions_only_move_forward():
    ps = ParameterServer()
    assert ps.latest("policy") is None
    ps.publish("policy", 3, ["p3"])
    assert ps.publish("policy", 2, ["p2"]) == 3  # an older publish arriving late is ignored
    assert ps.latest("policy", have_version=-1) == (3, ["p3"])
    assert ps.latest("policy", have_version=3) is None
    ps.publish("policy", 4, ["p4"])
    assert ps.latest("policy", have_version=3) == (4, ["p4"])
    assert ps.versions() == {"policy": 4}


def test_image_grid_places_each_image():
    images = np.stack([np.full((4, 5, 1), i / 10, np.float32) for i in range(5)])
    grid = monitoring.image_grid(images, columns=3, pad=1, pad_value=1.0)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 1) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 0 and grid[1 + 5, 1 + 6, 0] == round(0.4 * 255)
    assert grid[0, 0, 0] == 255  # padding
    with pytest.raises(ValueError, match="N, H, W, C"):
        monitoring.image_grid(np.zeros((4, 5)))


def test_monitor_prints_at_most_once_per_interval(tmp_path):
    out = io.StringIO()
    mon = monitoring.Monitor(str(tmp_path), print_every_s=3600, stream=out)
    assert mon.progress(1, {"updates": 1, "policy_lag_mean": 0.5, "d_real": float("nan")})
    assert not mon.progress(2, {"updates": 2})
    mon.images(2, "samples", np.zeros((4, 8, 8, 1), np.float32))
    mon.close()
    line = out.getvalue().strip()
    assert line.count("\n") == 0 and "upd 1" in line and "lag 0.5" in line and "D(real)" not in line
    assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard event file written"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's, on purpose
def test_a_dead_tensorboard_writer_neither_blocks_nor_stops_logging(tmp_path):
    """The writer's thread dies on a refused write: scalars after it must not block (tensorboardX
    blocks its caller once its queue is full and nobody empties it), and the monitor says so once."""
    said = []
    mon = monitoring.Monitor(str(tmp_path), print_every_s=3600, stream=io.StringIO(),
                             say_fn=said.append)
    mon.scalars(0, {"x": 0.0})
    events = mon._writer.file_writer.event_writer   # pylint: disable=protected-access

    def refuse(_event):
        raise OSError(27, "File too large")
    events._ev_writer.write_event = refuse          # pylint: disable=protected-access
    logging_thread = threading.Thread(
        target=lambda: [mon.scalars(step, {"x": float(step), "y": 1.0}) for step in range(1, 200)],
        daemon=True)
    logging_thread.start()
    logging_thread.join(timeout=30)
    assert not logging_thread.is_alive(), "scalars blocked on a dead TensorBoard writer"
    events._worker.join(timeout=60)                 # pylint: disable=protected-access
    assert not events._worker.is_alive(), "the refused write did not stop the writer's thread"  # pylint: disable=protected-access
    mon.progress(200, {"updates": 200}, force=True)
    assert len(said) == 1 and "training goes on without them" in said[0], said



def test_learner_values_name_the_two_learners_metrics():
    policy = {"pg_loss": 1.5, "entropy": 3.0, "learner_update_seconds": 0.2, "unlisted": 9.0}
    before_disc = monitoring.learner_values(policy, {})
    assert before_disc["pg_loss"] == 1.5 and before_disc["entropy"] == 3.0
    assert "unlisted" not in before_disc and "learner_update_seconds" not in before_disc
    assert np.isnan(before_disc["d_real"]) and np.isnan(before_disc["d_fake"])
    values = monitoring.learner_values(policy, {"critic_real": 2.0, "critic_fake": -1.0, "loss": 0.5},
                                       extra_policy_keys=("learner_update_seconds",))
    assert values["learner_update_seconds"] == 0.2
    assert (values["d_real"], values["d_fake"], values["d_loss"]) == (2.0, -1.0, 0.5)

def test_an_actor_that_keeps_failing_stops_the_run():
    failures = []
    be, clock, objs, q = _queue(num_actors=1, capacity=1, fail_on=set(range(1, 100)),
                                on_failure=lambda i, e: failures.append(i))
    with pytest.raises(RuntimeError, match="actor 0 failed 5 unrolls in a row"):
        q.get(1, learner_version=0)
    assert len(failures) == 4


# ---- the actors' episode runner (spiral.actors.acting) -----------------------------------------

def _runner_config(tmp_path, **overrides):
    from spiral.launch import flags as launch_flags
    values = dict(network="tiny", dataset_limit=64, episode_length=5, observation_width=16,
                  conditional=True, reward="l2", envs_per_actor=3, batch_size=3, runtime="local",
                  max_updates=1, run_dir=str(tmp_path / "run"), seed=11)
    values.update(overrides)
    return launch_flags.config_from_values(launch_flags.default_values("mnist", **values))


def _runner_targets(config, n=7):
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (n,) + config.env.observation_shape, dtype=np.uint8)


def test_episode_runner_records_what_its_environments_and_its_policy_did(tmp_path):
    """Replayed one environment at a time (PaintEnv with the runner's seeds) and through the
    agent's teacher-forced mode, the record holds the same canvases, masks, targets and logits."""
    import dataclasses
    import jax
    from spiral.actors.acting import EpisodeRunner
    from spiral.envs import PaintEnv
    from spiral.learner import Agent, check_trajectory
    from spiral.learner.types import batch_to_time_major
    config = _runner_config(tmp_path)
    targets = _runner_targets(config)
    runner = EpisodeRunner(config, actor_index=2, targets=targets, unroll_index=1)
    params = Agent(config.agent).init(jax.random.PRNGKey(3))
    result = runner.unroll(params, policy_version=4)
    traj = result.trajectory
    assert check_trajectory(traj, config.agent) == (3, 4)
    assert result.metadata["unroll_index"] == 1 and runner.unroll_index == 2
    assert (traj.policy_version == 4).all()
    np.testing.assert_array_equal(traj.step_type[:, 0], 0)
    np.testing.assert_array_equal(traj.step_type[:, -1], 2)

    env_fields = {f.name: getattr(config.env, f.name) for f in dataclasses.fields(config.env)
                  if f.name != "conditional"}
    for k, seed in enumerate(runner.env.seeds):
        env = PaintEnv(seed=int(seed), targets=targets, **env_fields)
        for _ in range(2):   # unroll 1 plays episode 1
            ts = env.reset()
        np.testing.assert_array_equal(traj.observation.canvas[k, 0], env.canvas_uint8())
        for t in range(4):
            ts = env.step({key: int(traj.action[key][k, t]) for key in config.agent.action_keys})
            np.testing.assert_array_equal(traj.observation.canvas[k, t + 1], env.canvas_uint8())
            np.testing.assert_array_equal(traj.observation.action_mask[k, t + 1],
                                          ts.observation["action_mask"])
            assert traj.discount[k, t] == ts.discount
        np.testing.assert_array_equal(traj.observation.target[k], targets[env.target_index][None]
                                      .repeat(5, axis=0))
        np.testing.assert_array_equal(result.final_canvases[k], env.canvas_uint8())

    tm = batch_to_time_major(traj)
    out = Agent(config.agent).unroll(params, tm.observation, tm.step_type == 0, tm.action,
                                     traj.initial_state, tm.noise)
    for key in config.agent.action_keys:
        np.testing.assert_allclose(np.swapaxes(out.logits[key], 0, 1), traj.behaviour_logits[key],
                                   rtol=1e-4, atol=1e-4)


def test_episode_runner_streams_follow_seed_actor_and_unroll_index(tmp_path):
    """Unroll u of actor a is the same whichever runner plays it (resume continues the streams);
    another actor, seed offset or unroll plays other episodes."""
    import jax
    from spiral.actors.acting import EpisodeRunner
    from spiral.learner import Agent
    config = _runner_config(tmp_path, conditional=False, reward="discriminator",
                            observation_width=64, rewards_on="learner")
    params = Agent(config.agent).init(jax.random.PRNGKey(0))

    def record(runner):
        traj = runner.unroll(params, 0).trajectory
        return traj.observation.canvas, traj.action["end"], traj.noise

    first = EpisodeRunner(config, actor_index=0)
    played = [record(first) for _ in range(3)]
    assert first.unroll_index == 3
    resumed = EpisodeRunner(config, actor_index=0, unroll_index=2)
    for a, b in zip(record(resumed), played[2]):
        np.testing.assert_array_equal(a, b)
    assert resumed.unroll_index == 3
    assert not np.array_equal(played[0][2], played[1][2])   # each unroll draws new noise
    for other in (EpisodeRunner(config, actor_index=1), EpisodeRunner(config, 0, seed_offset=1)):
        assert not np.array_equal(record(other)[2], played[0][2])
    with pytest.raises(ValueError, match="unroll_index must be an int >= 0"):
        EpisodeRunner(config, 0, unroll_index=-1)
