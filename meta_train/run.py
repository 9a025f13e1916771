"""The meta-training outer loop: build everything from a resolved config, then step, log and checkpoint.

``build`` turns a resolved config into the task groups, the learned optimizer, the outer optimizer,
the device mesh and the meta-trainer, raising ``ValueError`` naming the field for anything wrong
(including a run whose state cannot fit in memory), and writes nothing. ``plan_run_dir`` decides
(again without writing) whether the run starts fresh or resumes, and refuses a folder holding
checkpoints of another config. ``run`` executes the plan while holding the folder's lock
(``metaopt.meta_train.lock``): every outer step t visits task group ``t % num_groups`` with key
``fold_in(step_key, t)``, so a resumed run repeats exactly what an uninterrupted one does. On resume
it checks ``RUN_DIR/theta`` against the checkpoint it resumed from and rewrites it when it is
missing, corrupt or stale, and it says so when the meta-training stops learning (``stall_steps``
outer steps in a row with a meta-gradient of exactly zero, or every inner run at the loss ceiling).

References:
  Therien et al., "µLO: Compute-Efficient Meta-Generalization of Learned Optimizers", ICLR 2026
  (the meta-training recipe: PES, AdamW with warm-up and cosine decay, gradient clipping).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.meta_train import checkpoints, faults, memory, sharding
from metaopt.meta_train.config import (MAX_STEPS, ConfigError, resolve_recorded, run_difference,
                                       schedule_difference, semantic, trajectory)
from metaopt.meta_train.lock import LOCK_FILE, RunLock
from metaopt.meta_train.metrics_log import MetricsLogger, progress_bar
from metaopt.configuration import build as build_dataclass, describe_difference, dump, parse_yaml, to_plain
from metaopt.population import Execution
from metaopt.schedules import make_schedule

__all__ = [
    "CONFIG_FILE", "THETA_DIR", "make_outer_schedule", "make_outer_optimizer",
    "Built", "build", "Plan", "plan_run_dir", "theta_metadata", "save_checkpoint", "RunResult",
    "make_step_fn", "run",
]

CONFIG_FILE = "config.yaml"
THETA_DIR = "theta"

# ---------------------------------------------------------------- building


def make_outer_schedule(outer: dict, outer_steps: int) -> optax.Schedule:
    """The outer learning rate: linear warm-up to the peak, then cosine decay (or constant).

    ``metaopt.schedules.make_schedule`` with the warm-up starting at ``peak / warmup_steps`` (not 0),
    so the first outer step is not wasted; the cosine runs from the end of the warm-up to
    ``outer_steps`` and ends at ``final_learning_rate`` (``None``: constant after the warm-up).
    A run that was extended keeps, for the steps it had taken, the schedule of the length it had
    then: each ``[until_step, length]`` of ``outer["schedule_history"]`` sets the steps before
    ``until_step`` (see ``plan_run_dir``).
    """
    peak = float(outer["learning_rate"])
    warmup = int(outer["warmup_steps"])
    final = outer["final_learning_rate"]

    def of_length(length: int) -> optax.Schedule:
        # A run shorter than its warm-up (a short trial) takes warm-up steps only.
        length = max(length, warmup)
        if final is None:
            return make_schedule("constant", peak, length, warmup, warmup_from_zero=False)
        return make_schedule("cosine", peak, length, warmup, final_fraction=float(final) / peak,
                             warmup_from_zero=False)

    current = of_length(outer_steps)
    history = [(int(until), of_length(int(length))) for until, length in outer.get("schedule_history") or []]
    if not history:
        return current

    def schedule(count):
        value = current(count)
        for until, earlier in reversed(history):
            value = jnp.where(count < until, earlier(count), value)
        return value

    return schedule


def make_outer_optimizer(outer: dict, outer_steps: int) -> optax.GradientTransformation:
    """The optax outer optimizer of a config's ``outer`` section.

    NaNs in the meta-gradient are zeroed first (one diverged inner run must not poison theta), then
    the gradient is clipped by global norm, then AdamW (or Adam) with the warm-up/cosine schedule.
    """
    schedule = make_outer_schedule(outer, outer_steps)
    parts = [optax.zero_nans()]
    if outer["clip_norm"] is not None:
        parts.append(optax.clip_by_global_norm(outer["clip_norm"]))
    if outer["optimizer"] == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=outer["weight_decay"]))
    else:
        parts.append(optax.adam(schedule))
    return optax.chain(*parts)


def _config_fields(config: Any) -> dict:
    """A task config as plain data accepted back by ``family.make_config``."""
    return to_plain(config if dataclasses.is_dataclass(config) else dict(config))


def _build_lopt(spec: dict):
    """The learned optimizer of a resolved ``lopt`` section."""
    from metaopt.learned_optimizer import lookup

    return build_dataclass(lookup(spec["kind"]), {k: v for k, v in spec.items() if k != "kind"}, "lopt")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _build_task_groups(task_cfg: dict, seed: int):
    """The run's task family and its task groups: one config per group, from the run's family or,
    where a group's mapping names one (``family: cnn_digits``), from that family, so a run can
    meta-train on MLPs, CNNs and transformers alike."""
    import metaopt.tasks as tasks_pkg

    known = list(tasks_pkg.list_families())
    families = {}

    def family_of(name: str, field: str):
        if name not in known:
            raise ConfigError(f"{field}: unknown family {name!r}; known: {known}")
        if name not in families:
            try:
                families[name] = tasks_pkg.get_family(name, **task_cfg["family_kwargs"])
            except (ValueError, TypeError) as e:
                raise ConfigError(f"task.family_kwargs: {_first_line(e)}") from None
        return families[name]

    family = family_of(task_cfg["family"], "task.family")
    configs, group_families = [], []
    if task_cfg["num_sampled_groups"]:
        sample_key = jax.random.fold_in(jax.random.key(seed), 3)
        for i in range(task_cfg["num_sampled_groups"]):
            configs.append(family.sample(jax.random.fold_in(sample_key, i)))
            group_families.append(family)
    else:
        for i, override in enumerate(task_cfg["configs"]):
            override = dict(override)
            group_family = family
            if "family" in override:
                group_family = family_of(override.pop("family"), f"task.configs[{i}].family")
            try:
                configs.append(group_family.make_config(**override))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"task.configs[{i}].{_first_line(e)}") from None
            group_families.append(group_family)
    tasks = []
    for i, (config, group_family) in enumerate(zip(configs, group_families)):
        try:
            tasks.append(group_family.task(config))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"task.configs[{i}].{_first_line(e)}") from None
    return family, configs, tasks


class Built(NamedTuple):
    """Everything a run needs, built from a resolved config."""

    cfg: dict
    family: Any
    task_configs: list
    tasks: list
    lopt: Any
    mesh: Any
    outer_optimizer: Any
    trainer: Any
    theta: Any  # the initial theta: fresh, or from ``init_theta``


def build(cfg: dict) -> Built:
    """Builds the task groups, learned optimizer, outer optimizer, mesh and meta-trainer.

    Writes nothing. Raises ``ConfigError`` (a ``ValueError``) naming the field for any bad value,
    including values only the task family, the learned optimizer or the estimator can judge.
    """
    from metaopt.meta import make_meta_trainer

    family, task_configs, tasks = _build_task_groups(cfg["task"], cfg["seed"])
    lopt = _build_lopt(cfg["lopt"])
    try:
        mesh = sharding.make_mesh(cfg["devices"])
    except ValueError as e:
        raise ConfigError(_first_line(e)) from None
    outer_optimizer = make_outer_optimizer(cfg["outer"], cfg["outer_steps"])
    # The backend's choice for "auto", spelled out in the resolved config.
    execution = Execution(**cfg["execution"]).resolved()
    cfg = dict(cfg, execution=dataclasses.asdict(execution))
    est = cfg["estimator"]
    kwargs = {k: v for k, v in est.items() if k != "name"}
    try:
        trainer = make_meta_trainer(est["name"], lopt, tasks, outer_optimizer=outer_optimizer,
                                    outer_learning_rate=make_outer_schedule(cfg["outer"], cfg["outer_steps"]),
                                    mesh=mesh, execution=execution, **kwargs)
    except TypeError as e:
        raise ConfigError(f"estimator: {_first_line(e)}") from None
    except ValueError as e:
        message = _first_line(e)
        prefix = "" if message.startswith(("estimator", "devices")) else "estimator."
        raise ConfigError(f"{prefix}{message}") from None
    for what, size in trainer.estimator.population_sizes.items():
        n = mesh.devices.size
        if size % n:
            raise ConfigError(f"estimator: the {what} {size} must be a multiple of the "
                              f"number of devices {n} (change the population or set devices=)")
    _check_step_counts(trainer)
    _check_memory(lopt, trainer, mesh)
    theta = initial_theta(lopt, cfg["seed"], cfg["init_theta"])
    return Built(cfg, family, task_configs, tasks, lopt, mesh, outer_optimizer, trainer, theta)


def initial_theta(lopt: Any, seed: int, init_theta: str | None) -> Any:
    """The theta a run starts from: ``lopt.init``, with the weights of ``init_theta`` (a shipped
    name, a run folder or a saved optimizer) in place of every entry they have
    (``LearnedOptimizer.warm_start``).

    Raises:
      ConfigError: ``init_theta`` unreadable or not this optimizer's weights, naming why.
    """
    import metaopt

    theta = lopt.init(jax.random.fold_in(jax.random.key(seed), 0))
    if init_theta is None:
        return theta
    try:
        source, weights = metaopt.load(init_theta)
    except ValueError as e:  # CheckpointError among them
        raise ConfigError(f"init_theta: {init_theta!r}: {_first_line(e)}") from None
    try:
        return lopt.warm_start(theta, source, weights)
    except ValueError as e:
        raise ConfigError(f"init_theta: {_first_line(e)}") from None


def _check_step_counts(trainer: Any) -> None:
    """Refuses populations whose inner steps per outer step overflow the int32 step counters."""
    per_step, length_field = trainer.estimator.inner_steps_per_step
    if per_step > MAX_STEPS:
        raise ConfigError(f"estimator.{length_field}: the population takes {per_step} inner steps per "
                          f"outer step, more than the {MAX_STEPS} a step counter holds; shorten it or "
                          "shrink the population")


def _check_memory(lopt: Any, trainer: Any, mesh: Any) -> None:
    """Refuses a run whose meta-training state alone cannot fit in the devices' memory."""
    available = memory.available_bytes(mesh)
    if available is None:
        return
    try:
        theta_bytes, state_bytes = memory.estimate(lopt, trainer)
    except (ValueError, TypeError, OverflowError) as e:
        raise ConfigError(f"lopt: cannot size the meta-training state ({_first_line(e)})") from None
    need = memory.STEP_FACTOR * state_bytes
    if need <= available:
        return
    sizes = ", ".join(f"{name}={getattr(lopt, name)}" for name in ("hidden_size", "num_hidden_layers")
                      if hasattr(lopt, name))
    if memory.STEP_FACTOR * theta_bytes > available:
        raise ConfigError(f"lopt: theta alone is {memory.human(theta_bytes)} ({sizes}); a run needs at "
                          f"least {memory.human(need)} and {memory.human(available)} is available; "
                          "make the learned optimizer smaller")
    raise ConfigError(f"estimator: the meta-training state is {memory.human(state_bytes)} (theta "
                      f"{memory.human(theta_bytes)}, the rest the population's inner runs); a run needs "
                      f"at least {memory.human(need)} and {memory.human(available)} is available; "
                      "shrink the population (num_tasks, num_perturbations, population_size) or the task")


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# ---------------------------------------------------------------- the run folder


