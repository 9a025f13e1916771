"""Orthogonalised steps: a matrix's step with its singular values made equal (Muon's step).

``newton_schulz`` maps a matrix ``G = U S V^T`` to approximately ``U V^T`` with a few quintic
Newton–Schulz iterations (matrix products only, no SVD). The quintic's coefficients (3.4445,
-4.7750, 2.0315) favour the slope at zero over convergence, so singular values land roughly in
[0.5, 1.5] rather than at 1, which Muon finds harmless. ``orthogonalized`` applies it to a tensor of
any rank >= 2 seen as a (fan_in, fan_out) matrix and keeps the step's RMS, so the step's size is
still whatever produced it (a learned optimizer's magnitude output) and only its direction changes.

References:
  Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
  Moudgil et al., "Celo2", ICLR 2026 (a learned optimizer whose weight-matrix updates are
  orthogonalised by Newton–Schulz iterations).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["NUM_ITERATIONS", "newton_schulz", "orthogonalized"]

NUM_ITERATIONS = 5
_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: jax.Array, num_iterations: int = NUM_ITERATIONS) -> jax.Array:
    """Approximately ``U V^T`` for ``matrix = U S V^T`` (2-D, float32 arithmetic)."""
    a, b, c = _COEFFICIENTS
    x = jnp.asarray(matrix, jnp.float32)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    x = x / (jnp.linalg.norm(x) + 1e-7)
    for _ in range(num_iterations):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def orthogonalized(step: jax.Array, num_iterations: int = NUM_ITERATIONS) -> jax.Array:
    """``step`` (rank >= 2; the last axis is fan_out) orthogonalised as a (fan_in, fan_out) matrix,
    rescaled to its own RMS; a zero step stays zero."""
    matrix = jnp.asarray(step, jnp.float32).reshape(-1, step.shape[-1])
    out = newton_schulz(matrix, num_iterations)
    rms = jnp.sqrt(jnp.mean(jnp.square(matrix)))
    out = out * (rms / (jnp.sqrt(jnp.mean(jnp.square(out))) + 1e-30))
    return out.reshape(step.shape).astype(step.dtype)
