"""The meta-training config: frozen dataclasses built from YAML and ``key=value`` overrides.

A config file holds these sections (``--print-config`` prints one resolved)::

    name: quickstart            # run name; the default run folder is runs/<name>
    seed: 0                     # seeds theta, the task draws and every outer step's key
    run_dir: null               # folder for config.yaml, metrics.jsonl, events, checkpoints, theta
    outer_steps: 300            # number of outer (meta) steps (0: theta is the initial theta)
    checkpoint_every: 50        # outer steps between checkpoints (one is always written at the end)
    log_every: 10               # outer steps between metrics records
    devices: null               # number of devices the population axis is sharded over (null: all)
    stall_steps: 10             # say so when not learning for this many outer steps in a row
    init_theta: null            # start from these weights (a shipped name, run or saved folder)
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
      name: pes                 # tbptt | pes | truncated_es | es, then its settings
    outer:
      optimizer: adamw          # adamw | adam
      learning_rate: 3.0e-3     # peak learning rate, reached after warmup_steps
      warmup_steps: 0
      final_learning_rate: null # cosine decay to this value (null: constant after warm-up)
      weight_decay: 0.0
      clip_norm: 1.0            # global-norm clipping of the meta-gradient (null: none)
      schedule_history: []      # [until_step, outer_steps] per extension: steps before until_step
                                # follow the schedule of that length (written when a run is extended)

Each section is a dataclass that checks its own fields (the learned optimizer's and the estimator's
are their own classes, ``metaopt.MLPLOpt``, ``metaopt.meta.TruncationConfig`` ...), built by
``metaopt.configuration``. Resolving never touches the file system beyond reading the config file,
so a bad config is rejected before anything is created or written. Counts fit the int32 step
counters and the seed the uint32 of ``jax.random.key`` (a larger seed would silently collide with a
smaller one). The resolved config is plain data with every setting spelled out, the form written to
a run folder's ``config.yaml`` and compared on resume.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from metaopt import validation as v
from metaopt.configuration import (ConfigError, apply_overrides as _apply, build, build_tagged, describe_difference,
                                   find_config, read_yaml, shipped_configs, to_plain)
from metaopt.population import Execution

# The estimators' names; ``metaopt.meta.trainer.ESTIMATORS`` is the same tuple (a test checks it).
# The trainer is imported only where a config is resolved: importing it imports evosax, which
# starts jax's backend, and a multi-process job must join before that happens.
ESTIMATORS = ("tbptt", "pes", "truncated_es", "es")

__all__ = [
    "ESTIMATORS", "LOPT_KINDS", "OUTER_OPTIMIZERS", "RESUMABLE_FIELDS", "MAX_STEPS", "ConfigError",
    "TaskSection", "OuterSection", "RunConfig", "read_config_file", "apply_overrides", "resolve", "load_config",
    "semantic", "trajectory", "schedule_horizon", "schedule_difference", "run_difference", "resolve_recorded",
]

LOPT_KINDS = ("mlp_lopt", "lean_lopt", "learned_schedule")
OUTER_OPTIMIZERS = ("adamw", "adam")

# Fields that do not change what is computed: a run may be resumed with them changed.
RESUMABLE_FIELDS = ("run_dir", "log_every", "checkpoint_every", "devices", "stall_steps", "execution")

MAX_STEPS = v.MAX_INT32


@dataclasses.dataclass(frozen=True)
class TaskSection:
    """The task groups: ``configs`` (one mapping of the family's fields per group) or
    ``num_sampled_groups`` drawn with ``family.sample``; a group's mapping may name another family."""

    family: Optional[str] = None
    family_kwargs: dict = dataclasses.field(default_factory=dict)
    configs: Optional[tuple] = None
    num_sampled_groups: int = 0

    def __post_init__(self):
        if self.family is None:
            raise ConfigError("family: missing; expected a task family name")
        v.check_name(self.family, "family", pattern=False)
        v.check_int(self.num_sampled_groups, "num_sampled_groups", 0, MAX_STEPS)
        v.check_mapping(self.family_kwargs, "family_kwargs")
        configs = self.configs
        if configs is None:
            configs = () if self.num_sampled_groups else ({},)
        if not isinstance(configs, tuple):
            raise ConfigError(f"configs: expected a list of mappings, got {configs!r}")
        for i, c in enumerate(configs):
            v.check_mapping(c, f"configs[{i}]")
        if self.num_sampled_groups and configs:
            raise ConfigError("num_sampled_groups: give either task.configs or task.num_sampled_groups, not both")
        if not self.num_sampled_groups and not configs:
            raise ConfigError("configs: expected at least one task group")
        object.__setattr__(self, "configs", configs)


@dataclasses.dataclass(frozen=True)
class OuterSection:
    """The outer optimizer of the gradient estimators (see ``run.make_outer_optimizer``)."""

    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    warmup_steps: int = 0
    final_learning_rate: Optional[float] = None
    weight_decay: float = 0.0
    clip_norm: Optional[float] = 1.0
    schedule_history: tuple = ()

    def __post_init__(self):
        v.check_choice(self.optimizer, "optimizer", OUTER_OPTIMIZERS)
        v.check_number(self.learning_rate, "learning_rate", low=0.0, low_open=True)
        v.check_int(self.warmup_steps, "warmup_steps", 0, MAX_STEPS)
        v.check_number(self.final_learning_rate, "final_learning_rate", low=0.0, allow_none=True)
        v.check_number(self.weight_decay, "weight_decay", low=0.0)
        v.check_number(self.clip_norm, "clip_norm", low=0.0, low_open=True, allow_none=True)
        if self.optimizer == "adam" and self.weight_decay:
            raise ConfigError("weight_decay: must be 0 with outer.optimizer adam (use adamw)")
        if self.final_learning_rate is not None and self.final_learning_rate > self.learning_rate:
            raise ConfigError(f"final_learning_rate: must be <= outer.learning_rate ({self.learning_rate!r}), "
                              f"got {self.final_learning_rate!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole meta-training config (see the module docstring). ``lopt`` and ``estimator`` hold the
    settings of the classes their ``kind`` and ``name`` choose, every one spelled out."""

    name: str = "run"
    seed: int = 0
    run_dir: Optional[str] = None
    outer_steps: int = 100
    checkpoint_every: int = 50
    log_every: int = 10
    devices: Optional[int] = None
    stall_steps: int = 10
    init_theta: Optional[str] = None
    execution: Execution = Execution()
    task: Optional[TaskSection] = None
    lopt: dict = dataclasses.field(default_factory=lambda: {"kind": "mlp_lopt"})
    estimator: dict = dataclasses.field(default_factory=lambda: {"name": "pes"})
    outer: OuterSection = OuterSection()

    def __post_init__(self):
        v.check_name(self.name, "name")
        v.check_int(self.seed, "seed", 0, v.MAX_SEED)
        run_dir = os.path.join("runs", self.name) if self.run_dir is None else self.run_dir
        v.check_name(run_dir, "run_dir", pattern=False)
        object.__setattr__(self, "run_dir", run_dir)
        v.check_int(self.outer_steps, "outer_steps", 0, MAX_STEPS)
        for name in ("checkpoint_every", "log_every", "stall_steps"):
            v.check_int(getattr(self, name), name, 1, MAX_STEPS)
        if self.devices is not None:
            v.check_int(self.devices, "devices", 1, MAX_STEPS)
        if self.init_theta is not None:
            v.check_name(self.init_theta, "init_theta", pattern=False)
        if self.task is None:
            build(TaskSection, {}, "task")
        _check_history(self.outer.schedule_history, self.outer_steps)
        object.__setattr__(self, "lopt", _spelled_out(self.lopt, "lopt"))
        object.__setattr__(self, "estimator", _spelled_out(self.estimator, "estimator"))


def _check_history(value: Any, outer_steps: int) -> None:
    field = "outer.schedule_history"
    if not isinstance(value, tuple):
        raise ConfigError(f"{field}: expected a list of [until_step, outer_steps] pairs, got {value!r}")
    last_until, last_horizon = 0, 0
    for i, entry in enumerate(value):
        if (not isinstance(entry, tuple) or len(entry) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in entry)):
            raise ConfigError(f"{field}[{i}]: expected [until_step, outer_steps] (two ints), got {entry!r}")
        until, horizon = entry
        if not last_until < until <= horizon or horizon <= last_horizon or horizon >= outer_steps:
            raise ConfigError(f"{field}[{i}]: expected until_step above the previous one and at most "
                              f"its outer_steps, which rise and stay below outer_steps ({outer_steps}), "
                              f"got {list(entry)!r}")
        last_until, last_horizon = until, horizon


def _spelled_out(section: Any, field: str) -> dict:
    """The ``lopt`` or ``estimator`` section with every setting of its class, checked by the class."""
    if field == "lopt":
        import metaopt  # noqa: F401 (registers the learned optimizer kinds)
        from metaopt.learned_optimizer import lookup

        def lopt_class(kind):
            try:
                return lookup(kind)
            except ValueError:
                raise ConfigError(f"lopt.kind: {kind!r} is not available in this installation") from None

        kind, lopt = build_tagged(lopt_class, section, "lopt", "kind", "mlp_lopt", LOPT_KINDS)
        return {"kind": kind, **to_plain(lopt.config())}
    from metaopt.meta.trainer import estimator_config

    name, settings = build_tagged(estimator_config, section, "estimator", "name", "pes", ESTIMATORS)
    return {"name": name, **to_plain(settings)}


def read_config_file(path: str) -> dict:
    """Reads a YAML config file, or the shipped config of that name (``quickstart``)."""
    return read_yaml(find_config(path, "--config", shipped_configs()), "--config")


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Applies ``key=value`` overrides to a copy of ``config`` (see ``metaopt.configuration``);
    ``estimator=pes`` and ``lopt=learned_schedule`` set the section's name and kind."""
    return _apply(config, overrides, {"estimator": "estimator.name", "lopt": "lopt.kind"})


def resolve(raw: dict) -> dict:
    """The resolved config of ``raw``: every field checked, defaults filled in, as plain data.

    Checks that need the task family or the devices are made in ``metaopt.meta_train.run.build``.

    Raises:
      ConfigError: naming the first bad field.
    """
    return to_plain(build(RunConfig, raw))


def resolve_recorded(recorded: dict) -> dict:
    """A run's recorded config resolved by today's schema, so that a field added since the run was
    made reads as its default (chosen to compute what runs computed before the field existed); as
    recorded when it no longer resolves (a comparison then names the field)."""
    try:
        return resolve(recorded)
    except ConfigError:
        return recorded


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
    recorded = resolve_recorded(recorded)
    return describe_difference(trajectory(recorded), trajectory(cfg)) or schedule_difference(
        recorded, cfg, steps)
