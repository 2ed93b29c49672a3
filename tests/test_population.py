"""Population-based training (``spiral.actors.population``): the PBT rules against explicit
formulas, and populations of 3 tiny agents sharing one critic, locally and on Ray.

What the real runs check: the members act and learn (on Ray in their own processes); the shared
critic's replay holds canvases from every member; an exploit copies the whole learner state
exactly and perturbs the hyperparameters within their ranges; a resumed population ends bit for
bit where a straight one ends; the folders feed evaluate.py and the run report.
"""

import dataclasses
import functools
import json
import math
import os
import time

import jax
import numpy as np
import pytest
from scipy import stats

from spiral.actors import checkpointing, population, run_loop
from spiral.actors.config import ExperimentConfig, PopulationConfig
from spiral.actors.population import (PopulationRuntime, explore, final_scores, initial_hyperparams,
                                      member_config, member_names, merge_values, perturb,
                                      truncation_count, truncation_selection)
from spiral.actors.runtime import load_run_data
from spiral.discriminator import DiscriminatorLearner, canvas_scores, make_episode_reward_fn
from spiral.evaluation import load_checkpoint, log_checkpoint_metrics, run_report
from spiral.launch import flags as launch_flags
from spiral.learner import Observation, Trajectory

from test_run_report import Page
from test_runtime_e2e import tiny_values

FACTORS = (0.8, 1.25)


def population_values(tmp_path, **overrides):
    """A population of 3 tiny agents on 16x16 canvases, a PBT round every 2 updates."""
    values = dict(observation_width=16, grid_width=8, episode_length=4, population_size=3,
                  pbt_ready_every_updates=2, pbt_fitness_episodes=8, max_updates=4,
                  log_every_seconds=100.0)
    values.update(overrides)
    return tiny_values(tmp_path, **values)


def population_config(tmp_path, **overrides):
    return launch_flags.config_from_values(population_values(tmp_path, **overrides))


# ------------------------------------------------------------------------------ the rules

def test_initial_hyperparameters_are_log_uniform_in_their_ranges():
    config = PopulationConfig(size=4000, learning_rate_range=(1e-5, 3e-4), entropy_cost_range=(2e-3, 0.1))
    drawn = np.array(initial_hyperparams(config, seed=7))
    assert drawn.shape == (4000, 2)
    for column, (low, high) in zip(drawn.T, (config.learning_rate_range, config.entropy_cost_range)):
        assert column.min() >= np.float32(low) and column.max() <= np.float32(high)
        # log(value) is uniform on [log low, log high]: Kolmogorov-Smirnov against that law.
        unit = (np.log(column) - math.log(low)) / (math.log(high) - math.log(low))
        assert stats.kstest(unit, "uniform").pvalue > 1e-3
    assert initial_hyperparams(config, seed=7) == [tuple(row) for row in drawn.tolist()]
    assert initial_hyperparams(config, seed=8) != initial_hyperparams(config, seed=7)


@pytest.mark.parametrize("size, expected", [(1, 0), (2, 1), (3, 1), (4, 1), (7, 1), (8, 2), (10, 2), (13, 3)])
def test_truncation_takes_a_fifth_at_least_one_at_most_half(size, expected):
    assert truncation_count(size, 0.2) == expected
    assert truncation_count(size, 0.5) == size // 2


def test_the_bottom_copies_the_top():
    fitness = [0.5, -1.0, 3.0, 2.0, math.nan, 0.0, 1.0, 2.5, 0.7, -0.5]
    copied = []
    for seed in range(200):
        pairs = truncation_selection(fitness, 0.2, np.random.default_rng(seed))
        assert [loser for loser, _ in pairs] == [4, 1]   # NaN counts as the lowest
        copied += [winner for _, winner in pairs]
    assert set(copied) == {2, 7}                           # the two fittest, both drawn
    assert 0.35 < copied.count(2) / len(copied) < 0.65
    # Ties go by index: the earlier member is ranked lower.
    assert truncation_selection([1.0, 1.0, 1.0], 0.2, np.random.default_rng(0)) == [(0, 2)]


