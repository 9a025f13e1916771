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
import importlib.resources
import math
import os
from typing import Any, Optional

from metaopt.baselines import LR_RANGES
from metaopt.configuration import ConfigError, apply_overrides as _apply, build, parse_yaml, read_yaml, to_plain

__all__ = [
    "AXES", "TUNING_MODES", "SELECT_BY", "SCHEDULES", "DEFAULT_BASELINES", "TaskOverride", "Baseline",
    "Tuning", "Suite", "shipped_suites", "list_suites", "read_suite", "apply_overrides", "load_suite",
    "Cell", "config_fields", "make_cells", "reference_cell",
]

AXES = ("width", "depth", "horizon", "task")
TUNING_MODES = ("per_cell", "transfer")
SELECT_BY = ("train", "eval")
SCHEDULES = ("cosine", "linear")

# The baselines a suite runs unless it names its own; each named baseline's default grid is its
# ``metaopt.baselines.LR_RANGES`` entry.
DEFAULT_BASELINES = ("adamw", "muadam", "lion", "sgdm")


def _positive(value: Any, field: str, integer: bool = False) -> Any:
    """A finite number > 0 (a whole one when ``integer``), as an int or float."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and value > 0)
    if integer:
        ok = ok and float(value) == int(value)
    if not ok:
        raise ConfigError(f"{field}: expected {'a positive integer' if integer else 'a positive number'}, "
                          f"got {value!r}")
    return int(value) if integer else float(value)


def _in_range(value: Any, field: str, low: float, high: float, text: str, low_open=False, high_open=True) -> None:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or (value <= low if low_open else value < low) or (value >= high if high_open else value > high)):
        raise ConfigError(f"{field}: expected {text}, got {value!r}")


def _bool(value: Any, field: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: expected true or false, got {value!r}")


def _set(obj: Any, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _mappings(obj: Any, *names: str) -> None:
    """Fields that hold the user's own mappings (``None`` read as empty)."""
    for name in names:
        value = {} if getattr(obj, name) is None else getattr(obj, name)
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        _set(obj, **{name: value})


