"""train.recipes.benchmarking: the SFT benchmark's figures from metrics rows, worked out by hand."""

import pytest

from train.recipes.benchmarking import ratios, recipe_summary


def _row(step, epoch, step_s, data_s):
    return {"step": step, "epoch": epoch, "step_s": step_s, "data_s": data_s, "compute_s": step_s - data_s,
            "loss": 10.0 - step, "peak_rss_mb": 100.0 + step}


def test_mean_median_first_wait_and_the_waits_of_the_steps_that_open_an_epoch():
    rows = [_row(1, 0, 5.0, 4.5), _row(2, 0, 1.0, 0.0), _row(3, 1, 2.0, 1.0), _row(4, 1, 1.0, 0.0),
            _row(5, 2, 1.5, 0.5)]
    summary = recipe_summary(rows, samples_per_step=2)
    assert summary["mean_step_s"] == pytest.approx(10.5 / 5) and summary["median_step_s"] == 1.5
    assert summary["samples_per_s_mean"] == pytest.approx(2 / 2.1, abs=1e-3)
    assert summary["first_step_data_s"] == 4.5
    assert summary["epoch_boundary_data_s"] == {"count": 2, "max": 1.0, "mean": 0.75}
    assert (summary["first_loss"], summary["last_loss"], summary["peak_rss_mb"]) == (9.0, 5.0, 105.0)


def test_ratios_are_throughput_over_the_baselines():
    baseline = {"mean_step_s": 1.0, "median_step_s": 0.5, "peak_rss_mb": 200.0}
    recipe = {"mean_step_s": 2.0, "median_step_s": 0.5, "peak_rss_mb": 300.0}
    assert ratios(baseline, recipe) == {"mean_step_ratio": 0.5, "median_step_ratio": 1.0, "peak_rss_ratio": 1.5}
