"""Evaluation suites: the schema as frozen dataclasses, built from YAML and ``key=value`` overrides
by ``metaopt.configuration``, and the cells of a suite.

A suite is a YAML mapping (read with ``yaml.safe_load``) marked by a top-level ``suite:`` name::

    suite: width_transfer       # the suite's name (names the default output folder)
    description: ...
    axis: width                 # width | depth | horizon | task: what varies from cell to cell
    values: [1, 2, 4, 8, 16]    # width or depth factors, horizon factors, or (axis task) a mapping
                                # cell name -> {family, family_kwargs, config} (null drops a cell)
    horizon_factor: 5           # each run is horizon_factor x the meta-training horizon (not for
                                # axis horizon, whose values are the horizon factors)
    task: {family: null, family_kwargs: {}, config: {}}   # overrides of the checkpoint's task
    base_num_steps: null        # the meta-training horizon (null: from the checkpoint's metadata)
    seeds: 3                    # reported seeds per cell and optimizer
    learned: true               # evaluate the checkpoint's learned optimizer
    baselines:                  # name -> {grid: [lo, hi]} (tuned) or {learning_rate: x} (fixed),
      adamw: {grid: [1.0e-4, 1.0], hyper: {}}     # plus hyper: extra keyword arguments; a list of
                                                  # names takes the default grids
                                                  # (metaopt.baselines.LR_RANGES)
    tuning:
      num_points: 9             # log-spaced learning rates per grid
      mode: per_cell            # per_cell | transfer (tune at the reference cell, reuse everywhere)
      select_by: train          # train (final smoothed training loss) | eval (held-out loss)
      schedule: cosine          # cosine | linear, with linear warm-up
      warmup_fraction: 0.05     # warm-up steps as a fraction of the run
      extend: true              # extend the grid past an edge optimum
      max_extensions: 2
      seed: 1000                # the tuning seed (never one of the reported seeds)
    final_window: 0.05          # fraction of the run (or number of steps) averaged for final losses
    curve_points: 200           # points kept of every loss curve
    max_params: null            # cells with larger models are skipped (recorded as skipped)
    memory_fraction: 0.8        # cells whose runs would need more of the free memory are skipped
    skip_seen_families: true    # axis task: skip a family the optimizer was meta-trained on
    confidence: 0.95            # t-interval level
    divergence_tolerance: 0.05  # a seed diverged: NaN, or final loss > initial loss x (1 + this)

A shipped suite is found by name in the ``metaopt.configs`` package, so it works from a checkout and
after ``pip install``; any other path to a YAML file works too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from metaopt import validation as v
from metaopt.baselines import LR_RANGES
from metaopt.configuration import (ConfigError, apply_overrides as _apply, build, find_config, read_yaml,
                                   shipped_configs, to_plain)

__all__ = [
    "AXES", "TUNING_MODES", "SELECT_BY", "SCHEDULES", "DEFAULT_BASELINES", "TaskOverride", "Baseline",
    "Tuning", "Suite", "list_suites", "read_suite", "apply_overrides", "load_suite",
    "Cell", "config_fields", "make_cells", "reference_cell",
]

AXES = ("width", "depth", "horizon", "task")
TUNING_MODES = ("per_cell", "transfer")
SELECT_BY = ("train", "eval")
SCHEDULES = ("cosine", "linear")

# The baselines a suite runs unless it names its own; each named baseline's default grid is its
# ``metaopt.baselines.LR_RANGES`` entry.
DEFAULT_BASELINES = ("adamw", "muadam", "lion", "sgdm")


def _set(obj: Any, **values: Any) -> None:
    """Sets fields of a frozen dataclass to their checked, normalised values."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _whole(x: Any) -> Any:
    """A number as an int when it is whole, else as a float."""
    return int(x) if float(x).is_integer() else float(x)


def _positive(value: Any, field: str) -> float:
    return float(v.check_number(value, field, low=0.0, low_open=True))


