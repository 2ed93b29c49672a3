"""Runs that survive: killed workers, Ctrl-C, damaged checkpoints, disks that refuse, bad numbers.

Real processes throughout: Ray workers killed with SIGKILL, the launch script interrupted with
SIGINT as a terminal does, a disk that refuses writes (RLIMIT_FSIZE), a checkpoint file altered
on disk. Tiny networks and 4-stroke episodes keep each run to seconds of compute.
"""

import gc
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from spiral.actors import checkpointing, run_loop
from spiral.actors.driver import DistributedRuntime, check_ray_address
from spiral.actors.runtime import RunError
from spiral.actors.workers import PolicyLearnerWorker
from spiral.launch import flags as launch_flags
from spiral.learner import Hyperparams
from test_runtime_e2e import descendants, ray_2cpu, tiny_config, tiny_values, worker_pids  # noqa: F401 (a fixture)


class Lines(list):
    """A ``say_fn`` that keeps the run's one-line messages (and prints them)."""

    def __call__(self, message):
        print(message, flush=True)
        self.append(message)

    def wait_for(self, text, timeout_s=240.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self):
                return True
            time.sleep(0.2)
        return False


def _tree_leaves(path):
    return jax.tree.leaves(checkpointing.restore_tree(path))


# ---------------------------------------------------------------------------- killed workers

def slow_learner_class(seconds: float) -> type:
    """A PolicyLearnerWorker that takes ``seconds`` more per update, so a run outlasts the faults
    a test injects. Defined in a function: Ray then ships the class by value to its workers,
    which cannot import this test module."""

    class SlowPolicyLearner(PolicyLearnerWorker):
        def update(self, *trajectories):
            time.sleep(seconds)
            return super().update(*trajectories)

    return SlowPolicyLearner


@pytest.mark.slow
def test_killed_learners_and_parameter_server_come_back_and_the_run_finishes(
        data_dir, tmp_path, ray_2cpu):
    """SIGKILL the parameter server, then both learners at once, mid-run: Ray restarts them, the
    learners continue from their newest states, and the run reaches --max_updates, saying in
    one line each what happened."""
    lines = Lines()
    killed = []

    def kill(title):
        pids = worker_pids(title)
        assert pids, f"no {title} process"
        os.kill(pids[0], signal.SIGKILL)
        killed.append(title)

    def injector():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not worker_pids("ray::ActorWorker"):
            time.sleep(0.5)
        time.sleep(4.0)   # a few updates first
        kill("ray::ParameterServer")
        lines.wait_for("parameter server restarted")
        kill("ray::SlowPolicyLearner")   # Ray titles a worker process by its class
        kill("ray::DiscriminatorWorker")

    thread = threading.Thread(target=injector, daemon=True)
    thread.start()
    config = tiny_config(tmp_path, runtime="ray", max_updates=90, num_actors=1)
    result = run_loop.train(config, say_fn=lines, make_runtime=lambda c, d, s: DistributedRuntime(
        c, d, s, policy_learner_worker=slow_learner_class(0.25)))
    thread.join(timeout=5)
    assert killed == ["ray::ParameterServer", "ray::SlowPolicyLearner", "ray::DiscriminatorWorker"]
    counters = result["counters"]
    assert counters["updates"] == 90 and counters["refused_updates"] == 0
    assert (counters["server_restarts"], counters["learner_restarts"], counters["disc_restarts"]) == (1, 1, 1)
    assert sum("policy learner restarted" in line for line in lines) == 1
    assert sum("discriminator learner restarted" in line for line in lines) == 1
    # The restored learners went on from their states, not from fresh ones: the policy's version
    # is the number of updates, and the critic trained on after its restart.
    policy = checkpointing.restore_tree(os.path.join(result["checkpoint"], "policy"))
    assert int(policy["step"]) == 90
    assert np.isfinite(result["disc_metrics"]["loss"])
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(policy["params"]))


