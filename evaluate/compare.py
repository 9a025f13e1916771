"""Learned optimizers from several evaluations of one suite, side by side against tuned baselines.

A suite run with ``baselines=[]`` evaluates only the learned optimizer, which is cheap; its cells
are then read against the tuned baselines of another run of the same suite (same cells, steps and
seeds). For every learned optimizer this reports, over the cells that ran:

- final training loss at or below the ``reference`` baseline's (tuned per cell, e.g. µAdam + cosine);
- cells where any seed diverged;
- final held-out loss within ``eval_tolerance`` (10%) of the best baseline's.

Cells that did not run in every evaluation are left out and named.

    python -m metaopt.evaluate.compare --baselines docs/results/width5x_mulo-mlp \\
        mulo-v3=runs/mulo-v3-eval/width_transfer mulo-mlp=docs/results/width5x_mulo-mlp \\
        --reference muadam --out docs/results/width5x_compare

Each ``NAME=DIR`` takes the ``learned`` optimizer of ``DIR/results.json``. Writes ``compare.md``
(tables and the summary), ``compare.json`` and, unless ``--no-plots``, ``final_vs_axis.png`` or
``final_by_task.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from metaopt.evaluate import report, store

__all__ = ["load_results", "merge", "target_summary", "markdown", "main"]


def load_results(folder: str) -> dict:
    """``results.json`` of an evaluation folder (or the file itself)."""
    path = folder if folder.endswith(".json") else os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder}: no results.json (run python -m evaluate first)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _cell_key(cell: dict) -> tuple:
    return cell["name"], cell.get("num_steps"), tuple(cell.get("seeds") or ())


def merge(baselines: dict, learned: dict[str, dict]) -> tuple[list[dict], list[str], list[str], list[str]]:
    """Cells holding the baselines of ``baselines`` and each ``learned[name]``'s learned optimizer.

    Returns ``(cells, learned_names, baseline_names, left_out)``: a cell that did not run in every
    evaluation is left out (and named in ``left_out``); one run with other steps or seeds is an
    error naming the cell.
    """
    base_names = [n for n in report.optimizer_names(baselines["cells"]) if n != "learned"]
    by_key = {name: {c["name"]: c for c in res["cells"] if c.get("status") == "done"}
              for name, res in learned.items()}
    cells, left_out = [], []
    for cell in baselines["cells"]:
        if cell.get("status") != "done" or any(cell["name"] not in c for c in by_key.values()):
            left_out.append(cell["name"])
            continue
        opts = {n: cell["optimizers"][n] for n in base_names if n in cell["optimizers"]}
        for name, cells_of in by_key.items():
            other = cells_of[cell["name"]]
            if _cell_key(other) != _cell_key(cell):
                raise ValueError(f"{name}: cell {cell['name']} ran {other.get('num_steps')} steps on seeds "
                                 f"{other.get('seeds')}, the baselines {cell.get('num_steps')} on {cell.get('seeds')}")
            if "learned" not in other["optimizers"]:
                raise ValueError(f"{name}: cell {cell['name']} has no learned optimizer")
            opts[name] = other["optimizers"]["learned"]
        cells.append({**cell, "optimizers": opts})
    if not cells:
        raise ValueError("learned: no cell ran in every evaluation")
    return cells, list(learned), base_names, left_out


def target_summary(cells: list[dict], learned_names: list[str], base_names: list[str],
                   reference: str, eval_tolerance: float = 0.1) -> dict:
    """Per learned optimizer: cells at or below ``reference``'s training loss, cells with a diverged
    seed, and cells whose held-out loss is within ``eval_tolerance`` of the best baseline's."""
    out = {}
    for name in learned_names:
        wins = diverged = close = counted = 0
        for cell in cells:
            rec, ref = cell["optimizers"][name], cell["optimizers"].get(reference)
            if ref is None:
                raise ValueError(f"reference: {reference!r} is not a baseline of these cells; "
                                 f"baselines: {base_names}")
            counted += 1
            diverged += rec["n_diverged"] > 0
            mine, theirs = rec["final_train_loss"]["mean"], ref["final_train_loss"]["mean"]
            wins += mine is not None and theirs is not None and mine <= theirs
            evals = [cell["optimizers"][b]["final_eval_loss"]["mean"] for b in base_names]
            evals = [e for e in evals if e is not None]
            own_eval = rec["final_eval_loss"]["mean"]
            close += bool(evals) and own_eval is not None and own_eval <= (1 + eval_tolerance) * min(evals)
        out[name] = {"cells": counted, "train_at_or_below_reference": wins, "diverged_cells": diverged,
                     "eval_within_tolerance": close}
    return out


