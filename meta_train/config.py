"""The meta-training config: schema, defaults, ``key=value`` overrides and validation.

A config is a YAML mapping read with ``yaml.safe_load`` semantics (nothing in it is executed) with
these sections::

    name: quickstart            # run name; the default run folder is runs/<name>
    seed: 0                     # seeds theta, the task draws and every outer step's key
    run_dir: null               # folder for config.yaml, metrics.jsonl, events, checkpoints, theta
    outer_steps: 300            # number of outer (meta) steps
    checkpoint_every: 50        # outer steps between checkpoints (one is always written at the end)
    log_every: 10               # outer steps between metrics records
    devices: null               # number of devices the population axis is sharded over (null: all)
    stall_steps: 10             # say so when not learning for this many outer steps in a row
    execution:                  # how population members run on each device (metaopt.population)
      member_map: auto          # loop | vmap | auto (loop on CPU, vmap on accelerators)
      member_batch: 1           # members vmapped together within one group of a loop
    task:
      family: mlp_mnist1d       # a name from metaopt.tasks.list_families()
      family_kwargs: {}         # passed to metaopt.tasks.get_family
      configs: [{}]             # one override mapping per static-shape task group
      num_sampled_groups: 0     # instead of configs: draw this many groups with family.sample
    lopt:
      kind: mlp_lopt            # mlp_lopt | lean_lopt | learned_schedule, then that class's fields
    estimator:
      name: pes                 # tbptt | pes | truncated_es | es, then its keyword arguments
    outer:
      optimizer: adamw          # adamw | adam
      learning_rate: 3.0e-3     # peak learning rate, reached after warmup_steps
      warmup_steps: 0
      final_learning_rate: null # cosine decay to this value (null: constant after warm-up)
      weight_decay: 0.0
      clip_norm: 1.0            # global-norm clipping of the meta-gradient (null: none)
      schedule_history: []      # [until_step, outer_steps] per extension: steps before until_step
                                # follow the schedule of that length (written when a run is extended)

Validation never touches the file system beyond reading the config file, so a bad config is
rejected before anything is created or written. Counts are bounded so that they fit the int32 step
counters and the uint32 seed of ``jax.random.key`` (a larger seed would silently collide with a
smaller one), floats must be finite, and a mapping that repeats a key is refused rather than
letting the last one win.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from typing import Any

import yaml

from metaopt.config_yaml import ConfigLoader
from metaopt.population import Execution

# The estimators' names; ``metaopt.meta.trainer.ESTIMATORS`` is the same tuple (a test checks it).
# The trainer is imported only where a config is resolved: importing it imports evosax, which
# starts jax's backend, and a multi-process job must join before that happens.
ESTIMATORS = ("tbptt", "pes", "truncated_es", "es")

__all__ = [
    "ESTIMATORS", "LOPT_KINDS", "OUTER_OPTIMIZERS", "RESUMABLE_FIELDS", "DEFAULTS", "MAX_STEPS",
    "MAX_SEED", "ConfigError", "parse_yaml", "shipped_config_path", "read_config_file",
    "apply_overrides", "resolve", "load_config", "semantic", "trajectory", "schedule_horizon",
    "schedule_difference", "run_difference", "dump", "describe_difference",
]

LOPT_KINDS = ("mlp_lopt", "lean_lopt", "learned_schedule")
OUTER_OPTIMIZERS = ("adamw", "adam")

# Fields that do not change what is computed: a run may be resumed with them changed.
RESUMABLE_FIELDS = ("run_dir", "log_every", "checkpoint_every", "devices", "stall_steps", "execution")

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "run_dir": None,
    "outer_steps": 100,
    "checkpoint_every": 50,
    "log_every": 10,
    "devices": None,
    "stall_steps": 10,
    "execution": {"member_map": "auto", "member_batch": 1},
    "task": {
        "family": None,
        "family_kwargs": {},
        "configs": [{}],
        "num_sampled_groups": 0,
    },
    "lopt": {"kind": "mlp_lopt"},
    "estimator": {"name": "pes"},
    "outer": {
        "optimizer": "adamw",
        "learning_rate": 3e-3,
        "warmup_steps": 0,
        "final_learning_rate": None,
        "weight_decay": 0.0,
        "clip_norm": 1.0,
        "schedule_history": [],
    },
}

# Estimator settings whose type is checked here; the others are passed on as given and checked by
# the estimator itself. Which settings an estimator takes is ``metaopt.meta.estimator_settings``.
_ESTIMATOR_POSITIVE_INTS = ("num_tasks", "num_perturbations", "population_size", "truncation_length",
                            "min_horizon", "max_horizon", "num_steps")
_ESTIMATOR_POSITIVE_FLOATS = ("sigma", "max_meta_loss")

# Largest count of steps (outer steps, inner steps, horizons): step counters are int32.
MAX_STEPS = 2**31 - 1
# Largest seed: ``jax.random.key`` keeps 32 bits of it (2**32 gives the same key as 0).
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A bad config value; the message is one line that starts with the dotted field name."""