class Plan(NamedTuple):
    """What to do with the run folder: ``"new"``, ``"resume"``, ``"extend"`` (resume a run whose
    ``outer_steps`` was raised) or ``"overwrite"``; ``cfg`` is the config the run must use (``None``:
    the one given), which for an extended run carries its schedule history."""

    action: str
    run_dir: str
    cfg: dict | None = None


def _read_run_config(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = parse_yaml(f.read(), path)
    return saved if isinstance(saved, dict) else None


def plan_run_dir(cfg: dict, *, resume: bool = False, fresh: bool = False) -> Plan:
    """Decides how to use ``cfg["run_dir"]`` without writing anything.

    - no folder (or an empty one): a new run (``--resume`` then is an error);
    - a run folder of the same config: resume from its newest valid checkpoint (the default);
    - a run folder of the same config but a larger ``outer_steps``: extend it, resuming where it
      stopped; the steps it had taken keep the outer learning rate of the length they were taken
      under (recorded in ``outer.schedule_history``), the steps after follow the new length. A
      smaller ``outer_steps`` is refused;
    - a run folder of a different config: an error unless ``fresh`` (start over, deleting it);
    - a folder that is not a run folder: always an error (nothing is deleted that we did not write).

    Raises:
      ConfigError: naming ``run_dir`` (or ``--resume``) and the reason.
    """
    run_dir = cfg["run_dir"]
    if resume and fresh:
        raise ConfigError("--resume: cannot be combined with --fresh/--overwrite")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"run_dir: {run_dir!r} exists and is not a folder")
    # A folder holding only the lock file is one whose first run died before writing its config.
    if not os.path.isdir(run_dir) or not set(os.listdir(run_dir)) - {LOCK_FILE}:
        if resume:
            raise ConfigError(f"--resume: no run folder at {run_dir!r}")
        return Plan("new", run_dir)
    saved = _read_run_config(run_dir)
    if saved is None:
        raise ConfigError(f"run_dir: {run_dir!r} exists and is not a metaopt run folder "
                          f"(no {CONFIG_FILE}); choose another run_dir")
    if fresh:
        return Plan("overwrite", run_dir)
    saved = resolve_recorded(saved)
    diff = describe_difference(trajectory(saved), trajectory(cfg))
    if diff is not None:
        raise ConfigError(f"run_dir: {run_dir!r} was made by a different config ({diff}); "
                          "use --fresh to start over or choose another run_dir")
    cfg = _continued(saved, cfg)
    for step, diff in checkpoints.foreign_checkpoints(run_dir, semantic(cfg)):
        raise ConfigError(f"run_dir: {run_dir!r} holds the checkpoint of outer step {step} made by a "
                          f"different config ({diff}); use --fresh to start over or choose another run_dir")
    return Plan("extend" if cfg["outer_steps"] > saved["outer_steps"] else "resume", run_dir, cfg)