@dataclasses.dataclass(frozen=True)
class TaskOverride:
    """Overrides of the checkpoint's task (or, per cell of a task suite, the cell's task)."""

    family: Optional[str] = None
    family_kwargs: Optional[dict] = None
    config: Optional[dict] = None

    def __post_init__(self):
        if self.family is not None:
            v.check_name(self.family, "family", pattern=False)
        _set(self, **{name: v.check_mapping({} if getattr(self, name) is None else getattr(self, name), name)
                      for name in ("family_kwargs", "config")})


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A hand-designed baseline: tuned over ``grid`` ([lowest, highest] learning rate) or run at a fixed
    ``learning_rate``; ``hyper`` holds further keyword arguments of its ``metaopt.baselines`` factory."""

    grid: Any = None
    learning_rate: Any = None
    hyper: Optional[dict] = None

    def __post_init__(self):
        _set(self, hyper=v.check_mapping({} if self.hyper is None else self.hyper, "hyper"))
        if self.learning_rate is not None:
            return _set(self, learning_rate=_positive(self.learning_rate, "learning_rate"), grid=None)
        if not isinstance(self.grid, tuple) or len(self.grid) != 2:
            raise ConfigError(f"grid: expected [lowest, highest] learning rates, got {self.grid!r}")
        lo, hi = (_positive(x, f"grid[{i}]") for i, x in enumerate(self.grid))
        if not lo < hi:
            raise ConfigError(f"grid: lowest must be below highest, got {list(self.grid)!r}")
        _set(self, grid=(lo, hi))


@dataclasses.dataclass(frozen=True)
class Tuning:
    """How baselines' learning rates are tuned (log-spaced grids extended past an edge optimum)."""

    num_points: Any = 9
    mode: str = "per_cell"
    select_by: str = "train"
    schedule: str = "cosine"
    warmup_fraction: Any = 0.05
    extend: bool = True
    max_extensions: Any = 2
    seed: Any = 1000

    def __post_init__(self):
        v.check_int(self.num_points, "num_points", 3)  # three points tell an interior optimum
        for name, choices in (("mode", TUNING_MODES), ("select_by", SELECT_BY), ("schedule", SCHEDULES)):
            v.check_choice(getattr(self, name), name, choices)
        v.check_number(self.warmup_fraction, "warmup_fraction", low=0.0, high=1.0, high_open=True)
        v.check_bool(self.extend, "extend")
        v.check_int(self.max_extensions, "max_extensions", 0)
        v.check_int(self.seed, "seed", 0, v.MAX_SEED)


def _cells(values: Any) -> dict:
    """The cells of a task suite: name -> TaskOverride of a family (a name alone names the family)."""
    if not isinstance(values, dict) or not values:
        raise ConfigError("values: axis task needs a mapping cell name -> {family, family_kwargs, config}")
    cells = {}
    for name, spec in values.items():
        if spec is None:  # values.NAME=null drops a cell
            continue
        v.check_name(name, f"values.{name}")
        cells[name] = build(TaskOverride, {"family": spec} if isinstance(spec, str) else spec, f"values.{name}")
        if cells[name].family is None:
            raise ConfigError(f"values.{name}.family: expected a task family name")
    if not cells:
        raise ConfigError("values: every cell of the task suite was dropped")
    return cells


def _factors(values: Any, axis: str) -> tuple:
    """The factors of a width, depth (whole numbers) or horizon axis."""
    values = values if isinstance(values, tuple) else (values,)
    if not values:
        raise ConfigError(f"values: axis {axis} needs a non-empty list of factors")
    factors = tuple(v.check_int(x, f"values[{i}]") if axis in ("width", "depth") else
                    _whole(_positive(x, f"values[{i}]")) for i, x in enumerate(values))
    if len(set(factors)) != len(factors):
        raise ConfigError(f"values: repeated factor in {list(factors)}")
    return factors


def _baselines(value: Any) -> dict:
    """Baselines by name: a list of names takes their default grids; ``name: null`` drops one."""
    if isinstance(value, tuple):
        value = {name: {} for name in value}
    if not isinstance(value, dict):
        raise ConfigError(f"baselines: expected a list of names or a mapping, got {value!r}")
    for name in value:
        v.check_choice(name, "baselines", sorted(LR_RANGES))
    return {name: build(Baseline, {"grid": tuple(LR_RANGES[name]), **v.check_mapping(spec, f"baselines.{name}")},
                        f"baselines.{name}") for name, spec in value.items() if spec is not None}