def test_perturbation_multiplies_by_a_factor_and_stays_in_bounds():
    rng = np.random.default_rng(3)
    bounds = (1e-5, 3e-4)
    outcomes = set()
    for value in np.exp(rng.uniform(math.log(1e-5), math.log(3e-4), 2000)):
        value = float(np.float32(value))
        new = perturb(value, rng, FACTORS, bounds)
        assert bounds[0] <= new <= bounds[1]
        candidates = {_within(value * f, bounds): f for f in FACTORS}
        assert new in candidates
        outcomes.add(candidates[new])
    assert outcomes == set(FACTORS)
    top = perturb(3e-4, np.random.default_rng(0), (1.25,), bounds)
    assert top <= 3e-4 and top == float(np.nextafter(np.float32(3e-4), np.float32(0)))
    config = PopulationConfig(size=2)
    lr, ec = explore((1e-4, 1e-2), np.random.default_rng(1), config)
    assert lr in (float(np.float32(8e-5)), float(np.float32(1.25e-4)))
    assert ec in (float(np.float32(8e-3)), float(np.float32(1.25e-2)))


def _within(value, bounds):
    """``value`` as a float32 if that lies inside ``bounds``, else the float32 inside them
    nearest to the bound it passed."""
    low, high = bounds
    lowest = min(x for x in (np.float32(low), np.nextafter(np.float32(low), np.float32(1))) if float(x) >= low)
    highest = max(x for x in (np.float32(high), np.nextafter(np.float32(high), np.float32(0))) if float(x) <= high)
    rounded = float(np.float32(value))
    if low <= rounded <= high:
        return rounded
    return float(lowest if value < (low + high) / 2 else highest)


def _trajectory(canvases, targets=None) -> Trajectory:
    """A record with only the fields ``final_scores`` reads: canvases [K, T+1, W, W, C]."""
    k, steps = canvases.shape[:2]
    target = None if targets is None else np.broadcast_to(targets[:, None], canvases.shape)
    return Trajectory(Observation(canvases, None, target), None, None, None, None, None, None, None, None)