def _continued(saved: dict, cfg: dict) -> dict:
    """``cfg`` with the schedule history that keeps the saved run's steps as they were taken."""
    run_dir = cfg["run_dir"]
    old, new = saved["outer_steps"], cfg["outer_steps"]
    if new < old:
        raise ConfigError(f"outer_steps: the run in {run_dir!r} is {old} outer steps long and can be "
                          f"extended, not shortened, got {new}; use --fresh to start over or choose "
                          "another run_dir")
    saved_history = [list(e) for e in saved["outer"].get("schedule_history") or []]
    history = list(saved_history)
    taken = max((step for step, _ in checkpoints.list_checkpoints(run_dir)), default=0)
    if new > old and taken > 0:
        as_is = dict(cfg, outer={**cfg["outer"], "schedule_history": history})
        if schedule_difference(saved, as_is, taken) is not None:
            history = history + [[taken, old]]
    given = cfg["outer"]["schedule_history"]
    if given not in ([], saved_history, history):
        raise ConfigError(f"outer.schedule_history: the run in {run_dir!r} has {history!r}, got "
                          f"{given!r} (the run folder keeps it; leave it out)")
    return dict(cfg, outer={**cfg["outer"], "schedule_history": history})


def theta_metadata(built: Built, outer_step: int) -> dict:
    """The metadata stored with ``RUN_DIR/theta`` (see the run-folder contract)."""
    cfg = built.cfg
    return {
        "task": {
            "family": cfg["task"]["family"],
            "family_kwargs": cfg["task"]["family_kwargs"],
            "config": _config_fields(built.task_configs[0]),
        },
        "num_steps": built.trainer.num_steps,
        "outer_step": int(outer_step),
        "run_config": cfg,
    }


