"""Meta-training estimators: truncated backprop, PES, truncated ES and ES over whole runs.

``make_meta_trainer(estimator, lopt, tasks, ...)`` is the entry point; see ``metaopt.meta.trainer``.
"""

from metaopt.meta.base import Estimator, EstimatorState, GradientEstimator
from metaopt.meta.full_es import ESConfig, ESGroupState, EvolutionStrategy
from metaopt.meta.meta_loss import worst_meta_loss
from metaopt.meta.pes import PES
from metaopt.meta.tbptt import TBPTT
from metaopt.meta.trainer import ESTIMATORS, MetaState, MetaTrainer, estimator_settings, make_meta_trainer
from metaopt.meta.truncated_es import TruncatedES
from metaopt.meta.horizons import sample_horizon
from metaopt.meta.truncation import RunState, TruncationConfig

__all__ = [
    "ESConfig",
    "ESGroupState",
    "ESTIMATORS",
    "Estimator",
    "EstimatorState",
    "EvolutionStrategy",
    "GradientEstimator",
    "MetaState",
    "MetaTrainer",
    "PES",
    "RunState",
    "TBPTT",
    "TruncatedES",
    "TruncationConfig",
    "estimator_settings",
    "make_meta_trainer",
    "sample_horizon",
    "worst_meta_loss",
]
