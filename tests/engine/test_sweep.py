"""The settings sweep's grid handling (jobs/benchmark.py sweep); its timed runs are what the benchmark measures."""

import pytest

from engine.core.config import EngineConfig
from engine.core.config_base import ConfigError, with_overrides
from engine.devkit.sweep import DEFAULT_GRID, parse_grid, settings


def test_grid_items_become_every_combination_in_order():
    grid = parse_grid(["resources.media_num_cpus=0.25,0.5", "block_rows=4,16,64"])
    assert grid == {"resources.media_num_cpus": ["0.25", "0.5"], "block_rows": ["4", "16", "64"]}
    combos = settings(grid)
    assert len(combos) == 6
    assert combos[0] == ["resources.media_num_cpus=0.25", "block_rows=4"]
    assert combos[-1] == ["resources.media_num_cpus=0.5", "block_rows=64"]
    assert len(settings(DEFAULT_GRID)) == 2 * 2 * 2
    base = EngineConfig(input="in", output="out")
    assert all(with_overrides(base, combo) for combo in settings(DEFAULT_GRID))  # every default setting is valid
    pools = parse_grid(["resources.asr_concurrency=[1,1],[2,2]", "resources.asr_num_cpus=2,0.75"])
    assert pools == {"resources.asr_concurrency": ["[1,1]", "[2,2]"], "resources.asr_num_cpus": ["2", "0.75"]}
    config = with_overrides(EngineConfig(input="in", output="out"), settings(pools)[0])
    assert (config.resources.asr_concurrency, config.resources.asr_num_cpus) == ((1, 1), 2.0)


@pytest.mark.parametrize("item", ["block_rows", "=4", "block_rows="])
def test_a_grid_item_without_values_is_an_error(item):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_grid([item])


def test_overrides_apply_to_a_copy_and_are_validated():
    base = EngineConfig(input="in", output="out")
    changed = with_overrides(base, ["resources.media_num_cpus=0.25", "block_rows=4"])
    assert (changed.resources.media_num_cpus, changed.block_rows) == (0.25, 4)
    assert (base.resources.media_num_cpus, base.block_rows) == (1.0, 16)  # the original is untouched
    assert changed.asr == base.asr
    with pytest.raises(ConfigError, match="block_rows"):
        with_overrides(base, ["block_rows=0"])
    with pytest.raises(ConfigError, match="no_such_knob"):
        with_overrides(base, ["resources.no_such_knob=1"])