def save_checkpoint(built: Built, store: checkpoints.RunCheckpoints, state: Any, outer_step: int) -> None:
    """Writes the training checkpoint into ``store`` and refreshes ``RUN_DIR/theta``.

    In a multi-process job every process calls it (the checkpoint is written by all of them
    together); ``RUN_DIR/theta`` is written by process 0 alone, from its copy of the replicated theta.
    """
    store.save(outer_step, state, {"config": semantic(built.cfg)},
               before_commit=lambda: faults.point("checkpoint", outer_step))
    if not sharding.is_main_process():
        return
    _save_theta(built, jax.device_get(built.trainer.theta(state)), outer_step)


def _save_theta(built: Built, theta: Any, outer_step: int) -> None:
    import metaopt

    metaopt.save(os.path.join(built.cfg["run_dir"], THETA_DIR), built.lopt, theta,
                 metadata=theta_metadata(built, outer_step), overwrite=True,
                 before_commit=lambda: faults.point("theta", outer_step))


def _theta_problem(built: Built, theta: Any, outer_step: int) -> str | None:
    """Why ``RUN_DIR/theta`` is not the theta of ``outer_step`` (None when it is)."""
    import numpy as np

    import metaopt
    from metaopt.checkpoint import CheckpointError, load_metadata

    path = os.path.join(built.cfg["run_dir"], THETA_DIR)
    if not os.path.exists(path):
        return "it was missing"
    try:
        lopt, saved = metaopt.load(path)
        meta = load_metadata(path)
    except (CheckpointError, ValueError) as e:
        return f"it did not verify: {_first_line(e)}"
    if meta.get("outer_step") != outer_step:
        return f"it held outer step {meta.get('outer_step')}"
    recorded = meta.get("run_config")
    if lopt != built.lopt or not isinstance(recorded, dict) or run_difference(
            checkpoints.as_json(recorded), checkpoints.as_json(built.cfg), outer_step):
        return "it was made by a different config"
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(theta)):
        if np.asarray(a).tobytes() != np.asarray(b).tobytes():
            return "its arrays differ from the checkpoint's"
    return None


