"""Image levels (``spiral.envs.levels``) against explicit formulas, and its users sharing it."""

import numpy as np
import pytest

from spiral.envs import levels


def test_to_float_is_the_nearest_float32_to_k_over_255_and_rounds_back():
    k = np.arange(256, dtype=np.uint8)
    got = levels.to_float(k)
    assert got.dtype == np.float32
    exact = np.arange(256, dtype=np.float64) / 255.0
    # Nearest float32: no float32 neighbour is closer to the exact value.
    for direction in (np.float32(-np.inf), np.float32(np.inf)):
        neighbour = np.nextafter(got, direction)
        assert (np.abs(got - exact) <= np.abs(neighbour.astype(np.float64) - exact)).all()
    np.testing.assert_array_equal(np.rint(got * np.float32(255)).astype(np.uint8), k)
    np.testing.assert_array_equal(levels.quantise(got), k)
    with pytest.raises(ValueError, match="uint8 levels"):
        levels.to_float(np.zeros(3, np.int32))


def test_quantise_rounds_half_to_even_in_float32():
    values = (np.array([0.5, 1.5, 2.5, 254.5, 3.49, 3.51], np.float32) / np.float32(255))
    expected = [round(float(np.float32(v) * np.float32(255))) for v in values]  # Python rounds half to even
    np.testing.assert_array_equal(levels.quantise(values), expected)


def test_area_downsample_is_the_block_mean_requantised():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 2), dtype=np.uint8)
    got = levels.area_downsample(images, 2)
    expected = np.empty((3, 2, 2, 2), np.uint8)
    for n in range(3):
        for i in range(2):
            for j in range(2):
                for c in range(2):
                    block = images[n, 4 * i:4 * i + 4, 4 * j:4 * j + 4, c].astype(np.float64)
                    expected[n, i, j, c] = int(np.rint(block.mean()))
    np.testing.assert_array_equal(got, expected)
    assert levels.area_downsample(images, 8) is images
    with pytest.raises(ValueError, match="must divide 8"):
        levels.area_downsample(images, 3)


def test_the_environment_and_the_discriminator_use_these_levels():
    from spiral.discriminator import inputs
    from spiral.envs import numba_engine, targets
    assert numba_engine.UINT8_TO_FLOAT is levels.LEVELS
    assert targets.quantise is levels.quantise
    floats = np.random.default_rng(1).random((2, 64, 64, 1)).astype(np.float32)
    np.testing.assert_array_equal(inputs.to_uint8(floats), levels.quantise(floats))
