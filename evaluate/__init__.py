"""The evaluation program: width, depth, horizon and task transfer of learned optimizers.

A suite (``configs/width_transfer.yaml`` and the like) places the meta-training task at several widths,
depths, horizons or task families; on every cell the checkpoint's learned optimizer and the hand-designed
baselines (AdamW, µAdam, Lion, SGD with momentum, each with a tuned learning rate) run on several
seeds, all runs of an optimizer on a cell vmapped in one jitted program. Results: ``results.json``,
``results.md`` and PNG plots.

Use ``python -m evaluate --checkpoint RUN_DIR --suite width_transfer`` (``metaopt-eval`` when
installed) or, from a script, ``metaopt.evaluate.evaluate_suite(RUN_DIR, "width_transfer")``.

References:
  Therien et al., "µLO: Compute-Efficient Meta-Generalization of Learned Optimizers", ICLR 2026
  (width, depth and horizon transfer against tuned µAdam and AdamW).
"""

from metaopt.evaluate.evaluation import default_out, evaluate_suite
from metaopt.evaluate.suites import list_suites, load_suite

__all__ = ["evaluate_suite", "load_suite", "list_suites", "default_out"]
