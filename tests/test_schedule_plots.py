"""Learned-schedule curves, their summary and plot."""

import jax
import numpy as np
import pytest

import metaopt
from metaopt.evaluate import schedules


def test_schedule_curves_summary_and_plot(tmp_path, capsys):
    sched = metaopt.LearnedSchedule(hidden_size=4)
    metaopt.save(tmp_path / "sched", sched, sched.init(jax.random.key(0)))
    curves = schedules.schedule_curves([str(tmp_path / "sched")], [10, 50])
    curve = curves[str(tmp_path / "sched")][50]
    assert curve.shape == (50,) and np.all(curve > 0)
    # A freshly initialised schedule multiplies by 1 throughout.
    np.testing.assert_allclose(curve, 1.0, rtol=1e-5)
    summary = schedules.summarize(np.array([0.1, 1.0, 0.5]))
    assert summary["peak_at"] == 0.5 and summary["end_over_peak"] == 0.5
    out = tmp_path / "plot.png"
    assert schedules.main([str(tmp_path / "sched"), "--num-steps", "10", "50", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "| 50 |" in capsys.readouterr().out


def test_a_learned_optimizer_is_not_a_schedule(tmp_path):
    lopt = metaopt.MLPLOpt(hidden_size=4, num_hidden_layers=1)
    metaopt.save(tmp_path / "lo", lopt, lopt.init(jax.random.key(0)))
    with pytest.raises(ValueError, match="not a learned schedule"):
        schedules.schedule_curves([str(tmp_path / "lo")], [10])