@dataclasses.dataclass(frozen=True)
class TaskOverride:
    """Overrides of the checkpoint's task (or, per cell of a task suite, the cell's task)."""

    family: Optional[str] = None
    family_kwargs: Optional[dict] = None
    config: Optional[dict] = None

    def __post_init__(self):
        if self.family is not None and not isinstance(self.family, str):
            raise ConfigError(f"family: expected a task family name, got {self.family!r}")
        _mappings(self, "family_kwargs", "config")


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A hand-designed baseline: tuned over ``grid`` ([lowest, highest] learning rate) or run at a fixed
    ``learning_rate``; ``hyper`` holds further keyword arguments of its ``metaopt.baselines`` factory."""

    grid: Any = None
    learning_rate: Any = None
    hyper: Optional[dict] = None

    def __post_init__(self):
        _mappings(self, "hyper")
        if self.learning_rate is not None:
            _set(self, learning_rate=_positive(self.learning_rate, "learning_rate"), grid=None)
            return
        if not isinstance(self.grid, tuple) or len(self.grid) != 2:
            raise ConfigError(f"grid: expected [lowest, highest] learning rates, got {self.grid!r}")
        lo, hi = (_positive(x, "grid") for x in self.grid)
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
        _set(self, num_points=_positive(self.num_points, "num_points", integer=True))
        if self.num_points < 3:
            raise ConfigError(f"num_points: need at least 3 to tell an interior optimum, got {self.num_points}")
        for name, choices in (("mode", TUNING_MODES), ("select_by", SELECT_BY), ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}")
        _in_range(self.warmup_fraction, "warmup_fraction", 0, 1, "a number in [0, 1)")
        _bool(self.extend, "extend")
        if not isinstance(self.max_extensions, int) or isinstance(self.max_extensions, bool) or self.max_extensions < 0:
            raise ConfigError(f"max_extensions: expected an integer >= 0, got {self.max_extensions!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= 2**32 - 1:
            # jax.random.key keeps 32 bits of a seed
            raise ConfigError(f"seed: expected an integer in [0, {2**32 - 1}], got {self.seed!r}")


def _cells(values: Any) -> dict:
    """The cells of a task suite: name -> TaskOverride of a family (a name alone names the family)."""
    if not isinstance(values, dict) or not values:
        raise ConfigError("values: axis task needs a mapping cell name -> {family, family_kwargs, config}")
    cells = {}
    for name, spec in values.items():
        if spec is None:  # values.NAME=null drops a cell
            continue
        if not all(c.isalnum() or c in "_.-" for c in str(name)):
            raise ConfigError(f"values.{name}: a cell name must be letters, digits, '_', '-' or '.'")
        cell = build(TaskOverride, {"family": spec} if isinstance(spec, str) else spec, f"values.{name}")
        if cell.family is None:
            raise ConfigError(f"values.{name}.family: expected a task family name")
        cells[str(name)] = cell
    if not cells:
        raise ConfigError("values: every cell of the task suite was dropped")
    return cells


def _factors(values: Any, axis: str) -> tuple:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, tuple) or not values:
        raise ConfigError(f"values: axis {axis} needs a non-empty list of factors, got {values!r}")
    factors = [_positive(v, "values", integer=axis in ("width", "depth")) for v in values]
    if axis == "horizon":
        factors = [int(v) if float(v).is_integer() else v for v in factors]
    if len(set(factors)) != len(factors):
        raise ConfigError(f"values: repeated factor in {factors}")
    return tuple(factors)


def _baselines(value: Any) -> dict:
    """Baselines by name: a list of names takes their default grids; ``name: null`` drops one."""
    if isinstance(value, tuple):
        for name in value:
            if name not in LR_RANGES:
                raise ConfigError(f"baselines: unknown baseline {name!r}; known: {sorted(LR_RANGES)}")
        value = {name: {} for name in value}
    if not isinstance(value, dict):
        raise ConfigError(f"baselines: expected a list of names or a mapping, got {value!r}")
    out = {}
    for name, spec in value.items():
        if spec is None:
            continue
        if name not in LR_RANGES:
            raise ConfigError(f"baselines: unknown baseline {name!r}; known: {sorted(LR_RANGES)}")
        if not isinstance(spec, (dict, Baseline)):
            raise ConfigError(f"baselines.{name}: expected a mapping with grid or learning_rate")
        if isinstance(spec, dict):
            spec = build(Baseline, {"grid": tuple(LR_RANGES[name]), **spec}, f"baselines.{name}")
        out[name] = spec
    return out


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
        name = self.suite
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_.-" for c in name):
            raise ConfigError(f"suite: the name must be letters, digits, '_', '-' or '.', got {name!r}")
        if self.axis not in AXES:
            raise ConfigError(f"axis: expected one of {AXES}, got {self.axis!r}")
        values = _cells(self.values) if self.axis == "task" else _factors(self.values, self.axis)
        horizon_factor = _positive(self.horizon_factor, "horizon_factor")
        _set(self, values=values, horizon_factor=int(horizon_factor) if horizon_factor.is_integer() else horizon_factor,
             description=str(self.description), baselines=_baselines(self.baselines))
        if self.base_num_steps is not None:
            _set(self, base_num_steps=_positive(self.base_num_steps, "base_num_steps", integer=True))
        _set(self, seeds=_positive(self.seeds, "seeds", integer=True))
        _bool(self.learned, "learned")
        if not self.learned and not self.baselines:
            raise ConfigError("learned: nothing to evaluate (learned is false and no baselines)")
        if self.tuning.mode == "transfer" and self.axis == "task":
            raise ConfigError("tuning.mode: 'transfer' needs a width, depth or horizon axis (got axis task)")
        if self.tuning.seed < self.seeds:
            raise ConfigError(f"tuning.seed: must differ from the reported seeds 0..{self.seeds - 1}, "
                              f"got {self.tuning.seed}")
        window = _positive(self.final_window, "final_window")
        _set(self, final_window=_positive(window, "final_window", integer=True) if window >= 1 else window,
             curve_points=_positive(self.curve_points, "curve_points", integer=True))
        if self.max_params is not None:
            _set(self, max_params=_positive(self.max_params, "max_params"))
        _in_range(self.memory_fraction, "memory_fraction", 0, 1, "a number in (0, 1]", low_open=True, high_open=False)
        _bool(self.skip_seen_families, "skip_seen_families")
        if not isinstance(self.confidence, float) or not 0 < self.confidence < 1:
            raise ConfigError(f"confidence: expected a number in (0, 1), got {self.confidence!r}")
        _in_range(self.divergence_tolerance, "divergence_tolerance", 0, math.inf, "a number >= 0")
        _set(self, divergence_tolerance=float(self.divergence_tolerance))


def shipped_suites() -> dict[str, Any]:
    """Name -> resource of every suite YAML shipped in ``metaopt.configs``."""
    out = {}
    for entry in importlib.resources.files("metaopt.configs").iterdir():
        if not entry.name.endswith((".yaml", ".yml")):
            continue
        try:
            data = parse_yaml(entry.read_text(), entry.name)
        except ConfigError:
            continue
        if isinstance(data, dict) and data.get("suite"):
            out[os.path.splitext(entry.name)[0]] = entry
    return out


def list_suites() -> list[str]:
    """Names of the shipped suites."""
    return sorted(shipped_suites())


def read_suite(suite: str) -> dict:
    """The raw mapping of ``suite`` (a shipped suite's name or a path to a YAML file).

    Raises:
      ConfigError: unknown suite, unreadable file, or a file that is not a suite.
    """
    if not isinstance(suite, str) or not suite:
        raise ConfigError(f"suite: expected a suite name or a YAML path, got {suite!r}")
    if suite.endswith((".yaml", ".yml")) or os.sep in suite or os.path.exists(suite):
        data = read_yaml(suite, "suite")
    else:
        shipped = shipped_suites()
        if suite not in shipped:
            raise ConfigError(f"suite: unknown suite {suite!r}; shipped: {sorted(shipped)}")
        data = parse_yaml(shipped[suite].read_text(), f"suite: {suite}")
    if not isinstance(data, dict) or not data.get("suite"):
        raise ConfigError(f"suite: {suite} is not an evaluation suite (no top-level 'suite:' name)")
    return data


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
