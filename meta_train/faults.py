"""Crash points of the meta-training program, for tests of what a kill at each phase leaves behind.

``METAOPT_CRASH_AT=PHASE`` (or ``PHASE:STEP``) makes the process exit at once with status
``CRASH_STATUS`` through ``os._exit`` (no cleanup, no ``finally``: what SIGKILL leaves) when it
reaches that phase (at that outer step). Phases, in the order a run meets them:

- ``compile``: the outer step of a task group has compiled, before it first runs;
- ``step``: outer step STEP has been computed (``STEP`` counts finished steps), before it is logged;
- ``checkpoint``: the training checkpoint of STEP is written to its temporary folder, not yet renamed;
- ``theta``: the same for ``RUN_DIR/theta``;
- ``end``: the last step and every save are done, before the lock is released.

Unset (the normal case), every crash point is a dictionary lookup.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

__all__ = ["ENV", "PHASES", "CRASH_STATUS", "point"]

ENV = "METAOPT_CRASH_AT"
PHASES = ("compile", "step", "checkpoint", "theta", "end")
CRASH_STATUS = 86


def point(phase: str, step: Optional[int] = None) -> None:
    """Exits the process when ``METAOPT_CRASH_AT`` names this phase (and step)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, at = spec.partition(":")
    if name != phase or (at and (step is None or int(at) != step)):
        return
    sys.stderr.flush()
    os._exit(CRASH_STATUS)