@dataclasses.dataclass(frozen=True)
class Suite:
    """An evaluation suite (see the module docstring for every field)."""

    suite: Any = None
    description: Any = ""
    axis: Any = None
    values: Any = None
    horizon_factor: Any = 1
    task: TaskOverride = TaskOverride()
    base_num_steps: Any = None
    seeds: Any = 3
    learned: bool = True
    baselines: Any = DEFAULT_BASELINES
    tuning: Tuning = Tuning()
    final_window: Any = 0.05
    curve_points: Any = 200
    max_params: Any = None
    memory_fraction: Any = 0.8
    skip_seen_families: bool = True
    confidence: Any = 0.95
    divergence_tolerance: Any = 0.05

    def __post_init__(self):
        v.check_name(self.suite, "suite")
        v.check_choice(self.axis, "axis", AXES)
        values = _cells(self.values) if self.axis == "task" else _factors(self.values, self.axis)
        if self.base_num_steps is not None:
            v.check_int(self.base_num_steps, "base_num_steps")
        v.check_int(self.seeds, "seeds")
        v.check_bool(self.learned, "learned")
        baselines = _baselines(self.baselines)
        if not self.learned and not baselines:
            raise ConfigError("learned: nothing to evaluate (learned is false and no baselines)")
        if self.tuning.mode == "transfer" and self.axis == "task":
            raise ConfigError("tuning.mode: 'transfer' needs a width, depth or horizon axis (got axis task)")
        if self.tuning.seed < self.seeds:
            raise ConfigError(f"tuning.seed: must differ from the reported seeds 0..{self.seeds - 1}, "
                              f"got {self.tuning.seed}")
        if _positive(self.final_window, "final_window") >= 1:  # a number of steps, else a fraction
            v.check_int(self.final_window, "final_window")
        v.check_int(self.curve_points, "curve_points")
        v.check_number(self.memory_fraction, "memory_fraction", low=0.0, high=1.0, low_open=True)
        v.check_bool(self.skip_seen_families, "skip_seen_families")
        v.check_number(self.confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True)
        _set(self, values=values, baselines=baselines, description=str(self.description),
             horizon_factor=_whole(_positive(self.horizon_factor, "horizon_factor")),
             max_params=None if self.max_params is None else _positive(self.max_params, "max_params"),
             divergence_tolerance=float(v.check_number(self.divergence_tolerance, "divergence_tolerance", low=0.0)))


def list_suites() -> list[str]:
    """Names of the shipped suites."""
    return sorted(shipped_configs("suite"))


def read_suite(suite: str) -> dict:
    """The raw mapping of ``suite`` (a shipped suite's name or a path to a YAML file).

    Raises:
      ConfigError: unknown suite, unreadable file, or a file that is not a suite.
    """
    raw = read_yaml(find_config(suite, "suite", shipped_configs("suite"), "suite"), "suite")
    if not raw.get("suite"):
        raise ConfigError(f"suite: {suite} is not an evaluation suite (no top-level 'suite:' name)")
    return raw


def apply_overrides(raw: dict, overrides: Any) -> dict:
    """``raw`` with ``key=value`` overrides applied in order (see ``metaopt.configuration``).

    ``baselines`` is kept a mapping (a list of names takes their default grids), so that
    ``baselines=[adamw, lion] baselines.adamw.grid=[1e-3, 1]`` narrows the list, then one grid.
    """
    if isinstance(overrides, dict):
        overrides = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"override: expected a list of key=value strings, got the string {overrides!r}")
    def named(raw):
        if isinstance(raw.get("baselines"), (list, tuple)):
            raw["baselines"] = {name: {} for name in raw["baselines"]}
        return raw

    raw = named(dict(raw))
    for item in overrides or ():
        raw = named(_apply(raw, [item]))
    return raw


