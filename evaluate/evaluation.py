"""``evaluate_suite``: a learned optimizer checkpoint through a suite, against tuned baselines.

Reads the checkpoint (a meta-training run folder or any ``metaopt.save`` folder) and its metadata
(the meta-training task and horizon), builds the suite's cells around that task, runs every cell that
the output folder does not hold yet (writing each one as soon as it is finished), then writes
``results.json``, ``results.md`` and the plots from all cells.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional

from metaopt.evaluate import cells as cells_lib
from metaopt.evaluate import plots, report, store, suites


__all__ = ["default_out", "load_checkpoint", "resolve_task", "evaluate_suite"]


def _checkpoint_root(checkpoint: str) -> tuple[str, bool]:
    """(the run folder or the save folder, whether it is a meta-training run folder)."""
    path = os.path.abspath(checkpoint)
    parent = os.path.dirname(path)
    if os.path.basename(path) == "theta" and os.path.isfile(os.path.join(parent, "config.yaml")):
        return parent, True
    is_run = os.path.isfile(os.path.join(path, "config.yaml")) or (
        not os.path.isfile(os.path.join(path, "manifest.json"))
        and os.path.isdir(os.path.join(path, "theta")))
    return path, is_run


def default_out(checkpoint: str, suite_name: str) -> str:
    """RUN_DIR/eval/SUITE for a run folder; CHECKPOINT-eval/SUITE beside a plain saved optimizer;
    runs/NAME-eval/SUITE for a shipped name (never inside the installed package)."""
    from metaopt import checkpoint as ckpt

    if ckpt.shipped_path(checkpoint) is not None:
        return os.path.join("runs", f"{checkpoint}-eval", suite_name)
    root, is_run = _checkpoint_root(checkpoint)
    if is_run:
        return os.path.join(root, "eval", suite_name)
    return os.path.join(root + "-eval", suite_name)


def load_checkpoint(checkpoint: str):
    """(lopt, theta, metadata) of a checkpoint; ``ValueError`` naming ``checkpoint`` when unusable."""
    import metaopt
    from metaopt import checkpoint as ckpt

    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint):
        raise ValueError(f"checkpoint: expected a folder, got {checkpoint!r}")
    if not os.path.exists(checkpoint):
        raise ValueError(f"checkpoint: no such folder {str(checkpoint)!r}")
    try:
        lopt, theta = metaopt.load(checkpoint)
        metadata = ckpt.load_metadata(checkpoint)
    except ValueError as err:
        raise ValueError(f"checkpoint: {err}") from None
    return lopt, theta, dict(metadata or {})


def resolve_task(suite: dict, metadata: dict) -> tuple[str, dict, dict, int]:
    """The meta-training task (family, family_kwargs, config fields) and horizon, with overrides.

    The checkpoint's metadata gives them; the suite's ``task.*`` and ``base_num_steps`` override it. A
    different ``task.family`` starts from that family's defaults (the checkpoint's fields need not apply).
    """
    meta_task = metadata.get("task") or {}
    family = suite["task"]["family"] or meta_task.get("family")
    if not family:
        raise ValueError("task.family: the checkpoint's metadata names no task; pass task.family=NAME")
    same = family == meta_task.get("family")
    meta_kwargs = (meta_task.get("family_kwargs") or {}) if same else {}
    meta_config = (meta_task.get("config") or {}) if same else {}
    family_kwargs = {**meta_kwargs, **suite["task"]["family_kwargs"]}
    config = {**meta_config, **suite["task"]["config"]}
    base_num_steps = suite["base_num_steps"] or metadata.get("num_steps")
    if not base_num_steps:
        raise ValueError("base_num_steps: the checkpoint's metadata has no num_steps; pass base_num_steps=N")
    try:
        base_num_steps = int(base_num_steps)
    except (TypeError, ValueError):
        raise ValueError(f"base_num_steps: expected an integer, got {base_num_steps!r}") from None
    if base_num_steps < 1:
        raise ValueError(f"base_num_steps: expected a positive integer, got {base_num_steps}")
    return family, family_kwargs, config, base_num_steps


class _Progress:
    """A tqdm bar over the runs of a suite (cells x optimizers x seeds and tuning grids)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="run", desc="evaluate", dynamic_ncols=True)

    def __call__(self, n: int, desc: str) -> None:
        if self.bar is not None:
            if self.bar.n + n > self.bar.total:
                self.bar.total = self.bar.n + n
            self.bar.set_description(desc, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            if self.bar.n < self.bar.total:  # fewer runs than estimated (fixed or transferred rates)
                self.bar.total = self.bar.n
                self.bar.refresh()
            self.bar.close()


def _estimated_runs(suite: dict) -> int:
    """Runs of one cell: the reported seeds of every optimizer, and one grid per tuned baseline."""
    runs = suite["seeds"] if suite["learned"] else 0
    for spec in suite["baselines"].values():
        runs += suite["seeds"] + (suite["tuning"]["num_points"] if spec["learning_rate"] is None else 0)
    return runs


def evaluate_suite(checkpoint: str, suite: str, *, out: Optional[str] = None, overrides: Any = None,
                   progress: bool = True, plots_enabled: bool = True) -> dict:
    """Evaluates a learned optimizer on a suite; resumes an interrupted evaluation in ``out``.

    Args:
      checkpoint: a meta-training run folder or a ``metaopt.save`` folder.
      suite: a shipped suite's name (``width_transfer``, ``depth_transfer``, ``horizon_transfer``,
        ``task_transfer``) or a path to a suite YAML.
      out: the output folder (default RUN_DIR/eval/SUITE; CHECKPOINT-eval/SUITE for a plain save).
      overrides: ``["key=value", ...]`` or ``{"key": value}`` applied to the suite (``seeds=5``,
        ``task.config.batch_size=64``, ``base_num_steps=200``, ``baselines=[adamw]``, ...).
      progress: show a tqdm progress bar.
      plots_enabled: write the PNG plots.

    Returns:
      The results (the content of ``results.json``), with ``out`` and the written ``files`` added.

    Raises:
      ValueError: bad suite, override, checkpoint or task config (the message names the field);
        ``store.OutputMismatchError`` when ``out`` holds a different evaluation.
    """
    from metaopt.tasks import get_family

    suite_cfg = suites.load_suite(suite, overrides)
    lopt, theta, metadata = load_checkpoint(checkpoint)
    family_name, family_kwargs, config_fields, base_num_steps = resolve_task(suite_cfg, metadata)
    family = get_family(family_name, **family_kwargs)
    base_config = family.make_config(**config_fields)
    cells = suites.make_cells(suite_cfg, family_name, family_kwargs, base_config, base_num_steps, get_family)
    out = os.path.abspath(out or default_out(checkpoint, suite_cfg["suite"]))

    theta_sha = store.theta_digest(theta)
    task_record = {"family": family_name, "family_kwargs": family_kwargs,
                   "config": suites.config_fields(base_config)}
    identity = report.to_jsonable({"suite_config": suite_cfg, "task": task_record,
                                   "base_num_steps": base_num_steps, "theta_sha256": theta_sha,
                                   "lopt": {"kind": lopt.kind, "config": lopt.config()}})
    fp = store.fingerprint(identity)
    manifest = {"suite": suite_cfg["suite"], "checkpoint": os.path.abspath(checkpoint),
                "theta_sha256": theta_sha, "fingerprint": fp, **identity}
    store.open_output(out, manifest)

    reference = suites.reference_cell(cells) if suite_cfg["tuning"]["mode"] == "transfer" else None
    order = sorted(cells, key=lambda c: c is not reference)
    records: dict[str, dict] = {}
    run_warnings: list[str] = []
    bar = _Progress(_estimated_runs(suite_cfg) * sum(c.skip_reason is None for c in cells), progress)
    transferred = None
    try:
        for cell in order:
            record = store.load_cell(out, cell.name, fp)
            if record is None:
                if cell.skip_reason is not None:
                    record = cells_lib.skipped_record(cell, cell.skip_reason)
                else:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        record = cells_lib.evaluate_cell(
                            cell, suite_cfg, lopt, theta, get_family=get_family, transferred=transferred,
                            transferred_from=None if reference is None else reference.name, progress=bar)
                    record["warnings"] = [f"{cell.name}: {w.message}" for w in caught
                                          if issubclass(w.category, UserWarning)]
                    for w in caught:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                record = report.to_jsonable({**record, "fingerprint": fp})
                store.save_cell(out, record)
            else:
                bar(_estimated_runs(suite_cfg) if record.get("status") == "done" else 0,
                    f"{cell.name}: done before")
            records[cell.name] = record
            run_warnings += record.get("warnings", [])
            if cell is reference and record.get("status") == "done":
                transferred = {name: rec["learning_rate"] for name, rec in record["optimizers"].items()
                               if name != "learned"}
    finally:
        bar.close()

    header = {
        "suite": suite_cfg["suite"],
        "checkpoint": os.path.abspath(checkpoint),
        "theta_sha256": theta_sha,
        "outer_step": metadata.get("outer_step"),
        "checkpoint_metadata": metadata,
        "learned_optimizer": {"kind": lopt.kind, "config": lopt.config()},
        "task": task_record,
        "base_num_steps": base_num_steps,
        "suite_config": suite_cfg,
        "fingerprint": fp,
    }
    results = report.build_results(header=header, cells=[records[c.name] for c in cells],
                                   warnings_list=run_warnings)
    files = report.write_results(out, results)
    files["plots"] = plots.write_plots(out, results) if plots_enabled else []
    return {**results, "out": out, "files": files}

