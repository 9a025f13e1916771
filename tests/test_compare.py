"""Learned optimizers from several evaluations, read against one evaluation's tuned baselines."""

import json

import pytest

from metaopt.evaluate import compare


def _summary(mean, n_diverged=0):
    return {"per_seed": [mean, mean], "diverged": [False, n_diverged > 0], "n": 2, "n_diverged": n_diverged,
            "mean": mean, "std": 0.0, "ci_low": mean, "ci_high": mean, "confidence": 0.95}


def _opt(train, held_out, n_diverged=0):
    return {"final_train_loss": _summary(train, n_diverged), "final_eval_loss": _summary(held_out),
            "n_diverged": n_diverged}


def _results(folder, cells, seeds=(0, 1)):
    out = {"suite_config": {"axis": "width"},
           "cells": [{"name": name, "x": x, "num_steps": 100, "seeds": list(seeds), "status": "done",
                      "optimizers": opts} for name, x, opts in cells]}
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(out))
    return str(folder)


@pytest.fixture
def folders(tmp_path):
    base = _results(tmp_path / "base", [
        ("w1", 1, {"learned": _opt(9.0, 9.0), "muadam": _opt(1.0, 2.0), "adamw": _opt(2.0, 1.0)}),
        ("w2", 2, {"learned": _opt(9.0, 9.0), "muadam": _opt(0.5, 2.0), "adamw": _opt(0.4, 3.0)})])
    new = _results(tmp_path / "new", [
        ("w1", 1, {"learned": _opt(0.9, 1.05)}),         # wins, held-out within 10%
        ("w2", 2, {"learned": _opt(0.6, 2.5, 1)})])      # loses, a seed diverged, held-out 1.25x
    return tmp_path, base, new


def test_summary_counts_wins_divergence_and_held_out(folders):
    _, base, new = folders
    cells, learned, baselines, left_out = compare.merge(compare.load_results(base),
                                                        {"new": compare.load_results(new)})
    assert left_out == [] and learned == ["new"] and baselines == ["muadam", "adamw"]
    assert cells[0]["optimizers"]["new"]["final_train_loss"]["mean"] == 0.9
    summary = compare.target_summary(cells, learned, baselines, "muadam")
    assert summary["new"] == {"cells": 2, "train_at_or_below_reference": 1, "diverged_cells": 1,
                              "eval_within_tolerance": 1}
    # The baselines' own learned optimizer can be listed too, and against adamw the counts change.
    cells, learned, baselines, _ = compare.merge(compare.load_results(base), {"old": compare.load_results(base)})
    assert compare.target_summary(cells, learned, baselines, "adamw")["old"]["train_at_or_below_reference"] == 0


def test_main_writes_tables_and_refuses_mismatched_cells(folders, capsys):
    tmp, base, new = folders
    out = tmp / "cmp"
    assert compare.main(["--baselines", base, f"new={new}", "--out", str(out)]) == 0
    text = (out / "compare.md").read_text()
    assert "| new | 1/2 | 1/2 | 1/2 |" in text
    assert (out / "final_vs_axis.png").stat().st_size > 0
    other = _results(tmp / "other", [("w1", 1, {"learned": _opt(1.0, 1.0)}),
                                     ("w2", 2, {"learned": _opt(1.0, 1.0)})], seeds=(5, 6))
    capsys.readouterr()
    assert compare.main(["--baselines", base, f"x={other}", "--out", str(tmp / "cmp2"), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: x: cell w1 ran 100 steps on seeds [5, 6]") and "\n" not in err
    assert compare.main(["--baselines", base, f"new={new}", "--reference", "sgd", "--out", str(tmp / "c3")]) == 2
    assert "reference: 'sgd'" in capsys.readouterr().err
    assert compare.main(["--baselines", base, "new", "--out", str(tmp / "c4")]) == 2
    # An evaluation of fewer cells is read on the cells it has; the rest are named.
    part = _results(tmp / "part", [("w1", 1, {"learned": _opt(0.5, 1.0)})])
    assert compare.main(["--baselines", base, f"part={part}", "--out", str(tmp / "c5"), "--no-plots"]) == 0
    text = (tmp / "c5" / "compare.md").read_text()
    assert "left out (not run in every evaluation): w2" in text and "| part | 1/1 | 0/1 | 1/1 |" in text
    assert not (tmp / "cmp2").exists() or not (tmp / "cmp2" / "compare.md").exists()