class RunResult(NamedTuple):
    """What ``run`` ends with."""

    state: Any
    outer_step: int
    finished: bool
    compile_seconds: dict


def make_step_fn(built: Built, state: Any):
    """The jitted outer step ``(state, key, group) -> (state, metrics)``, compiled once per group.

    The new state is laid out like ``state`` (population-sharded where the trainer shards it,
    replicated elsewhere), so every call has the same signature as the first and never recompiles.
    """
    layout = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(built.trainer.step, static_argnums=2, donate_argnums=0,
                   out_shardings=(layout, sharding.replicated(built.mesh)))


def _initial_state(built: Built):
    key = jax.random.key(built.cfg["seed"])
    state = built.trainer.init(jax.random.fold_in(key, 2), built.theta)
    return sharding.place_on_mesh(state, built.mesh), jax.random.fold_in(key, 1)


def run(built: Built, plan: Plan, *, max_outer_steps_this_run: int | None = None,
        progress: bool = True, lock: RunLock | None = None) -> RunResult:
    """Executes a plan: creates or resumes the run folder, then runs the outer loop.

    Args:
      built: from ``build``.
      plan: from ``plan_run_dir``.
      max_outer_steps_this_run: stop (with a checkpoint) after this many outer steps of this call;
        the run can be continued later by running the same command again.
      progress: show the progress bar on stderr.
      lock: the run folder's lock, already held by the caller; ``None`` takes it here (process 0)
        and releases it at the end.

    Returns:
      The final state, the outer step reached, whether the run is complete, compile times per group.

    Raises:
      RunDirLocked: another live process owns the run folder (nothing is written).
    """
    main = sharding.is_main_process()
    own_lock = None
    if main and (lock is None or not lock.held):
        own_lock = RunLock(plan.run_dir).acquire()
    try:
        result = _run_locked(built, plan, max_outer_steps_this_run, progress)
        faults.point("end", result.outer_step)
        return result
    finally:
        if own_lock is not None:
            own_lock.release()


