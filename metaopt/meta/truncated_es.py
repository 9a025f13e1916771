"""Truncated evolution strategies: antithetic ES gradients of each truncation's meta-loss.

The same population as PES (antithetic pairs per task slot, + and - members carrying their own
inner states), but each estimate uses only the perturbation of the current truncation,

    grad = sum_i (L(theta + eps_i) - L(theta - eps_i)) * eps_i / (2 sigma^2 N),

so, like TBPTT, it ignores how theta shaped the state the truncation starts from (biased towards
short horizons); it is here for comparison with PES.

References:
  Vicol et al., "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
  Evolution Strategies", ICML 2021 (truncated ES as the biased baseline).
"""

from __future__ import annotations

from metaopt.meta.pes import PES


__all__ = ["TruncatedES"]


class TruncatedES(PES):
    """Antithetic ES over truncations, without PES's accumulated perturbations."""

    name = "truncated_es"
    persistent = False
