"""JAX's persistent compilation cache for metaopt's programs, and a meter of time spent compiling.

``python -m meta_train`` and ``python -m evaluate`` call ``enable()`` at start, so a second run of the
same program (same shapes, same jax and XLA versions) loads its compiled executables from disk
instead of compiling them again. The cache lives in ``$METAOPT_CACHE_DIR/jax`` or, without that
variable, ``~/.cache/metaopt/jax`` (the folder that also holds the cached datasets). Turn it off with
the programs' ``--no-compilation-cache`` flag or ``METAOPT_COMPILATION_CACHE=0``; point it elsewhere
with ``METAOPT_COMPILATION_CACHE=/some/folder``. A cache folder already configured in jax
(``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is.

This is jax's own cache (``jax_compilation_cache_dir``): entries are keyed by the lowered program,
the compile options and the jax/XLA versions, so a stale entry is never used; deleting the folder is
always safe.

``CompileMeter`` sums jax's own compile-time events (tracing, lowering to MLIR, XLA compilation or
loading from the cache) so programs can report how long they waited on the compiler.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import jax

__all__ = ["ENV_SWITCH", "MIN_COMPILE_TIME_S", "CompileMeter", "default_cache_dir", "enable", "requested_dir"]

ENV_SWITCH = "METAOPT_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no", "none", "")
_ON = ("1", "on", "true", "yes")

# Programs that compile faster than this are not written to the cache. Meta-training's outer step
# and evaluation's inner runs take seconds; the many small programs (initialisers, metrics) take
# tens of milliseconds each, but there are dozens of them, so they are cached too.
MIN_COMPILE_TIME_S = 0.05


def default_cache_dir() -> str:
    """``$METAOPT_CACHE_DIR/jax``, else ``~/.cache/metaopt/jax``."""
    root = os.environ.get("METAOPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "metaopt")
    return os.path.join(root, "jax")


def requested_dir(enabled: bool = True) -> Optional[str]:
    """The cache folder the switches ask for, or ``None`` when the cache is off.

    Args:
      enabled: ``False`` when the program's ``--no-compilation-cache`` flag was given.
    """
    if not enabled:
        return None
    value = os.environ.get(ENV_SWITCH)
    if value is None or value.strip().lower() in _ON:
        return default_cache_dir()
    if value.strip().lower() in _OFF:
        return None
    return os.path.abspath(os.path.expanduser(value.strip()))


def enable(enabled: bool = True, path: Optional[str] = None) -> Optional[str]:
    """Turns jax's persistent compilation cache on for this process.

    Args:
      enabled: ``False`` leaves the cache off (the programs' ``--no-compilation-cache``).
      path: the cache folder; ``None`` takes ``requested_dir()``.

    Returns:
      The folder in use, or ``None`` when the cache is off. A folder already set in jax's config
      wins over ``path`` and the switches.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    folder = path if path is not None else requested_dir(enabled)
    if not enabled or folder is None:
        return None
    # jax creates the folder when it first writes to it, so a run that stops at bad input before
    # compiling anything leaves no trace.
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_lock = threading.Lock()
_totals = {name: 0.0 for name in _COMPILE_EVENTS}
_counts = {"hits": 0, "misses": 0}
_installed = False


def _on_duration(event: str, duration: float, **_):
    if event in _totals:
        with _lock:
            _totals[event] += duration


def _on_event(event: str, **_):
    if event == "/jax/compilation_cache/cache_hits":
        with _lock:
            _counts["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        with _lock:
            _counts["misses"] += 1


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)


class CompileMeter:
    """Seconds this process has spent compiling since the meter was made (or last ``reset``).

    ``seconds`` is the sum of jax's tracing, lowering and XLA compilation (or cache loading) times,
    from ``jax.monitoring`` events; ``backend_seconds`` only the last of them. ``cache_hits`` and
    ``cache_misses`` count persistent-cache lookups.
    """

    def __init__(self):
        _install()
        self.reset()

    def reset(self) -> None:
        with _lock:
            self._start = dict(_totals)
            self._start_counts = dict(_counts)

    def _delta(self, name: str) -> float:
        with _lock:
            return _totals[name] - self._start[name]

    @property
    def seconds(self) -> float:
        return sum(self._delta(name) for name in _COMPILE_EVENTS)

    @property
    def backend_seconds(self) -> float:
        return self._delta("/jax/core/compile/backend_compile_duration")

    @property
    def cache_hits(self) -> int:
        with _lock:
            return _counts["hits"] - self._start_counts["hits"]

    @property
    def cache_misses(self) -> int:
        with _lock:
            return _counts["misses"] - self._start_counts["misses"]