class _StallWatch:
    """Counts outer steps in a row that cannot move theta, and says so once when there are enough.

    A step is stalled when its meta-gradient is exactly zero (every member dropped, or a learned
    optimizer whose output no longer depends on theta) or when every inner run is at the loss
    ceiling (``diverged == 1``: each member gets the same worst value, so nothing tells them apart).
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self.since = None
        self.reason = None
        self.announced = False

    def update(self, step: int, metrics: dict) -> str | None:
        """Feeds one finished outer step; returns the message the first time the limit is reached."""
        reason = None
        if "grad_norm" in metrics and float(metrics["grad_norm"]) == 0.0:
            reason = "the meta-gradient is exactly zero"
        elif float(metrics.get("diverged", 0.0)) >= 1.0:
            reason = "every inner run is at the loss ceiling"
        if reason is None:
            self.count, self.since = 0, None
            return None
        if self.count == 0:
            self.since = step
        self.count += 1
        self.reason = reason
        if self.count >= self.limit and not self.announced:
            self.announced = True
            return (f"not learning: {reason} at every outer step since step {self.since} "
                    f"({self.count} in a row); theta is not improving")
        return None


def _remove_partial_theta(run_dir: str) -> None:
    """Deletes the temporary folders a save of ``RUN_DIR/theta`` killed half-way leaves beside it."""
    for name in os.listdir(run_dir):
        if name.startswith(f".{THETA_DIR}.") and (".tmp-" in name or ".old-" in name):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def _clear_run_dir(run_dir: str) -> None:
    """Deletes everything of a run folder but its lock file (``--fresh``)."""
    for name in os.listdir(run_dir):
        if name == LOCK_FILE:
            continue
        full = os.path.join(run_dir, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.remove(full)


def _run_locked(built: Built, plan: Plan, max_outer_steps_this_run: int | None,
                progress: bool) -> RunResult:
    cfg = built.cfg
    run_dir = plan.run_dir
    main = sharding.is_main_process()
    state, step_key = _initial_state(built)
    start = 0
    if plan.action in ("resume", "extend") and checkpoints.list_checkpoints(run_dir):
        reader = checkpoints.RunCheckpoints(run_dir)
        restored = reader.restore_latest(state, expected_config=semantic(cfg))
        reader.close()
        if restored is not None:
            start, state = restored
        elif main:
            print(f"warning: no checkpoint in {checkpoints.checkpoint_root(run_dir)} verified; "
                  "starting again from outer step 0", file=sys.stderr)
    if start > 0:
        theta = jax.device_get(built.trainer.theta(state))  # replicated: whole on every process
        if main:
            problem = _theta_problem(built, theta, start)
            if problem is not None:
                _save_theta(built, theta, start)
                print(f"{run_dir}/{THETA_DIR}: rewritten from the checkpoint of outer step {start} "
                      f"({problem})", file=sys.stderr)
    if main:
        if plan.action == "overwrite":
            _clear_run_dir(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        _remove_partial_theta(run_dir)
        tmp = os.path.join(run_dir, CONFIG_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dump(cfg))
        os.replace(tmp, os.path.join(run_dir, CONFIG_FILE))
    sharding.barrier("run folder ready")
    store = checkpoints.RunCheckpoints(run_dir, writable=True)

    total = cfg["outer_steps"]
    end = total if max_outer_steps_this_run is None else min(total, start + max_outer_steps_this_run)
    num_groups = len(built.tasks)
    logger = MetricsLogger(run_dir, start, enabled=main)
    bar = progress_bar(total, start, cfg["name"], enabled=progress and main)
    step_fn = make_step_fn(built, state)
    compiled: dict[int, float] = {}
    stall = _StallWatch(cfg.get("stall_steps", 10))
    pending: list[dict] = []
    interval_start = time.perf_counter()
    run_start = interval_start
    try:
        if total == 0:  # no meta-training: the run's theta is its initial theta (see ``initial_theta``)
            logger.log(0, {"wall_s": 0.0})
            save_checkpoint(built, store, state, 0)
        for t in range(start, end):
            group = t % num_groups
            key = jax.random.fold_in(step_key, t)
            if group not in compiled:
                tic = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*donated.*")
                    step_fn.lower(state, key, group).compile()
                compiled[group] = time.perf_counter() - tic
                if main:
                    bar.write(f"compiled outer step for task group {group} in {compiled[group]:.1f}s")
                logger.log(t, {"compile_s": compiled[group], "group": group})
                interval_start += compiled[group]  # compile time is not step time
                bar.unpause()  # nor does it count in the progress bar's rate and time left
                faults.point("compile", t)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*donated.*")
                state, metrics = step_fn(state, key, group)
            pending.append(metrics)
            done = t + 1
            faults.point("step", done)
            bar.update(1)
            if done % cfg["log_every"] == 0 or done == end:
                host = jax.device_get(pending)
                stalled = None
                for i, m in enumerate(host):
                    stalled = stall.update(done - len(host) + i + 1, m) or stalled
                elapsed = max(time.perf_counter() - interval_start, 1e-9)
                record = {k: float(v) for k, v in host[-1].items() if jnp.ndim(v) == 0}
                losses = [float(m["meta_loss"]) for m in host if "meta_loss" in m]
                if losses:
                    record["meta_loss_avg"] = sum(losses) / len(losses)
                inner = sum(float(m.get("inner_steps", 0.0)) for m in host)
                record["group"] = group
                record["step_s"] = elapsed / len(host)
                record["inner_steps_per_s"] = inner / elapsed
                record["wall_s"] = time.perf_counter() - run_start
                if stalled is not None:
                    record["stalled"] = 1.0
                    record["stalled_since"] = stall.since
                    record["stall_reason"] = stall.reason
                logger.log(done, record)
                if stalled is not None and main:
                    bar.write(f"warning: {stalled}", file=sys.stderr)
                bar.set_postfix(meta_loss=f"{record.get('meta_loss_avg', math.nan):.4g}",
                                inner_sps=f"{record['inner_steps_per_s']:.0f}", refresh=False)
                pending = []
                interval_start = time.perf_counter()
            if done % cfg["checkpoint_every"] == 0 or done == end:
                tic = time.perf_counter()
                save_checkpoint(built, store, state, done)
                interval_start += time.perf_counter() - tic
    finally:
        store.close()
        bar.close()
        logger.close()
    return RunResult(state, end, end == total, compiled)