def markdown(cells: list[dict], learned_names: list[str], base_names: list[str], summary: dict,
             reference: str, eval_tolerance: float, axis: str, sources: dict[str, str],
             left_out: Sequence[str] = ()) -> str:
    """Tables of final training and held-out loss, and the summary against the baselines."""
    names = learned_names + base_names
    lines = ["# Learned optimizers against tuned baselines", ""]
    lines += [f"- `{n}`: {src}" for n, src in sources.items()]
    if left_out:
        lines.append(f"- left out (not run in every evaluation): {', '.join(left_out)}")
    lines += ["", "Means ± half-width of the 95% t-interval over seeds; best mean in bold.", "",
              "## Final training loss", "", *report._loss_table(cells, names, "final_train_loss", axis),
              "", "## Final held-out loss", "", *report._loss_table(cells, names, "final_eval_loss", axis),
              "", "## Summary", "",
              f"| learned optimizer | training loss at or below tuned {reference} | cells with a diverged seed "
              f"| held-out loss within {eval_tolerance:.0%} of the best baseline's |",
              "| --- | --- | --- | --- |"]
    for name in learned_names:
        s = summary[name]
        lines.append(f"| {name} | {s['train_at_or_below_reference']}/{s['cells']} | {s['diverged_cells']}/{s['cells']} "
                     f"| {s['eval_within_tolerance']}/{s['cells']} |")
    return "\n".join(lines) + "\n"


def _parse_learned(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"learned: expected NAME=DIR, got {item!r}")
        if name in out:
            raise ValueError(f"learned: {name!r} given twice")
        out[name] = folder
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the comparison; bad input prints one ``error:`` line and returns 2."""
    parser = argparse.ArgumentParser(prog="python -m metaopt.evaluate.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--baselines", required=True, help="evaluation folder whose tuned baselines are the reference")
    parser.add_argument("learned", nargs="+", metavar="NAME=DIR", help="a learned optimizer's evaluation folder")
    parser.add_argument("--reference", default="muadam", help="the baseline training loss is compared with")
    parser.add_argument("--eval-tolerance", type=float, default=0.1)
    parser.add_argument("--out", required=True, help="folder for compare.md, compare.json and the plot")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    try:
        sources = _parse_learned(args.learned)
        base = load_results(args.baselines)
        learned = {name: load_results(folder) for name, folder in sources.items()}
        cells, learned_names, base_names, left_out = merge(base, learned)
        summary = target_summary(cells, learned_names, base_names, args.reference, args.eval_tolerance)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    axis = base.get("suite_config", {}).get("axis", "width")
    os.makedirs(args.out, exist_ok=True)
    text = markdown(cells, learned_names, base_names, summary, args.reference, args.eval_tolerance, axis,
                    {**sources, "baselines": args.baselines}, left_out)
    store.atomic_write_text(os.path.join(args.out, "compare.md"), text)
    store.atomic_write_json(os.path.join(args.out, "compare.json"), report.to_jsonable(
        {"sources": sources, "baselines": args.baselines, "reference": args.reference,
         "eval_tolerance": args.eval_tolerance, "left_out": left_out, "summary": summary}))
    if not args.no_plots:
        from metaopt.evaluate import plots
        names = learned_names + base_names
        if axis == "task":
            plots.plot_final_by_task(cells, names, os.path.join(args.out, "final_by_task.png"))
        else:
            plots.plot_final_vs_axis(cells, names, axis, os.path.join(args.out, "final_vs_axis.png"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