def test_fitness_is_the_final_reward_of_the_newest_episodes(tmp_path):
    rng = np.random.default_rng(0)
    config = population_config(tmp_path, conditional=True, reward="l2", population_size=2)
    canvases = [rng.integers(0, 256, (4, 4, 16, 16, 1), dtype=np.uint8) for _ in range(2)]
    canvases[0][:, 0] = 255                            # episodes start from the blank canvas
    targets = [rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8) for _ in range(2)]
    l2 = make_episode_reward_fn(config.discriminator, "l2", normalise_l2=True)
    got = final_scores(l2, None, [_trajectory(c, t) for c, t in zip(canvases, targets)])
    # −‖c_T − target‖² / max(‖c_0 − target‖², 1), images in [0, 1], summed over pixels.
    first, last = (np.concatenate([c[:, i] for c in canvases]) / 255.0 for i in (0, -1))
    target = np.concatenate(targets) / 255.0
    expected = -((last - target) ** 2).sum(axis=(1, 2, 3)) / np.maximum(((first - target) ** 2).sum(axis=(1, 2, 3)), 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    disc_config = population_config(tmp_path, population_size=2).discriminator
    _, weights = DiscriminatorLearner(disc_config, seed=1).publish()
    critic = make_episode_reward_fn(disc_config, "final")
    got = final_scores(critic, weights, [_trajectory(c) for c in canvases])
    expected = canvas_scores(weights, np.concatenate([c[:, -1] for c in canvases]), config=disc_config)
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_members_have_their_own_seed_folder_and_hyperparameters(tmp_path):
    config = population_config(tmp_path, population_size=12)
    names = member_names(12)
    assert names[:2] == ["member_00", "member_01"] and names == sorted(names)
    members = [member_config(config, k, (1e-4 * (k + 1), 0.01)) for k in range(12)]
    assert len({m.runtime.seed for m in members}) == 12
    run_dir = config.runtime.run_dir
    assert members[3].runtime.run_dir == os.path.join(run_dir, "member_03")
    assert members[3].runtime.logdir == os.path.join(run_dir, "member_03", "tb")
    assert members[3].runtime.checkpoint_dir == os.path.join(run_dir, "member_03", "checkpoints")
    assert members[3].policy.learning_rate == pytest.approx(4e-4)
    assert dataclasses.replace(members[3], runtime=config.runtime, policy=config.policy) == config


def test_member_values_add_up_except_the_worst_and_the_shared_server():
    merged = merge_values([{"dropped_stale": 2, "actor_restarts": 1, "consumer_wait_frac": 0.1,
                            "policy_lag_max": 3.0, "server_restarts": 1},
                           {"dropped_stale": 5, "actor_restarts": 0, "consumer_wait_frac": 0.4,
                            "policy_lag_max": 1.0, "server_restarts": 1}])
    assert merged == {"dropped_stale": 7, "actor_restarts": 1, "consumer_wait_frac": 0.4,
                      "policy_lag_max": 3.0, "server_restarts": 1}


@pytest.mark.parametrize("overrides, message", [
    (dict(population_size=0), "--population_size must be >= 1"),
    (dict(pbt_ready_every_updates=-1), "--pbt_ready_every_updates"),
    (dict(pbt_learning_rate_range=["3e-4", "1e-5"]), "--pbt_learning_rate_range must be two numbers"),
    (dict(pbt_entropy_cost_range=["0", "0.1"]), "--pbt_entropy_cost_range"),
    (dict(pbt_truncation=0.6), "--pbt_truncation must be in"),
    (dict(pbt_perturb_factors=["0.8", "-1"]), "--pbt_perturb_factors must be positive"),
    (dict(pbt_fitness_episodes=0), "--pbt_fitness_episodes"),
    (dict(runtime="fused"), "fused runtime trains one policy"),
])
def test_bad_population_settings_are_rejected(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        population_config(tmp_path, **overrides)


def test_a_population_that_writes_needs_a_run_dir():
    with pytest.raises(ValueError, match="set --run_dir"):
        dataclasses.replace(ExperimentConfig(population=PopulationConfig(size=2)),
                            runtime=dataclasses.replace(ExperimentConfig().runtime, logdir="tb"))


def test_a_population_folder_lists_its_members_not_itself(tmp_path):
    for folder in ("tb", "checkpoints", "member_01/tb", "member_00/checkpoints", "notes"):
        (tmp_path / folder).mkdir(parents=True)
    assert run_report.find_members(str(tmp_path)) == [str(tmp_path / "member_00"), str(tmp_path / "member_01")]


# ------------------------------------------------------------------------------ real populations

def _leaves(tree):
    return jax.tree.leaves(jax.tree.map(np.asarray, tree))


@pytest.fixture(scope="module")
def ray_6cpu():
    """Ray with 6 logical CPUs on this machine (3 actors and 4 learners oversubscribe the cores)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("runtime", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_members_learn_share_the_critic_and_an_exploit_copies_the_whole_state(
        data_dir, tmp_path, runtime, monkeypatch, request):
    """Member k's fitness is k: at the round member_00 copies member_02."""
    if runtime == "ray":
        request.getfixturevalue("ray_6cpu")
    config = population_config(tmp_path, runtime=runtime, ray_num_cpus=6, replay_batches=16)
    messages = []
    pop = PopulationRuntime(config, load_run_data(config), messages.append)
    monkeypatch.setattr(pop, "_member_fitness", lambda k, weights: float(k))
    try:
        steps = 0
        while pop.rounds == 0:
            pop.step(None, want_samples=False)
            steps += 1
        loser, winner = pop.members[0], pop.members[2]
        copied, source = loser.policy_state(), winner.policy_state()
        # Every member learned (2 updates each, finished by the round's flush) ...
        assert [c.updates for c in pop.counters] == [2, 2, 2]
        assert [int(m.policy_state().step) for m in pop.members] == [2, 2, 2]
        # ... the critic's replay holds canvases painted by every member ...
        owner = pop.members[0]
        acted = 3 * steps * config.runtime.batch_size
        replay = _replay_once_it_holds(owner, acted)
        if runtime == "local":   # acting on demand: exactly the batches the learners took
            assert int(replay["added"]) == acted
        stored = {canvas.tobytes() for canvas in replay["canvases"][:int(replay["size"])]}
        for member in pop.members:
            newest = owner.be.get(member.recent_batches[-1])
            finals = np.concatenate([t.observation.canvas[:, -1] for t in newest])
            assert any(canvas.tobytes() in stored for canvas in finals)
        # ... and member_00 now holds member_02's whole state, its hyperparameters perturbed.
        assert [(l, w) for l, w in [(pop.names.index(e["member"]), pop.names.index(e["copied"]))
                                    for e in _lineage(config)]] == [(0, 2)]
        for field in ("params", "opt_state", "step", "rng", "skipped_updates", "value_stats"):
            a, b = _leaves(getattr(copied, field)), _leaves(getattr(source, field))
            assert len(a) == len(b) > 0
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y, err_msg=field)
        ranges = (config.population.learning_rate_range, config.population.entropy_cost_range)
        for got, had, bounds in zip(copied.hyperparams, source.hyperparams, ranges):
            assert float(got) in [_within(float(had) * f, bounds) for f in FACTORS]
        assert pop.hyperparams[0] == (float(copied.hyperparams.learning_rate),
                                      float(copied.hyperparams.entropy_cost))
        assert any("pbt round 0: member_00" in m and "copies member_02" in m for m in messages)
        # The members keep learning after the exploit, the copy from its new weights.
        pop.step(None, want_samples=False)
        pop.flush()
        assert [c.updates for c in pop.counters] == [3, 3, 3]
        assert int(loser.policy_state().step) == int(source.step) + 1
    finally:
        pop.close()


def _replay_once_it_holds(owner, count: int, timeout_s: float = 60.0) -> dict:
    """The shared replay's state once ``count`` canvases were added (on Ray the actors' adds
    are fire-and-forget calls that may still be on their way)."""
    deadline = time.monotonic() + timeout_s
    while True:
        replay = owner.be.get(owner.disc.get_replay_state.remote())
        if int(replay["added"]) >= count or time.monotonic() > deadline:
            assert int(replay["added"]) >= count
            return replay
        time.sleep(0.2)


def _lineage(config):
    with open(os.path.join(config.runtime.run_dir, population.LINEAGE_FILE)) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_a_resumed_population_ends_where_a_straight_one_ends_and_its_folders_feed_the_report(
        data_dir, tmp_path):
    """Straight: 4 updates per member (rounds at 2 and 4). Resumed: 2, then on to 4. The
    checkpoints are equal bit for bit: every member's learner state, the critic, its replay."""
    evaluate = functools.partial(log_checkpoint_metrics, count=8)
    straight = run_loop.train(population_config(tmp_path / "a"), on_checkpoint=evaluate)
    run_loop.train(population_config(tmp_path / "b", max_updates=2), on_checkpoint=evaluate)
    resumed = run_loop.train(population_config(tmp_path / "b", resume=True), on_checkpoint=evaluate)
    assert straight["counters"]["updates"] == resumed["counters"]["updates"] == 12
    assert straight["population"]["rounds"] == resumed["population"]["rounds"] == 2
    assert straight["population"]["hyperparams"] == resumed["population"]["hyperparams"]
    names = member_names(3)
    parts = [f"{name}/policy" for name in names] + ["discriminator", "replay"]
    for part in parts:
        a = jax.tree.leaves(checkpointing.restore_tree(os.path.join(straight["checkpoint"], part)))
        b = jax.tree.leaves(checkpointing.restore_tree(os.path.join(resumed["checkpoint"], part)))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=part)
    config = population_config(tmp_path / "a")
    assert _lineage(config) == _lineage(population_config(tmp_path / "b"))
    assert len(_lineage(config)) == straight["population"]["exploits"] == 2

    # Each member has its own folder: TensorBoard, its checkpoint (hard links into the
    # population's), its evaluation; evaluate.py loads it with the member's hyperparameters.
    run_dir = config.runtime.run_dir
    for k, name in enumerate(names):
        member_checkpoint = os.path.join(run_dir, name, "checkpoints", "ckpt_00000004")
        loaded = load_checkpoint(member_checkpoint)
        assert (loaded.config.policy.learning_rate, loaded.config.policy.entropy_cost) == \
            tuple(straight["population"]["hyperparams"][name].values())
        assert loaded.counters["updates"] == 4 and loaded.config.runtime.seed == population.member_seed(0, k)
        files = checkpointing.verify_checkpoint(member_checkpoint)
        assert files is None
        ours = os.path.join(member_checkpoint, "policy", "_METADATA")
        theirs = os.path.join(straight["checkpoint"], name, "policy", "_METADATA")
        assert os.path.samefile(ours, theirs)
        assert [r["updates"] for r in run_report.read_eval_log(os.path.join(run_dir, name, "checkpoints"))] == [4]
        assert os.listdir(os.path.join(run_dir, name, "tb"))
    with open(os.path.join(run_dir, population.EVAL_FILE)) as f:
        evaluations = [json.loads(line) for line in f]
    assert evaluations[-1]["metric"] == "frechet" and evaluations[-1]["best"] in names
    with pytest.raises(ValueError, match="population's checkpoint"):
        load_checkpoint(straight["checkpoint"])

    # The run report puts the members side by side, their hyperparameters among what differs.
    text = open(run_report.report_run(run_dir), encoding="utf-8").read()
    page = Page(text)
    for section in ("summary", "training-curves", "evaluation", "samples"):
        assert [m for s, m in page.members if s == section] == names, section
    differs = text[text.index('<div class="differs">'):text.index("<details><summary>All")]
    assert "policy.learning_rate" in differs and "runtime.seed" in differs
