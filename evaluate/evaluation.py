"""``evaluate_suite``: a learned optimizer checkpoint through a suite, against tuned baselines.

Reads the checkpoint (a meta-training run folder or any ``metaopt.save`` folder) and its metadata
(the meta-training task and horizon), builds the suite's cells around that task, runs every cell that
the output folder does not hold yet (writing each one as soon as it is finished), then writes
``results.json``, ``results.md`` and the plots from all cells.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Any, Optional

from metaopt import compilation_cache
from metaopt.evaluate import cells as cells_lib
from metaopt.evaluate import plots, report, store, suites


__all__ = ["default_out", "load_checkpoint", "resolve_task", "evaluate_suite"]


def _checkpoint_label(checkpoint: str) -> str:
    """How results name ``checkpoint``: a shipped name as it is, a folder by its absolute path."""
    from metaopt import checkpoint as ckpt

    return str(checkpoint) if ckpt.shipped_path(checkpoint) is not None else os.path.abspath(checkpoint)


def _checkpoint_root(checkpoint: str) -> tuple[str, bool]:
    """(the run folder or the save folder, whether it is a meta-training run folder)."""
    from metaopt import checkpoint as ckpt

    path = os.path.abspath(checkpoint)
    parent = os.path.dirname(path)
    if os.path.basename(path) == "theta" and os.path.isfile(os.path.join(parent, "config.yaml")):
        return parent, True
    is_run = os.path.isfile(os.path.join(path, "config.yaml")) or (
        not ckpt.is_checkpoint(path) and os.path.isdir(os.path.join(path, "theta")))
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
    """(lopt, theta, metadata) of a checkpoint folder or shipped name; ``ValueError`` naming
    ``checkpoint`` when unusable."""
    import metaopt
    from metaopt import checkpoint as ckpt

    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint):
        raise ValueError(f"checkpoint: expected a folder, got {checkpoint!r}")
    if not os.path.exists(checkpoint) and ckpt.shipped_path(checkpoint) is None:
        raise ValueError(f"checkpoint: no such folder or shipped name {str(checkpoint)!r} "
                         f"(shipped: {', '.join(i.name for i in metaopt.pretrained.list())})")
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
    """The progress line of a suite: what is running or compiling, and the time left across cells.

    Progress is counted in work (FLOPs of the runs, ``cells.run_work``), not in runs, so a run on
    the 16x-wide cell weighs 16x-256x a run on the 1x cell and the time left is an estimate for the
    whole suite, not for the current cell.
    """

    def __init__(self, total: float, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max(total, 1.0), desc="evaluate", dynamic_ncols=True, mininterval=0.5,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
            # A single call can run for minutes (a wide cell's seeds); keep the clock moving.
            self._stop = threading.Event()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            bar = self.bar
            if bar is not None:
                bar.refresh()

    def compiling(self, cell_name: str, optimizer: str) -> None:
        """A program is about to be compiled (or loaded from the persistent cache)."""
        if self.bar is not None:
            self.bar.set_description(f"{cell_name}: compiling {optimizer}", refresh=True)

    def running(self, description: str) -> None:
        """Runs were dispatched (their results come later)."""
        if self.bar is not None:
            self.bar.set_description(description, refresh=True)

    def advance(self, work: float, description: str) -> None:
        """Runs worth ``work`` finished."""
        if self.bar is not None:
            if self.bar.n + work > self.bar.total:
                self.bar.total = self.bar.n + work
            self.bar.set_description(description, refresh=False)
            self.bar.update(work)

    @property
    def done(self) -> float:
        return 0.0 if self.bar is None else float(self.bar.n)

    def drop(self, work: float) -> None:
        """Work that was counted in the total will not be done (a skipped cell, a fixed rate)."""
        if self.bar is not None:
            self.bar.total = max(self.bar.n, self.bar.total - work, 1.0)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self._stop.set()
            self._ticker.join()
            if self.bar.n < self.bar.total:  # less work than estimated (fixed or transferred rates)
                self.bar.total = self.bar.n
                self.bar.refresh()
            self.bar.close()


def _estimated_work(suite: dict, cell, lopt, get_family) -> float:
    """Work of one cell (``cells.run_work`` summed): the reported seeds of every optimizer, and one
    grid per tuned baseline; 0 for a skipped cell."""
    if cell.skip_reason is not None:
        return 0.0
    try:
        task = cells_lib.build_task(cell, get_family)
    except Exception:  # noqa: BLE001 (the cell itself will report the error when it runs)
        return 0.0
    work = suite["seeds"] * cells_lib.run_work(task, cell.num_steps, True, lopt) if suite["learned"] else 0.0
    per_run = cells_lib.run_work(task, cell.num_steps, False)
    for spec in suite["baselines"].values():
        work += per_run * (suite["seeds"] + (suite["tuning"]["num_points"] if spec["learning_rate"] is None
                                             else 0))
    return work


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
    manifest = {"suite": suite_cfg["suite"], "checkpoint": _checkpoint_label(checkpoint),
                "theta_sha256": theta_sha, "fingerprint": fp, **identity}
    store.open_output(out, manifest)

    reference = suites.reference_cell(cells) if suite_cfg["tuning"]["mode"] == "transfer" else None
    order = sorted(cells, key=lambda c: c is not reference)
    records: dict[str, dict] = {}
    run_warnings: list[str] = []
    work = {c.name: _estimated_work(suite_cfg, c, lopt, get_family) for c in cells}
    bar = _Progress(sum(work.values()), progress)
    meter = compilation_cache.CompileMeter()
    start = time.perf_counter()
    ran_now: list[dict] = []
    transferred = None
    try:
        for cell in order:
            record = store.load_cell(out, cell.name, fp)
            done_before = record is not None
            if record is None:
                if cell.skip_reason is not None:
                    record = cells_lib.skipped_record(cell, cell.skip_reason)
                else:
                    before = bar.done
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        record = cells_lib.evaluate_cell(
                            cell, suite_cfg, lopt, theta, get_family=get_family, transferred=transferred,
                            transferred_from=None if reference is None else reference.name, progress=bar)
                    record["warnings"] = [f"{cell.name}: {w.message}" for w in caught
                                          if issubclass(w.category, UserWarning)]
                    for w in caught:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                    bar.drop(work[cell.name] - (bar.done - before))  # its estimate, corrected
                record = report.to_jsonable({**record, "fingerprint": fp})
                store.save_cell(out, record)
            if done_before and record.get("status") == "done":
                bar.advance(work[cell.name], f"{cell.name}: done before")
            elif done_before:
                bar.drop(work[cell.name])
            records[cell.name] = record
            if not done_before:
                ran_now.append(record)
            run_warnings += record.get("warnings", [])
            if cell is reference and record.get("status") == "done":
                transferred = {name: rec["learning_rate"] for name, rec in record["optimizers"].items()
                               if name != "learned"}
    finally:
        bar.close()

    header = {
        "suite": suite_cfg["suite"],
        "checkpoint": _checkpoint_label(checkpoint),
        "theta_sha256": theta_sha,
        "outer_step": metadata.get("outer_step"),
        "checkpoint_metadata": metadata,
        "learned_optimizer": {"kind": lopt.kind, "config": lopt.config()},
        "task": task_record,
        "base_num_steps": base_num_steps,
        "suite_config": suite_cfg,
        "fingerprint": fp,
        "timing": _suite_timing(ran_now, time.perf_counter() - start, meter.seconds),
    }
    results = report.build_results(header=header, cells=[records[c.name] for c in cells],
                                   warnings_list=run_warnings)
    files = report.write_results(out, results)
    files["plots"] = plots.write_plots(out, results) if plots_enabled else []
    return {**results, "out": out, "files": files}


def _suite_timing(records: list, wall_s: float, jax_compile_s: float) -> dict:
    """Wall time, time spent compiling and inner steps per second of this invocation (cells done
    before a resume count neither their steps nor their time).

    ``compile_s`` is the wall time spent compiling (or loading from the cache) the cells' programs;
    ``jax_compile_s`` the sum of all of jax's compile events in the process (every small program
    too; nested traces count twice, so it can exceed the wall time).
    """
    steps = sum(int((r.get("timing") or {}).get("inner_steps", 0)) for r in records)
    compile_s = sum(float((r.get("timing") or {}).get("compile_s", 0.0)) for r in records)
    return {"wall_s": wall_s, "compile_s": compile_s,
            "compile_share": compile_s / wall_s if wall_s > 0 else None,
            "jax_compile_s": jax_compile_s,
            "inner_steps": steps, "inner_steps_per_s": steps / wall_s if wall_s > 0 else None}

