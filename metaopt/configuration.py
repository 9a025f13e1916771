"""Declarative configs: frozen dataclasses built from YAML and ``key=value`` overrides.

Both programs describe their config as nested frozen dataclasses whose ``__post_init__`` checks
their own fields. This module is the one loader they share:

- ``read_yaml`` reads a YAML file with ``ConfigLoader``: ``yaml.safe_load`` semantics (nothing is
  executed), ``1e-3`` read as a float as people write it, and a mapping that repeats a key refused;
- ``apply_overrides`` sets dotted keys (``estimator.num_tasks=4``; values parsed as YAML);
- ``build`` turns the resulting plain data into the dataclass, recursing into nested dataclasses
  (a section given as null takes its defaults), refusing unknown keys with the list of allowed ones and any NaN or infinity, turning lists into
  tuples and ints into floats where the annotation asks for them; anything else is left for the
  dataclass to judge;
- ``to_plain`` gives a built config back as plain data (what ``--print-config`` prints), ``dump``
  as YAML text, and ``describe_difference`` names the first field where two such configs differ;
- ``shipped_configs`` and ``find_config`` find the configs shipped in ``metaopt.configs`` by name.

Every error is a ``ConfigError``: one line that starts with the dotted field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from typing import Any, Callable, Optional

import yaml

from metaopt import validation as v

__all__ = ["ConfigError", "ConfigLoader", "parse_yaml", "read_yaml", "shipped_configs", "find_config",
           "apply_overrides", "build", "build_tagged", "build_plain", "to_plain", "dump", "describe_difference"]


class ConfigError(ValueError):
    """A bad config value; the message is one line that starts with the dotted field name."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` (no dot) as a float, as people write it, and
    refuses a mapping that repeats a key (plain YAML loaders silently keep the last value)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {seen[key] + 1} and line "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, where: str) -> Any:
    """Parses YAML text with ``ConfigLoader``; raises ``ConfigError`` naming ``where`` on bad YAML."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None)
        if problem and "duplicate key" in problem:
            raise ConfigError(f"{where}: {problem}; each key may appear once") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML ({first})") from None


def read_yaml(path: str, option: str) -> dict:
    """The mapping in the YAML file ``path``; errors name the command-line ``option`` or the file."""
    if os.path.isdir(path):
        raise ConfigError(f"{option}: {path!r} is a folder; expected a YAML file or a shipped config's name")
    if not os.path.isfile(path):
        raise ConfigError(f"{option}: no such file {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{option}: {path!r} is not UTF-8 text (byte {e.start}); expected a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{option}: cannot read {path!r} ({e.strerror})") from None
    raw = parse_yaml(text, f"{option}: {path}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{option}: {path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def shipped_configs(marker: Optional[str] = None) -> dict[str, str]:
    """Name -> path of every YAML file shipped in ``metaopt.configs``; with ``marker``, of those whose
    top-level mapping has that key (``suite``), else of those without a ``suite`` key."""
    import importlib.resources

    out = {}
    folder = str(importlib.resources.files("metaopt.configs"))
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext not in (".yaml", ".yml"):
            continue
        try:
            data = read_yaml(os.path.join(folder, entry), entry)
        except ConfigError:
            continue
        if bool(data.get(marker or "suite")) == (marker is not None):
            out[stem] = os.path.join(folder, entry)
    return out


def find_config(value: Any, option: str, shipped: dict[str, str], what: str = "config") -> str:
    """The YAML path ``value`` names: a path as given, or one of ``shipped`` by name (``quickstart``
    or ``quickstart.yaml``); errors name the command-line ``option``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{option}: expected a {what} name or a YAML path, got {value!r}")
    stem = os.path.splitext(value)[0]
    if not os.path.exists(value) and os.sep not in value and stem in shipped:
        return shipped[stem]
    if os.path.exists(value) or os.sep in value or value.endswith((".yaml", ".yml")):
        return value
    raise ConfigError(f"{option}: unknown {what} {value!r}; shipped: {sorted(shipped)}")


