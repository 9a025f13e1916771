"""Evaluation suites: the YAML schema, ``key=value`` overrides, validation and the cells of a suite.

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

import copy
import dataclasses
import importlib.resources
import math
import os
import re
from typing import Any, Optional

import yaml

from metaopt.config_yaml import ConfigLoader

from metaopt.baselines import LR_RANGES

__all__ = [
    "AXES", "TUNING_MODES", "SELECT_BY", "SCHEDULES", "DEFAULT_BASELINES", "DEFAULTS", "shipped_suites",
    "list_suites", "read_suite", "parse_overrides", "apply_overrides", "load_suite", "validate_suite",
    "Cell", "config_fields", "make_cells", "reference_cell",
]

AXES = ("width", "depth", "horizon", "task")
TUNING_MODES = ("per_cell", "transfer")
SELECT_BY = ("train", "eval")
SCHEDULES = ("cosine", "linear")

# The baselines a suite runs unless it names its own; each named baseline's default grid is its
# ``metaopt.baselines.LR_RANGES`` entry.
DEFAULT_BASELINES = ("adamw", "muadam", "lion", "sgdm")

DEFAULTS: dict[str, Any] = {
    "suite": None,
    "description": "",
    "axis": None,
    "values": None,
    "horizon_factor": 1,
    "task": {"family": None, "family_kwargs": {}, "config": {}},
    "base_num_steps": None,
    "seeds": 3,
    "learned": True,
    "baselines": {name: {"grid": list(LR_RANGES[name]), "hyper": {}} for name in DEFAULT_BASELINES},
    "tuning": {
        "num_points": 9,
        "mode": "per_cell",
        "select_by": "train",
        "schedule": "cosine",
        "warmup_fraction": 0.05,
        "extend": True,
        "max_extensions": 2,
        "seed": 1000,
    },
    "final_window": 0.05,
    "curve_points": 200,
    "max_params": None,
    "memory_fraction": 0.8,
    "skip_seen_families": True,
    "confidence": 0.95,
    "divergence_tolerance": 0.05,
}

# Mappings whose keys are the user's own (task fields, family arguments, cells, baselines).
_FREE_FORM = (("task", "config"), ("task", "family_kwargs"), ("values",), ("values", "*"),
              ("values", "*", "config"), ("values", "*", "family_kwargs"), ("baselines",),
              ("baselines", "*"), ("baselines", "*", "hyper"))

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _is_free(path: tuple[str, ...]) -> bool:
    return any(len(p) == len(path) and all(a == "*" or a == b for a, b in zip(p, path))
               for p in _FREE_FORM)


def shipped_suites() -> dict[str, Any]:
    """Name -> resource of every suite YAML shipped in ``metaopt.configs``."""
    out = {}
    root = importlib.resources.files("metaopt.configs")
    for entry in root.iterdir():
        if not entry.name.endswith((".yaml", ".yml")):
            continue
        try:
            data = yaml.safe_load(entry.read_text())
        except yaml.YAMLError:
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
      ValueError: unknown suite, unreadable file, or a file that is not a suite.
    """
    if not isinstance(suite, str) or not suite:
        raise ValueError(f"suite: expected a suite name or a YAML path, got {suite!r}")
    looks_like_path = suite.endswith((".yaml", ".yml")) or os.sep in suite or os.path.isfile(suite)
    if os.path.isdir(suite):
        raise ValueError(f"suite: {suite!r} is a folder; expected a suite YAML file or a shipped suite's name")
    if looks_like_path:
        if not os.path.isfile(suite):
            raise ValueError(f"suite: no such file {suite!r}")
        try:
            with open(suite, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"suite: {suite!r} is not UTF-8 text (byte {e.start}); expected a YAML file") from None
        where = suite
    else:
        shipped = shipped_suites()
        if suite not in shipped:
            raise ValueError(f"suite: unknown suite {suite!r}; shipped: {sorted(shipped)}")
        text = shipped[suite].read_text()
        where = suite
    try:
        data = yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or ""
        if "duplicate key" in problem:
            raise ValueError(f"suite: {where}: {problem}; each key may appear once") from None
        raise ValueError(f"suite: {where} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data.get("suite"):
        raise ValueError(f"suite: {where} is not an evaluation suite (no top-level 'suite:' name)")
    return data


def _merge(base: dict, update: dict, path: tuple[str, ...]) -> dict:
    if not isinstance(base, dict):
        raise ValueError(f"{'.'.join(path)}: is not a mapping; set it whole ({'.'.join(path)}=...)")
    out = copy.deepcopy(base)
    for key, value in update.items():
        sub = path + (str(key),)
        if key not in out and not _is_free(path):
            where = ".".join(sub)
            raise ValueError(f"{where}: unknown key; known: {sorted(out)}")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, sub)
        else:
            out[key] = copy.deepcopy(value)
    return out


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; such strings become floats."""
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def parse_overrides(overrides: Any) -> list[tuple[tuple[str, ...], Any]]:
    """``["a.b=1", ...]`` or a mapping ``{"a.b": 1}`` -> ``[(("a", "b"), 1), ...]``; values parsed as YAML."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        items = list(overrides.items())
    elif isinstance(overrides, str):
        raise ValueError(f"override: expected a list of key=value strings, got the string {overrides!r}")
    else:
        items = []
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"override: expected key=value, got {item!r}")
            key, text = item.split("=", 1)
            try:
                value = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError:
                raise ValueError(f"{key}: cannot parse value {text!r}") from None
            items.append((key, value))
    out = []
    for key, value in items:
        parts = tuple(str(key).strip().split("."))
        if any(not p for p in parts):
            raise ValueError(f"override: bad key {key!r}")
        out.append((parts, _numbers(value)))
    return out


