import numpy as np
import pytest

from spiral.envs import specs


def test_action_spec_keys_and_sizes():
    grey = specs.action_spec()
    assert list(grey) == ["flag", "end", "control", "size", "pressure"]
    assert [grey[k].num_values for k in grey] == [2, 1024, 1024, 6, 10]
    colour = specs.action_spec(use_color=True)
    assert list(colour)[-3:] == ["red", "green", "blue"]
    assert all(colour[k].num_values == 20 for k in specs.COLOR_KEYS)
    assert "pressure" not in specs.action_spec(use_pressure=False)
    assert "size" not in specs.action_spec(brush_sizes=(4,))


def test_action_masks():
    keys = specs.action_keys(use_color=True)
    np.testing.assert_array_equal(specs.action_mask(keys, painted=True), np.ones(len(keys)))
    jump = specs.action_mask(keys, painted=False)
    assert dict(zip(keys, jump)) == {k: float(k in ("flag", "end")) for k in keys}


def test_grid_to_canvas_row_major_y_first():
    assert specs.grid_to_canvas(0, 32, 64) == (0.0, 0.0)
    assert specs.grid_to_canvas(1, 32, 64) == (0.0, 2.0)  # x moves first within a row
    assert specs.grid_to_canvas(32 * 3 + 5, 32, 64) == (6.0, 10.0)


@pytest.mark.parametrize("action, message", [
    ({"flag": 1, "end": 3, "control": 4, "size": 0}, "missing"),
    ({"flag": 2, "end": 3, "control": 4, "size": 0, "pressure": 1}, "'flag' = 2 is out of range"),
    ({"flag": 1, "end": -1, "control": 4, "size": 0, "pressure": 1}, "'end' = -1"),
    ({"flag": 1, "end": 1.5, "control": 4, "size": 0, "pressure": 1}, "'end' must be an integer"),
    ({"flag": 1, "end": 1, "control": 4, "size": 0, "pressure": 1, "x": 0}, "unknown"),
])
def test_check_action_rejects_bad_actions(action, message):
    with pytest.raises(ValueError, match=message):
        specs.check_action(action, specs.action_spec())