def parse_yaml(text: str, where: str) -> Any:
    """Parses YAML text safely; raises ``ConfigError`` naming ``where`` on a syntax error."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None)
        if problem and "duplicate key" in problem:
            raise ConfigError(f"{where}: {problem}; each key may appear once") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML ({first})") from None


def shipped_config_path(name: str) -> str | None:
    """The path of a config shipped in ``metaopt.configs`` (``"quickstart"`` or ``"quickstart.yaml"``)."""
    if os.sep in name or (os.altsep and os.altsep in name):
        return None
    import metaopt.configs

    stem = name[:-5] if name.endswith(".yaml") else name
    for folder in metaopt.configs.__path__:
        candidate = os.path.join(folder, stem + ".yaml")
        if os.path.isfile(candidate):
            return candidate
    return None


def read_config_file(path: str) -> dict:
    """Reads a YAML config file; raises ``ConfigError`` for a missing file or non-mapping content.

    A bare name that is not a file (``quickstart``) names a config shipped with metaopt, so an
    installed package needs no checkout.
    """
    if os.path.isdir(path):
        raise ConfigError(f"--config: {path!r} is a folder; expected a YAML file or a shipped "
                          "config's name")
    if not os.path.isfile(path):
        shipped = shipped_config_path(path)
        if shipped is None:
            raise ConfigError(f"--config: no such file {path!r}")
        path = shipped
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config: {path!r} is not UTF-8 text (byte {e.start}); expected a "
                          "YAML file") from None
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path!r} ({e.strerror})") from None
    raw = parse_yaml(text, path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Applies ``key=value`` overrides (dotted keys for nested fields) to a copy of ``config``.

    Values are parsed as YAML scalars or flow collections (``4``, ``1e-3``, ``null``, ``[1, 2]``,
    ``{width_multiplier: 2}``). ``estimator=pes`` and ``lopt=learned_schedule`` are shorthands for
    ``estimator.name=pes`` and ``lopt.kind=learned_schedule``.

    Raises:
      ConfigError: for an override that is not ``key=value``.
    """
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key=value with a non-empty dotted key")
        value = parse_yaml(text, key) if text.strip() else ""
        parts = key.split(".")
        if parts == ["estimator"] and isinstance(value, str):
            parts = ["estimator", "name"]
        if parts == ["lopt"] and isinstance(value, str):
            parts = ["lopt", "kind"]
        node = config
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[:i + 1])}: is not a section, cannot set {key}")
            node = child
        node[parts[-1]] = value
    return config


# ---------------------------------------------------------------- field checks


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _int(value: Any, field: str, *, minimum: int = 1, maximum: int = MAX_STEPS) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ConfigError(f"{field}: expected {what}, got {value!r}")
    if value > maximum:
        raise ConfigError(f"{field}: expected an int in [{minimum}, {maximum}], got {value!r}")
    return value


