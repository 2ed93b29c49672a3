"""The launch scripts and their flags: help, presets, and clear errors before anything starts."""

import subprocess
import sys

import pytest

from conftest import REPO
from spiral.actors import run_loop
from spiral.actors.runtime import RunError
from spiral.launch import flags as launch_flags
from spiral.actors.config import ExperimentConfig


def config(tmp_path, **overrides):
    values = dict(network="tiny", disc_network="tiny", runtime="local", num_actors=1,
                  envs_per_actor=4, batch_size=8, max_updates=1, run_dir=str(tmp_path / "run"),
                  dataset_limit=64)
    values.update(overrides)
    return launch_flags.config_from_values(launch_flags.default_values("mnist", **values))


@pytest.mark.parametrize("script", ["run_mnist.py", "run_omniglot.py", "run_celeba.py"])
def test_help_documents_the_flags(script):
    out = subprocess.run([sys.executable, str(REPO / "launch" / script), "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), out.stderr[-2000:]  # absl exits 1 after --help
    for flag in ("--num_actors:", "--runtime:", "--reward:", "--[no]resume:", "--data_dir:",
                 "--num_gpus:", "--[no]conditional:", "--episode_length:"):
        assert flag in out.stdout, flag


def test_presets_follow_the_paper():
    celeba = launch_flags.config_from_values(launch_flags.default_values("celeba", run_dir="x"))
    assert celeba.env.use_color and celeba.agent.use_color and celeba.discriminator.image_channels == 3
    assert celeba.env.episode_length == 20  # reset + 19 strokes
    omniglot = launch_flags.config_from_values(launch_flags.default_values("omniglot", run_dir="x"))
    assert omniglot.env.conditional and omniglot.discriminator.conditional
    mnist = launch_flags.config_from_values(launch_flags.default_values("mnist", run_dir="x"))
    assert not mnist.env.use_color and mnist.agent.lstm_size == 256


def test_config_round_trips_through_json(tmp_path):
    c = config(tmp_path, conditional=True, complement_discriminator=True, brush_sizes=["2", "4"])
    assert ExperimentConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("overrides, message", [
    (dict(reward="l2"), "needs --conditional"),
    (dict(complement_discriminator=True), "needs --conditional"),
    (dict(entropy_weights=["colour:2"]), "action space does not have"),
    (dict(entropy_weights=["flag=2"]), "key:weight"),
    (dict(entropy_weights=["flag:-1"]), "entropy weight of 'flag'"),
    (dict(batch_size=10), "multiple of --envs_per_actor"),
    (dict(num_gpus=3), "--num_gpus"),
    (dict(max_updates=0, max_minutes=0), "budget"),
    (dict(queue_capacity=1, num_actors=2), "queue_capacity"),
    (dict(brush_sizes=["a"]), "--brush_sizes must be numbers"),
    (dict(runtime="gpu"), "--runtime"),
])
def test_contradictory_or_out_of_range_flags_are_rejected(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


def test_a_missing_dataset_is_reported_before_any_actor_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIRAL_MNIST_URL", "http://127.0.0.1:9/")  # nothing listens: fail fast
    c = config(tmp_path, data_dir=str(tmp_path / "empty"))
    with pytest.raises(Exception, match="train-images-idx3-ubyte.gz"):
        run_loop.train(c)
    c = config(tmp_path, dataset="celeba", use_color=True, data_dir=str(tmp_path / "empty"))
    with pytest.raises(Exception, match="(?i)celeba"):
        run_loop.train(c)


def test_a_gpu_asked_for_and_absent_is_an_error(tmp_path):
    import jax
    if jax.default_backend() != "cpu":
        pytest.skip("this machine has a GPU")
    with pytest.raises(RunError, match="JAX sees no GPU"):
        run_loop.train(config(tmp_path, num_gpus=1))


def test_more_actors_than_the_ray_cluster_has_cpus_is_an_error(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(RunError, match="need 6 CPUs but the Ray cluster has 2"):
            run_loop.train(config(tmp_path, runtime="ray", num_actors=5))
        with pytest.raises(RunError, match="GPU"):
            run_loop.train(config(tmp_path, runtime="ray", num_gpus=1))
    finally:
        ray.shutdown()


def test_every_config_field_is_a_flag_or_says_why_not():
    """Each option is written once, in its config dataclass: every field is a flag (its help the
    field's Attributes entry) or is listed in NOT_FLAGS with the reason; nothing stale."""
    import dataclasses
    specs = launch_flags.flag_specs()   # raises for a field without an Attributes entry
    paths = {spec.path for spec in specs}
    every_field = set()
    for prefix, cls in launch_flags.SECTIONS:
        for field in dataclasses.fields(cls):
            path = f"{prefix}.{field.name}" if prefix else field.name
            every_field.add(path)
            assert (path in paths) != (path in launch_flags.NOT_FLAGS), path
    for table in (launch_flags.NOT_FLAGS, launch_flags.RENAMED, launch_flags.CHOICES,
                  launch_flags.LAUNCH_DEFAULTS, launch_flags.HELP_NOTES):
        assert set(table) <= every_field | {"agent"}, set(table) - every_field
    names = [spec.name for spec in specs] + ["network", "disc_network"]
    assert len(names) == len(set(names))
    by_name = {spec.name: spec for spec in specs}
    assert by_name["disc_learning_rate"].path == "discriminator.learning_rate"
    from spiral.learner import PolicyLearnerConfig
    assert by_name["learning_rate"].help == launch_flags.field_docs(PolicyLearnerConfig)["learning_rate"]


def test_default_flags_give_the_dataclasses_defaults_except_where_the_launcher_says():
    import dataclasses
    config = launch_flags.config_from_values(launch_flags.default_values("mnist", run_dir="x"))
    for prefix, cls in launch_flags.SECTIONS[1:]:
        built = getattr(config, prefix)
        for field in dataclasses.fields(cls):
            path = f"{prefix}.{field.name}"
            if path in launch_flags.NOT_FLAGS or path in launch_flags.LAUNCH_DEFAULTS:
                continue
            if field.name in launch_flags.PRESETS["mnist"]:
                continue
            assert getattr(built, field.name) == field.default, path
    assert config.policy.transposed_conv == launch_flags.LAUNCH_DEFAULTS["policy.transposed_conv"]
    assert config.runtime.max_updates == launch_flags.LAUNCH_DEFAULTS["runtime.max_updates"]
