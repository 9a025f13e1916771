"""metaopt: learned optimizers and learned schedules in JAX.

Meta-train optimizer networks under µP, plug them into any optax pipeline, and evaluate how they
transfer to wider, deeper and longer training than they were meta-trained on.
"""

from metaopt import _source_layout

_source_layout.extend_path(__path__)

from metaopt.learned_optimizer import LearnedOptimizer  # noqa: E402
from metaopt.mup import ParamMeta, infer_param_meta  # noqa: E402
from metaopt import baselines, checkpoint, schedules  # noqa: E402
from metaopt.checkpoint import load, save  # noqa: E402
from metaopt.mlp_lopt import MLPLOpt  # noqa: E402
from metaopt.lean_lopt import LeanLOpt  # noqa: E402
from metaopt.learned_schedule import LearnedSchedule  # noqa: E402
from metaopt.shipped import pretrained  # noqa: E402
from metaopt import unroll  # noqa: E402
from metaopt.time_features import fraction_features, step_features  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "MLPLOpt",
    "LeanLOpt",
    "LearnedSchedule",
    "fraction_features",
    "step_features",
    "LearnedOptimizer",
    "ParamMeta",
    "infer_param_meta",
    "baselines",
    "checkpoint",
    "schedules",
    "load",
    "pretrained",
    "unroll",
    "save",
]
