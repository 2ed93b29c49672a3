"""The replay of final canvases: bounded, uniform, copying, aligned with targets, strict on input."""

import gc
import math
import weakref

import numpy as np
import pytest

from spiral.discriminator import DiscriminatorConfig, Replay


def tagged(ids, channels=1):
    """uint8 canvases whose every pixel holds their id (mod 256) — so a sample tells its origin."""
    ids = np.asarray(ids)
    return np.broadcast_to((ids % 256).astype(np.uint8)[:, None, None, None], (len(ids), 64, 64, channels)).copy()


def ids_of(canvases):
    return canvases[:, 0, 0, 0].astype(int)


def test_capacity_bound_keeps_the_newest():
    replay = Replay(capacity=50)
    nbytes = replay.nbytes
    assert nbytes == 50 * 64 * 64
    for start in range(0, 170, 17):
        replay.add(tagged(range(start, start + 17)))
    assert len(replay) == 50 and replay.num_added == 170
    assert replay.nbytes == nbytes  # preallocated once, never grows
    held = set(ids_of(replay._canvases))
    assert held == set(range(120, 170))
    # One add bigger than the capacity keeps its newest canvases.
    replay.add(tagged(range(170, 250)))
    assert set(ids_of(replay._canvases)) == set(range(200, 250))


def test_sampling_is_uniform_over_what_is_held():
    """Chi-square goodness of fit over 50 slots; the critical value is at p = 0.001."""
    replay = Replay(capacity=64, seed=1)
    replay.add(tagged(range(50)))  # partly filled: slots 50..63 must never be drawn
    draws = 40_000
    ids = np.concatenate([ids_of(replay.sample(1000)[0]) for _ in range(draws // 1000)])
    counts = np.bincount(ids, minlength=64)
    assert counts[50:].sum() == 0
    expected = draws / 50
    chi2 = np.sum((counts[:50] - expected) ** 2 / expected)
    dof, z = 49, 3.090  # z of the 0.999 quantile; Wilson–Hilferty approximation of the chi-square quantile
    critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < critical, (chi2, critical)
    # And not trivially uniform: a biased sampler fails the same test.
    biased = counts[:50].astype(float).copy()
    biased[:5] *= 1.3
    assert np.sum((biased - expected) ** 2 / expected) > critical


def test_add_copies_and_keeps_no_reference_to_inputs():
    replay = Replay(capacity=32, conditional=True)
    canvases = tagged(range(10))
    targets = np.random.default_rng(0).random((10, 64, 64, 1), dtype=np.float32)
    canvas_ref, target_ref = weakref.ref(canvases), weakref.ref(targets)
    replay.add(canvases, targets)
    canvases[:] = 99  # changing the input afterwards does not change the replay
    assert set(ids_of(replay._canvases[:10])) == set(range(10))
    del canvases, targets
    gc.collect()
    assert canvas_ref() is None and target_ref() is None
    sampled, sampled_targets = replay.sample(8)
    assert not np.shares_memory(sampled, replay._canvases)
    assert not np.shares_memory(sampled_targets, replay._targets)


def test_read_only_inputs_as_from_ray_are_accepted():
    canvases = tagged(range(4))
    canvases.setflags(write=False)  # ray.get returns read-only, zero-copy arrays
    replay = Replay(capacity=8)
    replay.add(canvases)
    assert len(replay) == 4


def test_conditional_replay_keeps_each_target_beside_its_canvas():
    replay = Replay(capacity=100, conditional=True, seed=2)
    ids = np.arange(300)
    replay.add(tagged(ids), tagged(ids + 7))
    canvases, targets = replay.sample(500)
    np.testing.assert_array_equal((ids_of(canvases) + 7) % 256, ids_of(targets))


def test_float_canvases_are_stored_as_the_nearest_uint8():
    replay = Replay(capacity=4)
    values = np.array([0.0, 0.2, 0.5, 1.0], np.float32)
    replay.add(np.broadcast_to(values[:, None, None, None], (4, 64, 64, 1)).copy())
    np.testing.assert_array_equal(replay._canvases[:, 0, 0, 0], np.rint(values * 255).astype(np.uint8))
    assert replay._canvases.dtype == np.uint8


def test_from_config_uses_the_papers_size():
    replay = Replay.from_config(DiscriminatorConfig(image_channels=3, conditional=True))
    assert replay.capacity == 20 * 64
    assert replay.nbytes == 2 * 1280 * 64 * 64 * 3


def test_bad_input_gets_a_clear_error():
    replay = Replay(capacity=8)
    with pytest.raises(ValueError, match="empty"):
        replay.sample(4)
    with pytest.raises(ValueError, match=r"\[N, 64, 64, C\]"):
        replay.add(np.zeros((64, 64, 1), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        replay.add(np.full((2, 64, 64, 1), 255.0, np.float32))
    with pytest.raises(ValueError, match="1 channel"):
        replay.add(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="unconditional"):
        replay.add(tagged(range(2)), tagged(range(2)))
    conditional = Replay(capacity=8, conditional=True)
    with pytest.raises(ValueError, match="pass the targets"):
        conditional.add(tagged(range(2)))
    with pytest.raises(ValueError, match="as many"):
        conditional.add(tagged(range(2)), tagged(range(3)))
    assert len(replay) == 0 and len(conditional) == 0  # nothing half-added


def test_state_round_trip_restores_content_and_order():
    source = Replay(capacity=5, image_channels=1, conditional=True, seed=0)
    images = np.arange(7 * 64 * 64, dtype=np.uint32).reshape(7, 64, 64, 1) % 256
    source.add(images[:3].astype(np.uint8), images[3:6].astype(np.uint8))
    source.add(images[3:7].astype(np.uint8), images[:4].astype(np.uint8))  # wraps around
    copy = Replay(capacity=5, image_channels=1, conditional=True, seed=1)
    copy.set_state(source.get_state())
    assert len(copy) == len(source) == 5 and copy.num_added == 7
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for a, b in zip(source.sample(16, rng=rng_a), copy.sample(16, rng=rng_b)):
        np.testing.assert_array_equal(a, b)
    copy.add(images[:1].astype(np.uint8), images[:1].astype(np.uint8))  # continues at the same slot
    source.add(images[:1].astype(np.uint8), images[:1].astype(np.uint8))
    np.testing.assert_array_equal(copy.get_state()["canvases"], source.get_state()["canvases"])
    with pytest.raises(ValueError, match="capacity"):
        Replay(capacity=4, image_channels=1, conditional=True).set_state(source.get_state())
    with pytest.raises(ValueError, match="conditional"):
        Replay(capacity=5, image_channels=1).set_state(source.get_state())
