"""Population-based training (PBT): N policy learners that share one discriminator.

SPIRAL's released agents come from a population: 10 policy learners, each with its own actors,
rewarded by one shared discriminator, their learning rates and entropy costs evolved by PBT
(Jaderberg et al. 2017; SPIRAL.md §5). ``PopulationRuntime`` is that for the "ray" and "local"
runtimes (``--population_size`` > 1), a ``spiral.actors.runtime.Runtime`` the run loop drives.

Members. Each member is a ``spiral.actors.driver.DistributedRuntime`` with its own policy learner,
actors, trajectory queue and parameter stream (``policy/<k>`` on the shared parameter server),
seed and initial hyperparameters. Member 0's runtime is built as a single run's and also holds
the shared parts: the parameter server and the discriminator learner with its replay; the
others join it, so every member's actors feed that replay with their final canvases and score
with that critic (or their learners do, with ``rewards_on=learner``). One ``step`` is one policy
update of every member, in lockstep, so a PBT round finds every member at the same update
count; the critic trains ``disc_updates_per_policy_update`` times per step of the population
(SPIRAL++'s arrangement: one critic learner beside N policy learners).

PBT, every ``ready_every_updates`` updates of each member (``PopulationConfig``):

* fitness: the mean score of each member's newest episodes (whole batches, at least
  ``fitness_episodes``) by the critic of the moment, comparable across members because the critic
  is shared; with the L2 reward (no critic) it is −(normalised L2) of their final canvases (−1 a
  blank canvas, 0 a perfect copy). Either is the final-step reward of the run's reward function,
  without stroke penalties (TCA runs are ranked by the same final score);
* truncation selection: each of the bottom ``truncation`` of the members (at least one) copies a
  member drawn uniformly from as many at the top;
* exploit: the copy is the whole policy learner state, exactly: weights, Adam's state, the value
  normalisation's statistics, the update counters and the hyperparameters;
* explore: each copied hyperparameter is multiplied by one of ``perturb_factors`` drawn at random,
  then clipped to its range.

PBT evolves the learning rate and the global entropy cost, which scales every per-key entropy
weight; the per-key weights are part of the compiled update and stay as configured. Every exploit
is one line, TensorBoard scalars (``pbt/*`` in both members' logs) and one JSON line in
``<run_dir>/lineage.jsonl``. At each checkpoint every member is evaluated (the launcher's
``on_checkpoint``) and the best named, by the held-out L2 (conditional) or Fréchet distance
(unconditional), else by fitness.

Folders (``spiral.evaluation.run_report`` shows the members side by side)::

    <run_dir>/checkpoints/ckpt_N/     the population's checkpoint (N: updates of all members):
        <member>/policy/              each member's policy learner state
        discriminator/, replay/       the shared critic
        run.json                      config; counters: the population's, each member's, PBT's
    <run_dir>/tb/                     the population: totals, the critic, PBT
    <run_dir>/lineage.jsonl           one line per exploit: who copied whom, the hyperparameters
    <run_dir>/population_eval.jsonl   one line per checkpoint: each member's metric and the best
    <run_dir>/<member>/tb/            the member: its policy's curves, hyperparameters, fitness
    <run_dir>/<member>/checkpoints/   the member alone, for evaluate.py and report.py:
        ckpt_M/policy/                (M: its updates) hard links into the population's checkpoint
        ckpt_M/run.json               the member's config (its hyperparameters of the moment)
        eval_log.jsonl                its evaluation at every checkpoint

A resume restores everything from the population's checkpoint, each member's hyperparameters
included. The local runtime runs the population deterministically: members step in order and
PBT's draws come from (seed, round).

Ray Tune's PBT scheduler is not used: Tune runs each trial as an independent trainable and
exploits by restoring one trial from another's checkpoint, while these members share one live
critic and its replay, fed by all of them, trained between their updates and checkpointed with
them; a Tune trial has no place for a part shared by every trial.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Callable, Optional, Sequence

import numpy as np

from spiral.actors import checkpointing, monitoring
from spiral.actors.driver import DistributedRuntime
from spiral.actors.runtime import RunData, RunError, RuntimeState, StepReport
from spiral.actors.workers import DISCRIMINATOR, POLICY, ParameterCache, PolicyLearnerWorker
from spiral.discriminator import make_episode_reward_fn
from spiral.learner.learning import Hyperparams

LINEAGE_FILE = "lineage.jsonl"
EVAL_FILE = "population_eval.jsonl"
# Streams of PBT's random draws (numpy SeedSequence entropy beside the run's seed).
_INITIAL_DRAWS, _ROUND_DRAWS, _MEMBER_SEEDS = 1, 2, 3


# ------------------------------------------------------------------------------ the rules (pure)

def member_names(size: int) -> list[str]:
    """``member_00``, ``member_01``, ...: zero-padded, so they sort in order."""
    digits = max(2, len(str(size - 1)))
    return [f"member_{k:0{digits}d}" for k in range(size)]


def member_seed(seed: int, member: int) -> int:
    """Member ``member``'s seed (its initial weights, environments, sampling), in [0, 2**31)."""
    return int(np.random.SeedSequence([seed, _MEMBER_SEEDS, member]).generate_state(1)[0] >> 1)