def test_a_slow_learner_backs_the_actors_up_without_unbounded_memory(data_dir, tmp_path, ray_2cpu):
    """Back-pressure: with a learner much slower than the actors, actors wait for room in the
    bounded queue, every unroll made is learned, dropped as stale or still outstanding (at most
    the queue's capacity), and the references the driver holds stay bounded."""
    from ray._private import worker as ray_worker  # pylint: disable=import-outside-toplevel

    peak = {"refs": 0}
    stop = threading.Event()
    gc.collect()
    baseline = len(ray_worker.global_worker.core_worker.get_all_reference_counts())

    def sample_refs():
        core = ray_worker.global_worker.core_worker
        while not stop.wait(0.2):
            peak["refs"] = max(peak["refs"], len(core.get_all_reference_counts()) - baseline)

    thread = threading.Thread(target=sample_refs, daemon=True)
    thread.start()
    # Final-step rewards: one critic call per episode keeps an unroll well under the learner's
    # 1 s on a loaded machine (per-step rewards score every step).
    config = tiny_config(tmp_path, runtime="ray", max_updates=8, num_actors=1, max_policy_lag=3,
                         temporal_credit_assignment=False)
    try:
        result = run_loop.train(config, make_runtime=lambda c, d, s: DistributedRuntime(
            c, d, s, policy_learner_worker=slow_learner_class(1.0)))
    finally:
        stop.set()
        thread.join()
    queue, capacity = result["queue"], config.runtime.capacity
    assert result["counters"]["updates"] == 8
    assert queue["unrolls_consumed"] == 8 * config.runtime.unrolls_per_batch
    outstanding = queue["unrolls_received"] - queue["unrolls_consumed"] - queue["unrolls_dropped_stale"]
    assert 0 <= outstanding <= capacity, queue
    assert max(queue["lags"]) <= 3
    # Actors spent most of their time waiting for room (a 1 s update vs a sub-second unroll).
    assert result["progress"]["producer_wait_frac"] > 0.3, result["progress"]
    # Bounded: the queue's unrolls (two objects each), the batches in flight, the learners'
    # newest states and the run's constant handful, however long the run.
    assert peak["refs"] <= 4 * capacity + 30, (peak, baseline)


# ---------------------------------------------------------------------------- signals

_TINY_FLAGS = ["--network=tiny", "--disc_network=tiny", "--episode_length=5", "--batch_size=8",
               "--envs_per_actor=4", "--disc_batch_size=8", "--replay_batches=4",
               "--dataset_limit=512", "--log_every_seconds=0.5", "--num_actors=1"]


def _launch(args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "launch" / "run_mnist.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, **kwargs)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_checkpoints_stops_every_process_and_resume_continues(data_dir, tmp_path):
    """SIGINT to the launch script's process group (what Ctrl-C does) on Ray: one line, a
    checkpoint at the update reached, exit status 130, no process left; --resume (here on the
    local runtime) continues from that checkpoint."""
    run_dir = tmp_path / "run"
    proc = _launch(["--runtime=ray", "--ray_num_cpus=2", "--max_updates=100000",
                    f"--run_dir={run_dir}", *_TINY_FLAGS])
    output, ray_pids = [], set()
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        output.append(line)
        ray_pids |= descendants(proc.pid)
        if "| upd " in line and int(line.split("| upd ")[1].split()[0].replace(",", "")) >= 3:
            break
        assert time.monotonic() < deadline, "".join(output)
    os.killpg(proc.pid, signal.SIGINT)
    output += proc.stdout.readlines()
    proc.wait(timeout=120)
    text = "".join(output)
    assert proc.returncode == 130, text
    assert "Traceback" not in text, text
    stopped = [line for line in output if line.startswith("SIGINT: stopped at")]
    assert len(stopped) == 1, text
    updates = int(stopped[0].split("stopped at ")[1].split()[0])
    checkpoint = checkpointing.latest_checkpoint(str(run_dir / "checkpoints"))
    assert checkpoint.endswith(f"ckpt_{updates:08d}") and updates >= 3, text
    assert checkpointing.verify_checkpoint(checkpoint) is None
    time.sleep(2.0)
    assert ray_pids and not [p for p in ray_pids if _alive(p)], "processes left behind"

    resumed = _launch(["--runtime=local", "--resume", f"--max_updates={updates + 2}",
                       f"--run_dir={run_dir}", *_TINY_FLAGS])
    text = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, text
    assert f"Resumed from {checkpoint} at {updates} policy updates." in text, text
    assert f"done: {updates + 2} policy updates" in text, text


@pytest.mark.slow
def test_sigterm_on_ray_checkpoints_and_exits_with_its_status(data_dir, tmp_path):
    """SIGTERM (what a scheduler sends; ``ray.init`` installs a handler of its own for it): the
    same graceful stop, status 128 + 15."""
    run_dir = tmp_path / "run"
    proc = _launch(["--runtime=ray", "--ray_num_cpus=2", "--max_updates=100000",
                    f"--run_dir={run_dir}", *_TINY_FLAGS])
    output = []
    for line in proc.stdout:
        output.append(line)
        if "| upd " in line and int(line.split("| upd ")[1].split()[0].replace(",", "")) >= 2:
            break
    os.kill(proc.pid, signal.SIGTERM)
    output += proc.stdout.readlines()
    proc.wait(timeout=120)
    text = "".join(output)
    assert proc.returncode == 128 + signal.SIGTERM, text
    stopped = [line for line in output if line.startswith("SIGTERM: stopped at")]
    assert len(stopped) == 1 and "Traceback" not in text, text
    updates = int(stopped[0].split("stopped at ")[1].split()[0])
    assert checkpointing.latest_checkpoint(str(run_dir / "checkpoints")).endswith(f"ckpt_{updates:08d}")


# ---------------------------------------------------------------------------- exact resume

@pytest.mark.slow
def test_local_run_resumed_at_k_equals_the_straight_run(data_dir, tmp_path):
    """The local runtime stopped at 3 updates and resumed to 6 ends bit for bit where a straight
    6-update run ends: learners, replay, and (through the saved unroll positions and the
    discriminator's credit of a fractional rate) the same episodes."""
    values = dict(num_actors=2, disc_updates_per_policy_update=0.5, log_every_seconds=100.0)
    straight = run_loop.train(tiny_config(tmp_path / "a", max_updates=6, **values))
    run_loop.train(tiny_config(tmp_path / "b", max_updates=3, **values))
    resumed = run_loop.train(tiny_config(tmp_path / "b", max_updates=6, resume=True, **values))
    assert straight["counters"] == {**resumed["counters"], "elapsed_s": straight["counters"]["elapsed_s"]}
    for part in ("policy", "discriminator", "replay"):
        a = _tree_leaves(os.path.join(straight["checkpoint"], part))
        b = _tree_leaves(os.path.join(resumed["checkpoint"], part))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=part)
    # Each actor's unrolls continued their index sequence across the resume.
    assert resumed["unroll_indices_by_actor"] == {0: [3, 4, 5], 1: [3, 4, 5]}