def load_suite(suite: str, overrides: Any = None) -> dict:
    """The validated, resolved suite: defaults <- the suite's YAML <- overrides.

    Args:
      suite: a shipped suite's name or a YAML path.
      overrides: ``["key=value", ...]`` or a mapping of dotted keys.

    Returns:
      A plain mapping (JSON-serialisable) with every field present.

    Raises:
      ConfigError: naming the field, for an unknown key or a bad value.
    """
    raw = read_suite(suite)
    raw["baselines"] = raw.get("baselines", list(DEFAULT_BASELINES))
    return to_plain(build(Suite, apply_overrides(raw, overrides)))


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a suite: a task at a horizon, on which every optimizer is run.

    Attributes:
      name: file-safe name (``width_x4``, ``horizon_x10``, ``cnn_digits``).
      value: the factor (or, for axis task, the cell name).
      x: the quantity plotted along the axis (width, depth, number of steps) or ``None``.
      family: task family name; family_kwargs: its arguments.
      config: the family's config (a frozen dataclass).
      num_steps: the inner horizon of every run.
      skip_reason: why the cell is not run (``None``: it is run).
    """

    name: str
    value: Any
    x: Optional[float]
    family: str
    family_kwargs: tuple
    config: Any
    num_steps: int
    skip_reason: Optional[str] = None


def _factor_name(value: float) -> str:
    return f"{value:g}".replace(".", "p")


def config_fields(config: Any) -> dict:
    """The fields of a task config as plain values (a family accepts them in ``make_config``)."""
    if dataclasses.is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return dict(config)


def _width_of(config: Any) -> Optional[float]:
    fields = config_fields(config)
    if "width_multiplier" in fields and "base_width" in fields:
        return float(fields["base_width"]) * float(fields["width_multiplier"])
    if "width" in fields:
        return float(fields["width"])
    if "width_multiplier" in fields:
        return float(fields["width_multiplier"])
    return None


def make_cells(suite: dict, family_name: str, family_kwargs: dict, base_config: Any, base_num_steps: int,
               get_family) -> list[Cell]:
    """The cells of a resolved suite around the meta-training task.

    Args:
      suite: the resolved suite (``load_suite``).
      family_name, family_kwargs, base_config: the meta-training task (after overrides).
      base_num_steps: the meta-training horizon.
      get_family: ``metaopt.tasks.get_family``.

    Raises:
      ValueError: a task field the axis needs is missing, or a cell's config is invalid.
    """
    axis = suite["axis"]
    kwargs_items = tuple(sorted(family_kwargs.items()))
    fields = config_fields(base_config)
    cells = []
    if axis == "task":
        base_steps = max(1, int(round(suite["horizon_factor"] * base_num_steps)))
        for name, spec in suite["values"].items():
            family = get_family(spec["family"], **spec["family_kwargs"])
            config = family.make_config(**spec["config"])
            skip = None
            if suite["skip_seen_families"] and spec["family"] == family_name:
                skip = f"family {spec['family']!r} was seen in meta-training"
            cells.append(Cell(name, name, None, spec["family"], tuple(sorted(spec["family_kwargs"].items())),
                              config, base_steps, skip))
        return cells

    family = get_family(family_name, **family_kwargs)
    for factor in suite["values"]:
        if axis == "horizon":
            num_steps = max(1, int(round(factor * base_num_steps)))
            config = base_config
            x = float(num_steps)
        else:
            num_steps = max(1, int(round(suite["horizon_factor"] * base_num_steps)))
            field = "width_multiplier" if axis == "width" else "depth"
            if field not in fields:
                raise ValueError(f"axis: {axis} transfer needs a task config with a {field!r} field; "
                                 f"{family_name} has {sorted(fields)}")
            base_value = fields[field]
            new_value = base_value * factor
            if isinstance(base_value, int):
                new_value = int(new_value)
            config = family.make_config(**{**fields, field: new_value})
            x = _width_of(config) if axis == "width" else float(new_value)
        cells.append(Cell(f"{axis}_x{_factor_name(factor)}", factor, x, family_name, kwargs_items,
                          config, num_steps, None))
    return cells


def reference_cell(cells: list[Cell]) -> Cell:
    """The cell baselines are tuned on in ``tuning.mode: transfer``: factor 1 if present, else the first."""
    runnable = [c for c in cells if c.skip_reason is None]
    for cell in runnable:
        if cell.value == 1:
            return cell
    if not runnable:
        raise ValueError("values: every cell of the suite is skipped")
    return runnable[0]