def log_uniform(rng: np.random.Generator, low: float, high: float, size: int) -> np.ndarray:
    """``size`` draws with a uniform logarithm in [log low, log high]."""
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


def initial_hyperparams(population, seed: int) -> list[tuple[float, float]]:
    """Each member's (learning rate, entropy cost), log-uniform in the ``PopulationConfig``'s
    ranges, as float32 values (what the learner state holds)."""
    rng = np.random.default_rng([seed, _INITIAL_DRAWS])
    rates = log_uniform(rng, *population.learning_rate_range, population.size)
    costs = log_uniform(rng, *population.entropy_cost_range, population.size)
    return [(_f32_within(a, population.learning_rate_range),
             _f32_within(b, population.entropy_cost_range)) for a, b in zip(rates, costs)]


def truncation_count(size: int, fraction: float) -> int:
    """Members in the bottom (and in the top) of a round: ``fraction`` of ``size`` rounded, at
    least one, and at most half (the two groups never overlap); 0 for a population of one."""
    return min(max(1, int(math.floor(fraction * size + 0.5))), size // 2)


def truncation_selection(fitness: Sequence[float], fraction: float,
                         rng: np.random.Generator) -> list[tuple[int, int]]:
    """[(loser, winner)]: each member of the bottom ``truncation_count`` (lowest fitness; ties by
    index, a non-finite fitness counts as the lowest) paired with a member drawn uniformly from
    the top as many."""
    size = len(fitness)
    count = truncation_count(size, fraction)
    key = [f if np.isfinite(f) else -math.inf for f in fitness]
    order = sorted(range(size), key=lambda i: (key[i], i))
    top = order[size - count:]
    return [(loser, int(top[rng.integers(len(top))])) for loser in order[:count]]


def perturb(value: float, rng: np.random.Generator, factors: Sequence[float],
            bounds: tuple[float, float]) -> float:
    """``value`` times one of ``factors`` drawn uniformly, clipped to ``bounds`` (float32)."""
    return _f32_within(value * factors[rng.integers(len(factors))], bounds)


def explore(hyperparams: tuple[float, float], rng: np.random.Generator,
            population) -> tuple[float, float]:
    """A copied (learning rate, entropy cost), each perturbed within its range."""
    rate, cost = hyperparams
    return (perturb(rate, rng, population.perturb_factors, population.learning_rate_range),
            perturb(cost, rng, population.perturb_factors, population.entropy_cost_range))


def _f32(value) -> float:
    return float(np.float32(value))


def _f32_within(value: float, bounds: tuple[float, float]) -> float:
    """``value`` clipped to ``bounds`` as the nearest float32 inside them (a bound itself may
    round to a float32 just outside)."""
    low, high = bounds
    value = np.float32(min(max(value, low), high))
    if float(value) > high:   # compared in float64 (numpy would compare in float32)
        value = np.nextafter(value, np.float32(-np.inf))
    if float(value) < low:
        value = np.nextafter(value, np.float32(np.inf))
    return float(value)


def final_scores(score_fn: Callable, weights, trajectories: Sequence) -> np.ndarray:
    """The final-step reward, without stroke penalties, of every episode of ``trajectories``
    (batched ``Trajectory`` records): ``score_fn`` is ``make_episode_reward_fn`` in mode "final"
    (the critic's score of the final canvas) or "l2" (−L2 of the final canvas, normalised by the
    initial canvas's), applied to (initial, final) canvas pairs."""
    first = np.concatenate([t.observation.canvas[:, 0] for t in trajectories])
    last = np.concatenate([t.observation.canvas[:, -1] for t in trajectories])
    targets = None
    if trajectories[0].observation.target is not None:
        targets = np.concatenate([t.observation.target[:, 0] for t in trajectories])
    return np.asarray(score_fn(weights, np.stack([first, last]), targets))[-1]


def member_config(config, member: int, hyperparams: tuple[float, float]):
    """Member ``member``'s ``ExperimentConfig``: its seed, its hyperparameters (initial, or of the
    moment for its own checkpoints), its folders under ``<run_dir>/<member name>``."""
    rt = config.runtime
    folder = os.path.join(rt.run_dir, member_names(config.population.size)[member]) if rt.run_dir else ""
    runtime = dataclasses.replace(
        rt, seed=member_seed(rt.seed, member), run_dir=folder, resume=False, auto_resume=False,
        logdir=os.path.join(folder, "tb") if rt.logdir else "",
        checkpoint_dir=os.path.join(folder, "checkpoints") if rt.checkpoint_dir else "")
    policy = dataclasses.replace(config.policy, learning_rate=hyperparams[0],
                                 entropy_cost=hyperparams[1])
    return dataclasses.replace(config, runtime=runtime, policy=policy)


# Progress values and counters of the members, merged: counts add up, except the shared parameter
# server's restarts, which every member sees (max); waits and lags are the worst member's (max).
_WORST = ("consumer_wait_frac", "producer_wait_frac", "policy_lag_mean", "policy_lag_max",
          "server_restarts")


def merge_values(values: Sequence[dict]) -> dict:
    out = {}
    for entry in values:
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out[key] = value if key not in out else (
                max(out[key], value) if key in _WORST else out[key] + value)
    return out


def merge_reports(reports: Sequence[StepReport]) -> StepReport:
    """One report for the population: everything added up; the mean of the members' newest
    policy metrics; the critic's newest metrics; every member's sample canvases."""
    out = StepReport()
    for report in reports:
        out.applied += report.applied
        out.disc_updates += report.disc_updates
        out.agent_steps += report.agent_steps
        out.episodes += report.episodes
        out.acted_steps += report.acted_steps
        out.returns += report.returns
        out.disc_metrics = report.disc_metrics or out.disc_metrics
    metrics = [r.policy_metrics for r in reports if r.policy_metrics]
    if metrics:
        out.policy_metrics = {k: float(np.mean([m[k] for m in metrics if k in m]))
                              for k in metrics[0]}
    samples = [r.samples for r in reports if r.samples is not None]
    out.samples = np.concatenate(samples) if samples else None
    out.values = merge_values([r.values for r in reports])
    return out


@dataclasses.dataclass
class MemberCounters:
    """One member's share of the run loop's counters (checkpointed with the population)."""
    updates: int = 0
    refused_updates: int = 0
    agent_steps: int = 0
    episodes: int = 0


# ------------------------------------------------------------------------------ the runtime

class PopulationRuntime:
    """``size`` policy learners, each with its own actors, sharing one critic; PBT between them."""

    def __init__(self, config, data: RunData, say: Callable[[str], None],
                 policy_learner_worker: type = PolicyLearnerWorker):
        self.config, self.say = config, say
        pop, rt = config.population, config.runtime
        self.names = member_names(pop.size)
        self.hyperparams = initial_hyperparams(pop, rt.seed)
        self.member_configs = [member_config(config, k, hp) for k, hp in enumerate(self.hyperparams)]
        batches = max(1, math.ceil(pop.fitness_episodes / rt.batch_size))
        self.members: list[DistributedRuntime] = []
        try:
            for k, member in enumerate(self.member_configs):
                self.members.append(DistributedRuntime(
                    member, data, say, policy_learner_worker,
                    join=self.members[0] if k else None, policy_stream=f"{POLICY}/{k}",
                    recent_batches=batches))
        except BaseException:
            self.close()
            raise
        owner = self.members[0]
        self.be = owner.be
        self._critic = ParameterCache(self.be, owner.param_server) if config.uses_discriminator else None
        self._score = make_episode_reward_fn(config.discriminator,
                                             "l2" if config.reward == "l2" else "final",
                                             normalise_l2=config.normalise_l2)
        self.monitors = [monitoring.Monitor(m.runtime.logdir or None, rt.log_every_seconds,
                                            say_fn=say) for m in self.member_configs]
        self.counters = [MemberCounters() for _ in self.names]
        self._returns = [collections.deque(maxlen=200) for _ in self.names]
        self._policy_metrics: list[dict] = [{} for _ in self.names]
        self._disc_metrics: dict = {}
        self.rounds = 0
        self.exploits = 0
        self.fitness: list[float] = [math.nan] * pop.size
        self._saved_params: dict = {}
        self._lineage = os.path.join(rt.run_dir, LINEAGE_FILE) if rt.run_dir else None
        say(f"population of {pop.size}: " + "; ".join(
            f"{name} lr {lr:.3g} entropy {ec:.3g}" for name, (lr, ec) in zip(self.names, self.hyperparams)))

    # ------------------------------------------------------------------ bookkeeping
    def _account(self, k: int, report: StepReport) -> None:
        """Member ``k``'s share of a report: its counters, and its TensorBoard."""
        c = self.counters[k]
        c.updates += report.updates
        c.refused_updates += report.applied.count(False)
        c.agent_steps += report.agent_steps
        c.episodes += report.episodes
        self._returns[k].extend(r for r in report.returns if np.isfinite(r))
        if report.policy_metrics:
            self._policy_metrics[k] = report.policy_metrics
        if report.disc_metrics:
            self._disc_metrics = report.disc_metrics
        monitor = self.monitors[k]
        if report.updates:
            monitor.scalars(c.updates, self._member_values(k))
        if report.samples is not None:
            monitor.images(c.updates, "samples/final_canvas", report.samples)

    def _member_values(self, k: int) -> dict:
        c, policy = self.counters[k], self._policy_metrics[k]
        values = {"updates": c.updates, "agent_steps": c.agent_steps,
                  "refused_updates": c.refused_updates,
                  "mean_episode_return": (float(np.mean(self._returns[k])) if self._returns[k]
                                          else policy.get("mean_reward_per_unroll", math.nan))}
        values.update(monitoring.learner_values(policy, self._disc_metrics,
                                                ("learning_rate", "entropy_cost",
                                                 "learner_update_seconds", "policy_lag_mean",
                                                 "policy_lag_max")))
        return values

    def _collect(self, reports: list[StepReport]) -> StepReport:
        for k, report in enumerate(reports):
            self._account(k, report)
        return merge_reports(reports)

    # ------------------------------------------------------------------ PBT
    def _round_due(self) -> bool:
        """A round once every member has started the round's number of updates: the round's
        flush finishes them, so it sees every member after exactly that many, however many
        were in flight (a resumed run plays the same rounds)."""
        every = self.config.population.ready_every_updates
        return bool(every) and min(m.updates_started for m in self.members) >= (self.rounds + 1) * every

    def _member_fitness(self, k: int, weights) -> float:
        batches = list(self.members[k].recent_batches)
        if not batches:
            return math.nan
        trajectories = self.be.get([ref for refs in batches for ref in refs])
        return float(np.mean(final_scores(self._score, weights, trajectories)))

    def _pbt_round(self) -> StepReport:
        """Finish every update in flight, rank the members, let the bottom copy the top."""
        pop = self.config.population
        report = self._collect([member.flush() for member in self.members])
        weights = None if self._critic is None else self._critic.get(DISCRIMINATOR)[1]
        self.fitness = [self._member_fitness(k, weights) for k in range(pop.size)]
        rng = np.random.default_rng([self.config.runtime.seed, _ROUND_DRAWS, self.rounds])
        pairs = truncation_selection(self.fitness, pop.truncation, rng)
        states = {winner: self.members[winner].policy_state() for _, winner in pairs}
        for loser, winner in pairs:
            new = explore(self.hyperparams[winner], rng, pop)
            state = states[winner]
            self.members[loser].set_policy_state(state._replace(hyperparams=Hyperparams(
                np.float32(new[0]), np.float32(new[1]))))
            self._record_exploit(loser, winner, new)
            self.hyperparams[loser] = new
        for k, monitor in enumerate(self.monitors):
            monitor.scalars(self.counters[k].updates, {
                "pbt/fitness": self.fitness[k], "pbt/learning_rate": self.hyperparams[k][0],
                "pbt/entropy_cost": self.hyperparams[k][1]})
        self.rounds += 1
        finite = [f for f in self.fitness if np.isfinite(f)]
        report.values.update({"pbt_rounds": self.rounds, "pbt_exploits": self.exploits,
                              "pbt_best_fitness": max(finite) if finite else math.nan,
                              "pbt_worst_fitness": min(finite) if finite else math.nan})
        return report

    def _record_exploit(self, loser: int, winner: int, new: tuple[float, float]) -> None:
        self.exploits += 1
        names, fitness = self.names, self.fitness
        event = {"round": self.rounds, "updates": self.counters[loser].updates,
                 "member": names[loser], "copied": names[winner],
                 "fitness": {names[loser]: fitness[loser], names[winner]: fitness[winner]},
                 "before": _hyperparams_dict(self.hyperparams[loser]),
                 "copied_hyperparams": _hyperparams_dict(self.hyperparams[winner]),
                 "after": _hyperparams_dict(new)}
        self.say(f"pbt round {self.rounds}: {names[loser]} (fitness {fitness[loser]:.4g}) copies "
                 f"{names[winner]} ({fitness[winner]:.4g}); learning rate "
                 f"{self.hyperparams[winner][0]:.3g} -> {new[0]:.3g}, entropy cost "
                 f"{self.hyperparams[winner][1]:.3g} -> {new[1]:.3g}")
        self.monitors[loser].scalars(self.counters[loser].updates,
                                     {"pbt/exploited": 1.0, "pbt/copied_member": float(winner)})
        self.monitors[winner].scalars(self.counters[winner].updates, {"pbt/copied_by": float(loser)})
        if self._lineage:
            with open(self._lineage, "a") as f:
                f.write(json.dumps(event, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ the seam
    def step(self, updates_left: Optional[int], want_samples: bool) -> StepReport:
        """One policy update of every member (``updates_left`` counts the population's)."""
        each = None if updates_left is None else -(-updates_left // len(self.members))
        report = self._collect([member.step(each, want_samples) for member in self.members])
        if self._round_due():
            round_report = self._pbt_round()
            merged = merge_reports([report, round_report])
            merged.values = round_report.values   # the newer snapshot of the same values
            report = merged
        return report

    def flush(self, final: bool = False) -> StepReport:
        return self._collect([member.flush(final) for member in self.members])

    def state(self) -> RuntimeState:
        trees, members = {}, []
        for k, (name, member) in enumerate(zip(self.names, self.members)):
            state = member.state()
            trees[f"{name}/policy"] = state.trees.pop("policy")
            trees.update(state.trees)   # member 0's: the shared critic and its replay
            members.append(dataclasses.asdict(self.counters[k]) | state.counters)
            self._saved_params[name] = trees[f"{name}/policy"].params
        return RuntimeState(trees, {"population": {"members": members, "rounds": self.rounds,
                                                   "exploits": self.exploits}})

    def restore(self, path: str, counters: dict) -> None:
        saved = counters.get("population", {})
        members = saved.get("members", [])
        if len(members) != len(self.members):
            raise RunError(f"cannot resume: {path} holds {len(members)} population members, this "
                           f"run has {len(self.members)}.")
        for k, (name, member) in enumerate(zip(self.names, self.members)):
            member.restore(path, members[k], policy_tree=f"{name}/policy", config_hyperparams=False)
            self.counters[k] = MemberCounters(**{f.name: int(members[k].get(f.name, 0))
                                                 for f in dataclasses.fields(MemberCounters)})
            hyper = member.policy_state().hyperparams
            self.hyperparams[k] = (_f32(hyper.learning_rate), _f32(hyper.entropy_cost))
        self.rounds = int(saved.get("rounds", 0))
        self.exploits = int(saved.get("exploits", 0))
        self._truncate_lineage()

    def _truncate_lineage(self) -> None:
        """Drop the lineage of rounds after the checkpoint (they are played again)."""
        if not self._lineage or not os.path.isfile(self._lineage):
            return
        with open(self._lineage) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["round"] < self.rounds]
        with open(self._lineage, "w") as f:
            f.writelines(kept)

    def after_checkpoint(self, path: str, counters: dict, on_checkpoint: Optional[Callable]) -> None:
        """Each member's own checkpoint (hard links into ``path``, with its config of the
        moment), its evaluation (``on_checkpoint``) into its folder, and the best one named."""
        metrics = {}
        for k, name in enumerate(self.names):
            config = member_config(self.config, k, self.hyperparams[k])
            member_counters = dict(dataclasses.asdict(self.counters[k]), population_member=name,
                                   elapsed_s=float(counters.get("elapsed_s", 0.0)))
            if config.runtime.checkpoint_dir:
                try:
                    checkpointing.save_checkpoint(
                        config.runtime.checkpoint_dir, self.counters[k].updates, config.to_dict(),
                        member_counters, {}, linked={"policy": os.path.join(path, name, "policy")})
                except OSError as e:
                    self.say(f"{name}'s own checkpoint could not be written ({e}); the population's "
                             f"checkpoint {path} holds it.")
            if on_checkpoint is not None:
                record = on_checkpoint(config, self._saved_params[name], member_counters,
                                       self.monitors[k])
                if isinstance(record, dict) and "metrics" in record:
                    metrics[name] = record["metrics"]
        self._name_best(metrics, counters)

    def _name_best(self, metrics: dict, counters: dict) -> None:
        """Say which member is best by the evaluation's main metric (lower is better), else by
        fitness; one line of ``population_eval.jsonl``."""
        metric = "l2" if self.config.env.conditional else "frechet"
        scores = {name: m[metric] for name, m in metrics.items() if metric in m}
        if scores:
            best = min(scores, key=scores.get)
        elif any(np.isfinite(self.fitness)):
            metric, scores = "fitness", dict(zip(self.names, self.fitness))
            best = max((n for n in scores if np.isfinite(scores[n])), key=scores.get)
        else:
            return
        self.say(f"evaluation: best member {best} ({metric} {scores[best]:.4g}); " + ", ".join(
            f"{name} {value:.4g}" for name, value in scores.items()))
        if self.config.runtime.run_dir:
            record = {"updates": int(counters.get("updates", 0)), "metric": metric, "best": best,
                      "members": scores, "hyperparams": {
                          n: _hyperparams_dict(hp) for n, hp in zip(self.names, self.hyperparams)}}
            with open(os.path.join(self.config.runtime.run_dir, EVAL_FILE), "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def summary(self) -> dict:
        summaries = [member.summary() for member in self.members]
        counters = merge_values([s.pop("counters", {}) for s in summaries])
        return {"counters": counters, "members": dict(zip(self.names, summaries)),
                "population": {"rounds": self.rounds, "exploits": self.exploits,
                               "fitness": dict(zip(self.names, self.fitness)),
                               "hyperparams": {n: _hyperparams_dict(hp)
                                               for n, hp in zip(self.names, self.hyperparams)},
                               "counters": {n: dataclasses.asdict(c)
                                            for n, c in zip(self.names, self.counters)}}}

    def close(self) -> None:
        """Every member's workers; member 0's last (it holds the shared parts)."""
        for member in reversed(self.members):
            member.close()
        for monitor in getattr(self, "monitors", []):
            monitor.close()


def _hyperparams_dict(hyperparams: tuple[float, float]) -> dict:
    return {"learning_rate": hyperparams[0], "entropy_cost": hyperparams[1]}