# ---------------------------------------------------------------------------- checkpoints

def _small_checkpoint(folder, step, value):
    tree = {"params": {"w": np.random.default_rng(step).normal(value, 1.0, (300, 40)).astype(np.float32)}}
    return checkpointing.save_checkpoint(str(folder), step, {"x": 1}, {"updates": step}, {"policy": tree})


def test_verify_names_the_damaged_file(tmp_path):
    intact = _small_checkpoint(tmp_path, 1, 1.0)
    assert checkpointing.verify_checkpoint(intact) is None
    damaged = _small_checkpoint(tmp_path, 2, 2.0)
    data_files = [p for p in pathlib.Path(damaged, "policy").rglob("*") if p.is_file()
                  and p.stat().st_size > 1000]
    with open(data_files[0], "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert str(data_files[0]) in checkpointing.verify_checkpoint(damaged)
    truncated = _small_checkpoint(tmp_path, 3, 3.0)
    run_file = pathlib.Path(truncated, checkpointing.RUN_FILE)
    run_file.write_text(run_file.read_text()[:40])
    assert str(run_file) in checkpointing.verify_checkpoint(truncated)
    with pytest.raises(checkpointing.CheckpointError, match=str(run_file)):
        checkpointing.read_run_info(truncated)
    run_file.write_text("{}")
    assert "lacks its 'config' and 'counters'" in checkpointing.verify_checkpoint(truncated)
    # A save over an existing step keeps the old one until the new one is in place.
    assert checkpointing.list_checkpoints(str(tmp_path)) == [intact, damaged, truncated]


def test_a_damaged_newest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(
        data_dir, tmp_path):
    run_loop.train(tiny_config(tmp_path, max_updates=3, checkpoint_every_minutes=1e-9))
    ckpt_dir = tmp_path / "run" / "checkpoints"
    newest = ckpt_dir / "ckpt_00000003"
    victim = max((p for p in (newest / "policy").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    lines = Lines()
    result = run_loop.train(tiny_config(tmp_path, max_updates=4, resume=True), say_fn=lines)
    text = "\n".join(lines)
    assert f"checkpoint ckpt_00000003 is damaged: {victim}" in text, text
    assert f"falling back to {ckpt_dir / 'ckpt_00000002'}" in text, text
    assert f"Resumed from {ckpt_dir / 'ckpt_00000002'} at 2 policy updates." in text, text
    assert result["counters"]["updates"] == 4 and result["counters"]["episodes"] == 4 * 8


def test_resume_needs_a_checkpoint_and_auto_resume_starts_afresh(data_dir, tmp_path):
    with pytest.raises(RunError, match=f"--resume: no checkpoint in {tmp_path / 'run' / 'checkpoints'}"):
        run_loop.train(tiny_config(tmp_path, resume=True))
    assert not (tmp_path / "run").exists()   # nothing was made before the error
    lines = Lines()
    result = run_loop.train(tiny_config(tmp_path, auto_resume=True, max_updates=1), say_fn=lines)
    assert "auto_resume: no checkpoint" in lines[0] and result["counters"]["updates"] == 1
    result = run_loop.train(tiny_config(tmp_path, auto_resume=True, max_updates=2), say_fn=lines)
    assert any("Resumed from" in line for line in lines) and result["counters"]["updates"] == 2
    with pytest.raises(ValueError, match="contradict"):
        tiny_config(tmp_path, resume=True, auto_resume=True)


def test_changed_hyperparameters_are_applied_and_said_on_resume(data_dir, tmp_path):
    """The policy learner keeps its learning rate and entropy cost in its state; a resume with
    other values puts this run's in force and says so (task-defining changes are refused)."""
    run_loop.train(tiny_config(tmp_path, max_updates=1))
    lines = Lines()
    result = run_loop.train(tiny_config(tmp_path, max_updates=2, resume=True, learning_rate=3e-4,
                                        entropy_cost=0.05), say_fn=lines)
    changed = [line for line in lines if line.startswith("resume: settings changed")]
    assert len(changed) == 1 and "policy.learning_rate 0.0001 -> 0.0003" in changed[0], lines
    assert "policy.entropy_cost 0.01 -> 0.05" in changed[0] and "max_updates 1 -> 2" in changed[0]
    state = checkpointing.restore_tree(os.path.join(result["checkpoint"], "policy"))
    np.testing.assert_allclose(float(state["hyperparams"]["learning_rate"]), 3e-4, rtol=1e-6)
    np.testing.assert_allclose(float(state["hyperparams"]["entropy_cost"]), 0.05, rtol=1e-6)
    with pytest.raises(RunError, match="episode_length"):
        run_loop.train(tiny_config(tmp_path, max_updates=3, resume=True, episode_length=6))


_REFUSING_DISK = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {tests!r})
    from test_runtime_e2e import tiny_config
    from spiral.actors import checkpointing, run_loop
    import pathlib
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a refused write is an error, not a kill
    unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)

    def say(message):
        print(message, flush=True)
        if message.startswith("checkpoint: ") and message.endswith("ckpt_00000001"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (2048, unlimited[1]))  # the disk refuses
        if "failed" in message:
            resource.setrlimit(resource.RLIMIT_FSIZE, unlimited)             # and recovers
            folder = pathlib.Path(config.runtime.checkpoint_dir)
            print("AFTER THE FAILURE", checkpointing.verify_checkpoint(str(folder / "ckpt_00000001")),
                  sorted(p.name for p in folder.iterdir() if p.name.startswith("ckpt")), flush=True)

    config = tiny_config(pathlib.Path({tmp!r}), max_updates=6, checkpoint_every_minutes=1e-9,
                         log_every_seconds=1e-9)
    result = run_loop.train(config, say_fn=say)
    print("RESULT", result["counters"]["updates"], result["checkpoint"])
""")


def test_a_disk_that_refuses_writes_costs_a_warning_not_the_run(data_dir, tmp_path):
    """Checkpoint every update; after the first, the disk refuses writes (RLIMIT_FSIZE, in a
    subprocess): the save fails with one line, TensorBoard is dropped with one line, the run goes
    on, the first checkpoint stays intact, and the next save after the disk recovers works."""
    script = _REFUSING_DISK.format(tests=str(pathlib.Path(__file__).parent), tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "RESULT 6 " in out and out.rstrip().endswith("ckpt_00000006"), out[-2000:]
    failed = [line for line in out.splitlines() if line.startswith("checkpoint at update 2 failed")]
    assert len(failed) == 1 and "next attempt" in failed[0], out[-3000:]
    # Intact, and nothing half-written beside it.
    assert "AFTER THE FAILURE None ['ckpt_00000001']" in out, out[-3000:]
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert checkpointing.verify_checkpoint(str(ckpt_dir / "ckpt_00000006")) is None
    tensorboard = [line for line in out.splitlines() if line.startswith("TensorBoard logs in")]
    assert len(tensorboard) == 1 and "training goes on without them" in tensorboard[0], out[-3000:]


# ---------------------------------------------------------------------------- bad numbers

def _float_flags():
    return sorted(k for k, v in launch_flags.default_values("mnist", run_dir="x").items()
                  if isinstance(v, float))


@pytest.mark.parametrize("name", _float_flags())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_every_float_flag_rejects_nan_and_infinity(tmp_path, name, bad):
    with pytest.raises(ValueError, match=f"--{name} must be a finite number"):
        launch_flags.config_from_values(tiny_values(tmp_path, **{name: bad}))


def test_a_config_built_without_flags_rejects_non_finite_numbers():
    import dataclasses  # pylint: disable=import-outside-toplevel
    from spiral.actors.config import ExperimentConfig  # pylint: disable=import-outside-toplevel
    config = ExperimentConfig()
    with pytest.raises(ValueError, match=r"runtime.max_minutes must be a finite number"):
        dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, max_minutes=float("nan")))
    with pytest.raises(ValueError, match=r"new_stroke_penalty must be a finite number"):
        dataclasses.replace(config, new_stroke_penalty=float("-inf"))


class NaNLearningRate(PolicyLearnerWorker):
    """A learner whose learning rate became NaN (as --learning_rate=nan did before the flag check)."""

    def __init__(self, *args):
        super().__init__(*args)
        state = self.learner.state
        self.learner.set_state(state._replace(hyperparams=Hyperparams(
            np.float32(np.nan), state.hyperparams.entropy_cost)))


def test_updates_refused_again_and_again_stop_the_run_with_an_error(data_dir, tmp_path):
    """Every update of a NaN learning rate makes non-finite parameters; the guard refuses them,
    and after MAX_REFUSED_IN_A_ROW the run stops with an error instead of saying "done"."""
    config = tiny_config(tmp_path, max_updates=40)
    with pytest.raises(RunError, match=f"the last {run_loop.MAX_REFUSED_IN_A_ROW} policy updates "
                                       f"were refused"):
        run_loop.train(config, make_runtime=lambda c, d, s: DistributedRuntime(
            c, d, s, policy_learner_worker=NaNLearningRate))
    assert checkpointing.list_checkpoints(config.runtime.checkpoint_dir) == []


# ---------------------------------------------------------------------------- the launcher

def test_an_unreachable_ray_address_fails_fast_in_one_line(tmp_path):
    start = time.monotonic()
    with pytest.raises(RunError, match="no Ray cluster answers at --ray_address=127.0.0.1:1"):
        check_ray_address("127.0.0.1:1")
    with pytest.raises(RunError, match="not host:port"):
        check_ray_address("nowhere")
    proc = _launch(["--runtime=ray", "--ray_address=127.0.0.1:1", f"--run_dir={tmp_path / 'run'}",
                    *_TINY_FLAGS])
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and time.monotonic() - start < 60, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "127.0.0.1:1" in errors[0] and "Traceback" not in text, text


def test_the_launch_script_reports_bad_flags_and_failed_runs_in_one_line(tmp_path):
    proc = _launch(["--learning_rate=nan", f"--run_dir={tmp_path / 'a'}"])
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and text.strip().splitlines()[-1] == (
        "error: --learning_rate must be a finite number, got nan."), text
    # A dataset that is not there (and cannot be downloaded): one line, and no folder made.
    env_url = {"SPIRAL_MNIST_URL": "http://127.0.0.1:9/"}
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "run_mnist.py"), "--runtime=local",
                           f"--data_dir={tmp_path / 'nodata'}", f"--run_dir={tmp_path / 'b'}",
                           *_TINY_FLAGS], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **env_url))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stdout + proc.stderr
    assert "mnist data could not be loaded" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "nodata").exists()


def test_an_unexpected_error_is_one_line_with_the_traceback_in_the_run_folder(
        tmp_path, monkeypatch, capsys):
    config = tiny_config(tmp_path)

    def broken(*args, **kwargs):
        def deep():
            raise KeyError("a bug deep inside training")
        deep()

    monkeypatch.setattr(run_loop, "train", broken)
    assert launch_flags.train_and_report(config) == 1
    err = capsys.readouterr().err.strip().splitlines()
    log = tmp_path / "run" / "error.log"
    assert err == [f"error: KeyError: 'a bug deep inside training' (traceback in {log})"]
    assert "in deep" in log.read_text() and "Traceback" in log.read_text()
