"""metaopt: learned optimizers and learned schedules in JAX.

Meta-train optimizer networks under µP, plug them into any optax pipeline, and evaluate how they
transfer to wider, deeper and longer training than they were meta-trained on.
"""

from metaopt import _source_layout

_source_layout.extend_path(__path__)

from metaopt.learned_optimizer import LearnedOptimizer  # noqa: E402
from metaopt.mup import ParamMeta, infer_param_meta  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "LearnedOptimizer",
    "ParamMeta",
    "infer_param_meta",
]
