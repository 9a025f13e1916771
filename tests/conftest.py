"""Settings for the whole test session.

XLA compiles the suite's programs at its lowest backend optimisation level: the tests run tiny
models for few steps, so compiling dominates their time and optimised code would not pay for
itself (on 2 CPU cores this halves the compile time of a learned optimizer's training run). The
tests check behaviour, which does not depend on the level. Subprocesses get ``TEST_XLA_FLAGS`` in
place of the caller's XLA flags; the quickstart digest test clears them, because the digest pins
the default compilation.
"""

import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"

if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