def _nest(path: tuple[str, ...], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def apply_overrides(config: dict, overrides: Any) -> dict:
    """``config`` with ``key=value`` overrides applied in order; unknown keys raise ``ValueError``.

    Setting ``baselines`` whole (a list of names or a mapping) replaces the suite's baselines; every
    other mapping value is merged into what is there.
    """
    for path, value in parse_overrides(overrides):
        if path == ("baselines",):
            config = {**config, "baselines": copy.deepcopy(_baselines_mapping(value))}
        else:
            config = _merge(config, _nest(path, value), ())
    return config


def _baselines_mapping(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        out = {}
        for name in value:
            if name not in LR_RANGES:
                raise ValueError(f"baselines: unknown baseline {name!r}; known: {sorted(LR_RANGES)}")
            out[name] = {"grid": list(LR_RANGES[name]), "hyper": {}}
        return out
    if isinstance(value, dict):
        return value
    raise ValueError(f"baselines: expected a list of names or a mapping, got {value!r}")


def _positive_number(value: Any, field: str, integer: bool = False) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and value > 0)
    if integer:
        ok = ok and float(value) == int(value)
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{field}: expected {kind}, got {value!r}")
    return int(value) if integer else float(value)


def load_suite(suite: str, overrides: Any = None) -> dict:
    """The validated, resolved suite: defaults <- the suite's YAML <- overrides.

    Args:
      suite: a shipped suite's name or a YAML path.
      overrides: ``["key=value", ...]`` or a mapping of dotted keys.

    Returns:
      A plain mapping (JSON-serialisable) with every field present.

    Raises:
      ValueError: naming the field, for an unknown key or a bad value.
    """
    raw = read_suite(suite)
    raw = dict(raw)
    if "baselines" in raw:
        raw["baselines"] = _baselines_mapping(raw["baselines"])
    config = copy.deepcopy(DEFAULTS)
    config["baselines"] = {}
    config = _merge(config, raw, ())
    if "baselines" not in raw:
        config["baselines"] = copy.deepcopy(DEFAULTS["baselines"])
    config = apply_overrides(config, overrides)
    return validate_suite(config)


def validate_suite(config: dict) -> dict:
    """Checks every field of a merged suite; returns it with baselines filled in and types fixed."""
    config = copy.deepcopy(config)
    name = config["suite"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"suite: the name must be letters, digits, '_', '-' or '.', got {name!r}")
    axis = config["axis"]
    if axis not in AXES:
        raise ValueError(f"axis: expected one of {AXES}, got {axis!r}")
    values = config["values"]
    if axis == "task":
        if not isinstance(values, dict) or not values:
            raise ValueError("values: axis task needs a mapping cell name -> {family, family_kwargs, config}")
        cells = {}
        for cell_name, spec in values.items():
            cell_name = str(cell_name)
            if spec is None:  # values.NAME=null drops a cell
                continue
            if not _NAME_RE.match(cell_name):
                raise ValueError(f"values.{cell_name}: a cell name must be letters, digits, '_', '-' or '.'")
            if isinstance(spec, str):
                spec = {"family": spec}
            if not isinstance(spec, dict) or not isinstance(spec.get("family"), str):
                raise ValueError(f"values.{cell_name}.family: expected a task family name")
            unknown = sorted(set(spec) - {"family", "family_kwargs", "config"})
            if unknown:
                raise ValueError(f"values.{cell_name}: unknown key(s) {unknown}; "
                                 "known: family, family_kwargs, config")
            for sub in ("family_kwargs", "config"):
                spec.setdefault(sub, {})
                if spec[sub] is None:
                    spec[sub] = {}
                if not isinstance(spec[sub], dict):
                    raise ValueError(f"values.{cell_name}.{sub}: expected a mapping")
            cells[cell_name] = spec
        if not cells:
            raise ValueError("values: every cell of the task suite was dropped")
        config["values"] = cells
    else:
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"values: axis {axis} needs a non-empty list of factors, got {values!r}")
        integer = axis in ("width", "depth")
        factors = [_positive_number(v, "values", integer=integer) for v in values]
        if axis == "horizon":
            factors = [int(v) if float(v).is_integer() else v for v in factors]
        if len(set(factors)) != len(factors):
            raise ValueError(f"values: repeated factor in {factors}")
        config["values"] = factors
    config["horizon_factor"] = _positive_number(config["horizon_factor"], "horizon_factor")
    if float(config["horizon_factor"]).is_integer():
        config["horizon_factor"] = int(config["horizon_factor"])

    task = config["task"]
    if not isinstance(task, dict):
        raise ValueError("task: expected a mapping with family, family_kwargs, config")
    if task["family"] is not None and not isinstance(task["family"], str):
        raise ValueError(f"task.family: expected a family name, got {task['family']!r}")
    for sub in ("family_kwargs", "config"):
        if task[sub] is None:
            task[sub] = {}
        if not isinstance(task[sub], dict):
            raise ValueError(f"task.{sub}: expected a mapping, got {task[sub]!r}")
    if config["base_num_steps"] is not None:
        config["base_num_steps"] = _positive_number(config["base_num_steps"], "base_num_steps", integer=True)
    config["seeds"] = _positive_number(config["seeds"], "seeds", integer=True)
    if not isinstance(config["learned"], bool):
        raise ValueError(f"learned: expected true or false, got {config['learned']!r}")

    baselines = _baselines_mapping(config["baselines"])
    resolved = {}
    for bname, spec in baselines.items():
        if spec is None:
            continue
        if bname not in LR_RANGES:
            raise ValueError(f"baselines: unknown baseline {bname!r}; known: {sorted(LR_RANGES)}")
        if not isinstance(spec, dict):
            raise ValueError(f"baselines.{bname}: expected a mapping with grid or learning_rate")
        unknown = sorted(set(spec) - {"grid", "learning_rate", "hyper"})
        if unknown:
            raise ValueError(f"baselines.{bname}: unknown key(s) {unknown}; "
                             "known: grid, learning_rate, hyper")
        out = {"grid": None, "learning_rate": None, "hyper": dict(spec.get("hyper") or {})}
        if spec.get("learning_rate") is not None:
            out["learning_rate"] = _positive_number(spec["learning_rate"], f"baselines.{bname}.learning_rate")
        else:
            grid = spec.get("grid", list(LR_RANGES[bname]))
            if (not isinstance(grid, (list, tuple)) or len(grid) != 2):
                raise ValueError(f"baselines.{bname}.grid: expected [lowest, highest] learning rates, "
                                 f"got {grid!r}")
            lo = _positive_number(grid[0], f"baselines.{bname}.grid")
            hi = _positive_number(grid[1], f"baselines.{bname}.grid")
            if not lo < hi:
                raise ValueError(f"baselines.{bname}.grid: lowest must be below highest, got {grid!r}")
            out["grid"] = [lo, hi]
        resolved[bname] = out
    config["baselines"] = resolved
    if not config["learned"] and not resolved:
        raise ValueError("learned: nothing to evaluate (learned is false and no baselines)")

    tuning = config["tuning"]
    tuning["num_points"] = _positive_number(tuning["num_points"], "tuning.num_points", integer=True)
    if tuning["num_points"] < 3:
        raise ValueError("tuning.num_points: need at least 3 to tell an interior optimum, "
                         f"got {tuning['num_points']}")
    if tuning["mode"] not in TUNING_MODES:
        raise ValueError(f"tuning.mode: expected one of {TUNING_MODES}, got {tuning['mode']!r}")
    if tuning["mode"] == "transfer" and axis == "task":
        raise ValueError("tuning.mode: 'transfer' needs a width, depth or horizon axis (got axis task)")
    if tuning["select_by"] not in SELECT_BY:
        raise ValueError(f"tuning.select_by: expected one of {SELECT_BY}, got {tuning['select_by']!r}")
    if tuning["schedule"] not in SCHEDULES:
        raise ValueError(f"tuning.schedule: expected one of {SCHEDULES}, got {tuning['schedule']!r}")
    wf = tuning["warmup_fraction"]  # NaN fails the range test below
    if not isinstance(wf, (int, float)) or isinstance(wf, bool) or not 0 <= wf < 1:
        raise ValueError(f"tuning.warmup_fraction: expected a number in [0, 1), got {wf!r}")
    if not isinstance(tuning["extend"], bool):
        raise ValueError(f"tuning.extend: expected true or false, got {tuning['extend']!r}")
    me = tuning["max_extensions"]
    if not isinstance(me, int) or isinstance(me, bool) or me < 0:
        raise ValueError(f"tuning.max_extensions: expected an integer >= 0, got {me!r}")
    if (not isinstance(tuning["seed"], int) or isinstance(tuning["seed"], bool)
            or not 0 <= tuning["seed"] <= 2**32 - 1):  # jax.random.key keeps 32 bits of a seed
        raise ValueError(f"tuning.seed: expected an integer in [0, {2**32 - 1}], got {tuning['seed']!r}")
    if tuning["seed"] < config["seeds"]:
        raise ValueError(f"tuning.seed: must differ from the reported seeds 0..{config['seeds'] - 1}, "
                         f"got {tuning['seed']}")

    config["final_window"] = _positive_number(config["final_window"], "final_window")
    if config["final_window"] >= 1:
        config["final_window"] = _positive_number(config["final_window"], "final_window", integer=True)
    config["curve_points"] = _positive_number(config["curve_points"], "curve_points", integer=True)
    if config["max_params"] is not None:
        config["max_params"] = _positive_number(config["max_params"], "max_params")
    mf = config["memory_fraction"]
    if not isinstance(mf, (int, float)) or isinstance(mf, bool) or not 0 < mf <= 1:
        raise ValueError(f"memory_fraction: expected a number in (0, 1], got {mf!r}")
    if not isinstance(config["skip_seen_families"], bool):
        raise ValueError(f"skip_seen_families: expected true or false, got {config['skip_seen_families']!r}")
    conf = config["confidence"]
    if not isinstance(conf, float) or not 0 < conf < 1:
        raise ValueError(f"confidence: expected a number in (0, 1), got {conf!r}")
    tol = config["divergence_tolerance"]
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 <= tol < math.inf:
        raise ValueError(f"divergence_tolerance: expected a number >= 0, got {tol!r}")
    config["divergence_tolerance"] = float(tol)
    if not isinstance(config["description"], str):
        config["description"] = str(config["description"])
    return config


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