def apply_overrides(raw: dict, overrides, shorthands: Optional[dict] = None) -> dict:
    """``raw`` with ``key=value`` overrides applied in order (a copy; dotted keys set nested fields).

    Values are parsed as YAML (``4``, ``1e-3``, ``null``, ``[1, 2]``, ``{width_multiplier: 2}``) and
    replace what was there. ``shorthands`` maps a key whose value
    is a string to the field it sets (``{"estimator": "estimator.name"}``).
    """
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides or ():
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key=value with a non-empty dotted key")
        value = parse_yaml(text, key) if text.strip() else None
        if isinstance(value, str) and key in (shorthands or {}):
            key = shorthands[key]
        *parents, last = key.split(".")
        node = raw
        for i, part in enumerate(parents):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"{'.'.join(parents[:i + 1])}: is not a section, cannot set {key}")
            node = node[part]
        node[last] = value
    return raw


def _finite(value: Any, field: str) -> Any:
    """``value`` with lists as tuples, checked to hold no NaN or infinity and only string keys."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{field}: expected a finite number, got {value!r}")
    if isinstance(value, (list, tuple)):
        return tuple(_finite(v, f"{field}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{field}: keys must be strings, got {k!r}")
        return {k: _finite(v, f"{field}.{k}") for k, v in value.items()}
    return value


def _convert(hint: Any, value: Any, field: str) -> Any:
    """``value`` shaped for the annotation ``hint``: nested dataclasses built, lists to tuples, ints to
    floats; a value of another shape is passed on for the dataclass to refuse."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next((a for a in args if a is not type(None)), Any)
        args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):  # a section: a mapping, or null for its defaults
        return build(hint, value, field)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(hint) is tuple and isinstance(value, tuple) and args:
        item = args[0]
        return tuple(_convert(item, v, f"{field}[{i}]") for i, v in enumerate(value))
    return value


def build(cls: type, raw: Any, field: str = "", extra: tuple[str, ...] = (), owner: str = "") -> Any:
    """The frozen dataclass ``cls`` from plain data (see the module docstring).

    Args:
      cls: the dataclass.
      raw: a mapping of its fields (``None``: all defaults).
      field: the dotted name of the section, for messages.
      extra: keys the caller took out of ``raw`` before (listed among the allowed ones).
      owner: words naming what the fields belong to, for the unknown-key message.

    Raises:
      ConfigError: an unknown key, a NaN or infinity, or a value the dataclass refuses, named by
        its dotted field.
    """
    prefix = f"{field}." if field else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{field or 'config'}: expected a mapping, got {_type_name(raw)} {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key{owner}; allowed: {[*extra, *names]}")
    kwargs = {k: _convert(hints[k], _finite(v, prefix + k), prefix + k) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None
    except (ValueError, TypeError) as e:
        text = str(e).strip()
        raise ConfigError(f"{prefix}{text.splitlines()[0] if text else type(e).__name__}") from None


def build_tagged(lookup: Callable[[str], type], raw: Any, field: str, tag: str, default: str,
                 choices: tuple[str, ...]) -> tuple[str, Any]:
    """A section whose ``tag`` key (``kind``, ``name``) chooses its dataclass: ``(tag value, built)``."""
    raw = dict(build_plain(raw, field))
    name = raw.pop(tag, default)
    try:
        v.check_choice(name, f"{field}.{tag}", choices)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    return name, build(lookup(name), raw, field, extra=(tag,), owner=f" for {field} {name!r}")


def build_plain(raw: Any, field: str) -> dict:
    """A mapping of plain data with string keys and finite numbers (lists as tuples)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{field}: expected a mapping, got {_type_name(raw)} {raw!r}")
    return _finite(raw, field)


def to_plain(value: Any) -> Any:
    """A built config as plain data: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def dump(config: dict) -> str:
    """A plain config as YAML text (block style, keys in schema order)."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


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


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