def _float(value: Any, field: str, *, positive: bool = False, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}: expected a number, got {_type_name(value)} {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{field}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{field}: expected a positive number, got {value!r}")
    if not positive and value < 0:
        raise ConfigError(f"{field}: expected a number >= 0, got {value!r}")
    return value


def _str(value: Any, field: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field}: expected a non-empty string, got {_type_name(value)} {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{field}: got {value!r}, expected one of {list(choices)}")
    return value


def _mapping(value: Any, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{field}: expected a mapping, got {_type_name(value)} {value!r}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"{field}: keys must be strings, got {k!r}")
    return value


def _no_unknown(section: dict, known, field: str) -> None:
    for key in section:
        if key not in known:
            prefix = f"{field}." if field else ""
            raise ConfigError(f"{prefix}{key}: unknown key; known: {sorted(known)}")


def _plain(value: Any, field: str) -> Any:
    """Checks that a value is plain data (what a checkpoint's JSON metadata can hold), with every
    float finite: no field of any section has a use for NaN or an infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{field}: expected a finite number, got {value!r}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_plain(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{field}.{k}") for k, v in value.items()}
    raise ConfigError(f"{field}: expected plain data, got {_type_name(value)}")


# ---------------------------------------------------------------- the schema


def resolve(raw: dict) -> dict:
    """Fills defaults into ``raw`` and checks every field's name, type and range.

    Checks that need the other parts of metaopt (task family names and fields, learned optimizer
    fields, estimator arguments, device counts) are made in ``metaopt.meta_train.run.build``.

    Returns:
      The resolved config: a plain dict of plain data, with every section present.

    Raises:
      ConfigError: naming the first bad field.
    """
    raw = _mapping(raw, "config")
    _no_unknown(raw, DEFAULTS, "")
    cfg: dict[str, Any] = {}
    cfg["name"] = _str(raw.get("name", DEFAULTS["name"]), "name")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", cfg["name"]):
        raise ConfigError(f"name: expected letters, digits, '_', '-' or '.', got {cfg['name']!r}")
    cfg["seed"] = _int(raw.get("seed", DEFAULTS["seed"]), "seed", minimum=0, maximum=MAX_SEED)
    run_dir = raw.get("run_dir", None)
    cfg["run_dir"] = os.path.join("runs", cfg["name"]) if run_dir is None else _str(run_dir, "run_dir")
    cfg["outer_steps"] = _int(raw.get("outer_steps", DEFAULTS["outer_steps"]), "outer_steps")
    cfg["checkpoint_every"] = _int(raw.get("checkpoint_every", DEFAULTS["checkpoint_every"]),
                                   "checkpoint_every")
    cfg["log_every"] = _int(raw.get("log_every", DEFAULTS["log_every"]), "log_every")
    devices = raw.get("devices", None)
    cfg["devices"] = None if devices is None else _int(devices, "devices")
    cfg["stall_steps"] = _int(raw.get("stall_steps", DEFAULTS["stall_steps"]), "stall_steps")
    execution = _mapping(raw.get("execution"), "execution")
    _no_unknown(execution, DEFAULTS["execution"], "execution")
    try:
        cfg["execution"] = dataclasses.asdict(Execution(**{**DEFAULTS["execution"], **execution}))
    except ValueError as e:
        raise ConfigError(f"execution.{e}") from None

    task = _mapping(raw.get("task"), "task")
    _no_unknown(task, DEFAULTS["task"], "task")
    if task.get("family") is None:
        raise ConfigError("task.family: missing; expected a task family name")
    family_kwargs = _plain(_mapping(task.get("family_kwargs", {}), "task.family_kwargs"),
                           "task.family_kwargs")
    num_sampled = _int(task.get("num_sampled_groups", 0), "task.num_sampled_groups", minimum=0)
    configs = task.get("configs", None)
    if configs is None:
        configs = [] if num_sampled else [{}]
    if not isinstance(configs, list):
        raise ConfigError(f"task.configs: expected a list of mappings, got {_type_name(configs)}")
    if num_sampled and configs:
        raise ConfigError("task.num_sampled_groups: give either task.configs or "
                          "task.num_sampled_groups, not both")
    if not num_sampled and not configs:
        raise ConfigError("task.configs: expected at least one task group")
    cfg["task"] = {
        "family": _str(task["family"], "task.family"),
        "family_kwargs": family_kwargs,
        "configs": [_plain(_mapping(c, f"task.configs[{i}]"), f"task.configs[{i}]")
                    for i, c in enumerate(configs)],
        "num_sampled_groups": num_sampled,
    }

    lopt = _plain(_mapping(raw.get("lopt", DEFAULTS["lopt"]), "lopt"), "lopt")
    lopt = dict(lopt)
    lopt["kind"] = _str(lopt.get("kind", "mlp_lopt"), "lopt.kind", LOPT_KINDS)
    cfg["lopt"] = lopt

    est = dict(_plain(_mapping(raw.get("estimator", DEFAULTS["estimator"]), "estimator"), "estimator"))
    from metaopt.meta.trainer import estimator_settings

    est["name"] = _str(est.get("name", "pes"), "estimator.name", ESTIMATORS)
    allowed = estimator_settings(est["name"])
    for key in est:
        if key != "name" and key not in allowed:
            raise ConfigError(f"estimator.{key}: unknown key for estimator {est['name']!r}; "
                              f"allowed: {['name', *allowed]}")
    for key, value in est.items():
        if key in _ESTIMATOR_POSITIVE_INTS:
            _int(value, f"estimator.{key}")
        elif key in _ESTIMATOR_POSITIVE_FLOATS:
            est[key] = _float(value, f"estimator.{key}", positive=True)
    cfg["estimator"] = est

    outer = _mapping(raw.get("outer", {}), "outer")
    _no_unknown(outer, DEFAULTS["outer"], "outer")
    d = DEFAULTS["outer"]
    cfg["outer"] = {
        "optimizer": _str(outer.get("optimizer", d["optimizer"]), "outer.optimizer", OUTER_OPTIMIZERS),
        "learning_rate": _float(outer.get("learning_rate", d["learning_rate"]), "outer.learning_rate",
                                positive=True),
        "warmup_steps": _int(outer.get("warmup_steps", d["warmup_steps"]), "outer.warmup_steps",
                             minimum=0),
        "final_learning_rate": _float(outer.get("final_learning_rate", d["final_learning_rate"]),
                                      "outer.final_learning_rate", allow_none=True),
        "weight_decay": _float(outer.get("weight_decay", d["weight_decay"]), "outer.weight_decay"),
        "clip_norm": _float(outer.get("clip_norm", d["clip_norm"]), "outer.clip_norm", positive=True,
                            allow_none=True),
        "schedule_history": _schedule_history(outer.get("schedule_history", d["schedule_history"]),
                                              cfg["outer_steps"]),
    }
    if cfg["outer"]["optimizer"] == "adam" and cfg["outer"]["weight_decay"]:
        raise ConfigError("outer.weight_decay: must be 0 with outer.optimizer adam (use adamw)")
    o = cfg["outer"]
    if o["final_learning_rate"] is not None and o["final_learning_rate"] > o["learning_rate"]:
        raise ConfigError(f"outer.final_learning_rate: must be <= outer.learning_rate "
                          f"({o['learning_rate']!r}), got {o['final_learning_rate']!r}")
    return cfg


def _schedule_history(value: Any, outer_steps: int) -> list:
    field = "outer.schedule_history"
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field}: expected a list of [until_step, outer_steps] pairs, got {value!r}")
    out, last_until, last_horizon = [], 0, 0
    for i, entry in enumerate(value):
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in entry)):
            raise ConfigError(f"{field}[{i}]: expected [until_step, outer_steps] (two ints), got {entry!r}")
        until, horizon = entry
        if not last_until < until <= horizon or horizon <= last_horizon or horizon >= outer_steps:
            raise ConfigError(f"{field}[{i}]: expected until_step above the previous one and at most "
                              f"its outer_steps, which rise and stay below outer_steps ({outer_steps}), "
                              f"got {list(entry)!r}")
        out.append([until, horizon])
        last_until, last_horizon = until, horizon
    return out


def load_config(path: str, overrides: list[str] = ()) -> dict:
    """Reads, overrides and resolves a config file (see ``resolve``)."""
    return resolve(apply_overrides(read_config_file(path), list(overrides)))


def semantic(cfg: dict) -> dict:
    """The part of a resolved config that decides the computation (for comparing with a run folder)."""
    return {k: v for k, v in cfg.items() if k not in RESUMABLE_FIELDS}


def trajectory(cfg: dict) -> dict:
    """``semantic(cfg)`` less the run's length (``outer_steps``, ``outer.schedule_history``).

    Two configs with equal trajectories compute the same outer step wherever their outer learning
    rates agree (``schedule_difference`` says where they do not): a run can be extended.
    """
    out = semantic(cfg)
    out.pop("outer_steps", None)
    if isinstance(out.get("outer"), dict):
        out["outer"] = {k: v for k, v in out["outer"].items() if k != "schedule_history"}
    return out


def schedule_horizon(cfg: dict, step: int) -> int:
    """The ``outer_steps`` of the schedule that sets the outer learning rate of outer step ``step``."""
    for until, horizon in cfg["outer"].get("schedule_history") or []:
        if step < until:
            return horizon
    return cfg["outer_steps"]


def schedule_difference(a: dict, b: dict, steps: int) -> str | None:
    """Where two configs of equal ``trajectory`` give outer steps ``[0, steps)`` different learning
    rates, as one line starting ``outer_steps:``; None where they agree.

    The warm-up and the first step after it do not depend on the schedule's length, nor does a
    schedule that stays constant after its warm-up (``final_learning_rate: null``).
    """
    outer = b["outer"]
    if outer["final_learning_rate"] is None or steps <= 0:
        return None
    first = outer["warmup_steps"] + 1
    untils = {u for c in (a, b) for u, _ in c["outer"].get("schedule_history") or []}
    points = sorted({0, steps} | {u for u in untils if 0 < u < steps})
    for start, stop in zip(points[:-1], points[1:]):
        if stop <= first:
            continue
        step = max(start, first)
        ha, hb = schedule_horizon(a, step), schedule_horizon(b, step)
        if ha != hb:
            return (f"outer_steps: outer step {step} took its learning rate from a schedule of {ha} "
                    f"steps, not {hb}")
    return None


def run_difference(recorded: dict, cfg: dict, steps: int) -> str | None:
    """The first difference that would make outer steps ``[0, steps)``, taken under the config
    ``recorded``, compute something else under ``cfg``; None when ``cfg`` continues that run."""
    return describe_difference(trajectory(recorded), trajectory(cfg)) or schedule_difference(
        recorded, cfg, steps)


def dump(cfg: dict) -> str:
    """The config as YAML text (block style, keys in schema order)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def describe_difference(a: Any, b: Any, field: str = "") -> str | None:
    """The first dotted field where two plain configs differ, as ``field: old -> new``; None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{field}.{key}" if field else str(key)
            if key not in a or key not in b:
                return f"{sub}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}"
            diff = describe_difference(a[key], b[key], sub)
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = describe_difference(x, y, f"{field}[{i}]")
            if diff:
                return diff
        return None
    if a != b or type(a) is not type(b):
        return f"{field}: {a!r} -> {b!r}"
    return None
