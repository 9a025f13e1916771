"""A task family defined by a config class and a finite distribution of choices per field.

``ConfigFamily`` implements ``TaskFamily`` for every family in metaopt.tasks: its constructor takes
the distribution (plural keyword arguments, each a tuple of choices, e.g. ``widths=(64, 128)``,
``depths=(3,)``) and fixed defaults (singular keyword arguments naming config fields, e.g.
``base_width=64``). ``sample(key)`` picks one choice per field uniformly; configs that differ only in
``seed`` have the same shapes, and ``shape_configs()`` lists one config per shape group so a
meta-trainer can compile one program per group.

``seed`` is a choice field like the others (default ``seeds=(0,)``): it picks the data split or the
teacher, and each new seed is a new static task (a new compilation), so populations should vary the
PRNG keys passed to ``task.init`` / ``task.batch`` rather than draw many seeds.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, ClassVar

import jax
import numpy as np

from metaopt.tasks.base import Task, TaskFamily

__all__ = ["config_to_dict", "key_to_seed", "ConfigFamily"]

# Plural keyword arguments and the config field each one sets.
_PLURALS = {
    "width_multipliers": "width_multiplier",
    "depths": "depth",
    "activations": "activation",
    "batch_sizes": "batch_size",
    "parametrizations": "parametrization",
    "datasets": "dataset",
    "seeds": "seed",
    "context_lengths": "context_length",
    "condition_numbers": "condition_number",
    "positions": "positions",
    "noise_scales": "noise_scale",
}


def config_to_dict(config: Any) -> dict:
    """The fields of a config as a plain dict (what ``make_config(**d)`` accepts)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def key_to_seed(key: Any) -> int:
    """A Python integer drawn from a JAX PRNG key (typed or raw) or taken from an int."""
    if isinstance(key, (int, np.integer)):
        return int(key)
    return int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))


class ConfigFamily(TaskFamily):
    """A distribution over the configs of one task class.

    Subclasses set ``name``, ``config_class``, ``task_class`` and optionally ``fixed_defaults``
    (config fields the family pins, e.g. ``dataset``) and ``default_choices`` (the distribution when
    the constructor is given none).

    Args:
      widths: choices of width; each becomes ``width_multiplier = width / base_width``.
      width_multipliers, depths, activations, batch_sizes, parametrizations, datasets, seeds, ...:
        tuples of choices for the corresponding config field (only those the config class has).
      **defaults: any config field, fixing it in every sampled config (e.g. ``base_width=64``).

    Raises:
      ValueError: an unknown keyword, an empty choice tuple, or a choice that makes an invalid config.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    task_class: ClassVar[type]
    fixed_defaults: ClassVar[dict] = {}
    default_choices: ClassVar[dict] = {}

    def __init__(self, *, widths: Any = None, **kwargs: Any):
        field_names = [f.name for f in dataclasses.fields(self.config_class)]
        defaults = dict(self.fixed_defaults)
        choices: dict[str, tuple] = {k: tuple(v) for k, v in self.default_choices.items()}
        for key, value in kwargs.items():
            if key in _PLURALS and _PLURALS[key] in field_names:
                choices[_PLURALS[key]] = self._as_choices(key, value)
            elif key in field_names:
                defaults[key] = value
            else:
                allowed = sorted([p for p, f in _PLURALS.items() if f in field_names] + field_names
                                 + (["widths"] if "width_multiplier" in field_names else []))
                raise ValueError(f"{key}: unknown argument for task family {self.name!r}; "
                                 f"allowed: {allowed}")
        if widths is not None:
            if "width_multiplier" not in field_names:
                raise ValueError(f"widths: task family {self.name!r} has no width")
            if "width_multipliers" in kwargs:
                raise ValueError("widths: give either widths or width_multipliers, not both")
            base_width = defaults.get("base_width", self._field_default("base_width"))
            choices["width_multiplier"] = tuple(
                self._width_multiplier(w, base_width) for w in self._as_choices("widths", widths))
        # Fields given as a single fixed value override a default distribution over the same field.
        plural_fields = {_PLURALS[k] for k in kwargs if k in _PLURALS}
        for key in kwargs:
            if key in field_names and key in choices:
                if key in plural_fields:
                    raise ValueError(f"{key}: given both as a fixed value and as a list of choices")
                choices.pop(key)
        self._choices = {k: v for k, v in choices.items() if k in field_names}
        first = {k: v[0] for k, v in self._choices.items()}
        try:
            self._default = self.config_class(**{**defaults, **first})
        except TypeError as e:  # a required field without a default
            raise ValueError(f"config: {e}") from None
        # Every choice must make a valid config on its own.
        for field, values in self._choices.items():
            for value in values:
                dataclasses.replace(self._default, **{field: value})
        self.family_kwargs = dict(kwargs, **({} if widths is None else {"widths": tuple(widths)}))

    def _field_default(self, name: str) -> Any:
        for f in dataclasses.fields(self.config_class):
            if f.name == name:
                return f.default
        raise ValueError(f"{name}: not a field of {self.config_class.__name__}")

    @staticmethod
    def _as_choices(name: str, value: Any) -> tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            value = (value,)
        value = tuple(value)
        if not value:
            raise ValueError(f"{name}: needs at least one choice")
        return value

    @staticmethod
    def _width_multiplier(width: Any, base_width: Any) -> float | int:
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
            raise ValueError(f"widths: expected positive integers, got {width!r}")
        if not isinstance(base_width, (int, np.integer)) or base_width < 1:
            raise ValueError(f"base_width: expected a positive integer, got {base_width!r}")
        if width % base_width == 0:
            return int(width // base_width)
        return width / base_width

    @property
    def choices(self) -> dict[str, tuple]:
        """The distribution: config field -> tuple of choices (sampled uniformly, independently)."""
        return dict(self._choices)

    def default_config(self) -> Any:
        """The config with every field at its default (the first choice of every distribution)."""
        return self._default

    def make_config(self, **fields: Any) -> Any:
        names = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field of {self.config_class.__name__}; "
                             f"fields: {sorted(names)}")
        return dataclasses.replace(self._default, **fields)

    def sample(self, key: Any) -> Any:
        """Draws a config: one choice per field, uniformly; ``key`` is a PRNG key or an int."""
        rng = np.random.default_rng(key_to_seed(key))
        picks = {field: values[rng.integers(len(values))] for field, values in self._choices.items()}
        return dataclasses.replace(self._default, **picks)

    def sample_many(self, key: Any, num_configs: int) -> list[Any]:
        """``num_configs`` configs drawn independently (configs with equal ``shape_key`` share shapes)."""
        keys = jax.random.split(key, num_configs) if not isinstance(key, (int, np.integer)) else [
            key * 1_000_003 + i for i in range(num_configs)]
        return [self.sample(k) for k in keys]

    def shape_configs(self) -> list[Any]:
        """One config per shape group of the distribution (seed at its first choice)."""
        fields = [f for f in self._choices if f != "seed"]
        out = []
        for combo in itertools.product(*(self._choices[f] for f in fields)):
            out.append(dataclasses.replace(self._default, **dict(zip(fields, combo))))
        return out

    def task(self, config: Any) -> Task:
        if not isinstance(config, self.config_class):
            if isinstance(config, dict):
                config = self.make_config(**config)
            else:
                raise ValueError(f"config: expected a {self.config_class.__name__} or a dict, "
                                 f"got {type(config).__name__}")
        return self.task_class(config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.family_kwargs.items())
        return f"get_family({self.name!r}{', ' if args else ''}{args})"
