"""The meta-training program: a YAML config in, a run folder with a meta-trained optimizer out.

Run it as ``python -m meta_train --config configs/quickstart.yaml key=value ...`` (from a checkout),
``python -m metaopt.meta_train ...`` or ``metaopt-train ...``. See ``metaopt.meta_train.config`` for the
config schema and ``metaopt.meta_train.run`` for the outer loop, run folder and resume rules.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    """The command-line entry point (see ``metaopt.meta_train.cli.main``)."""
    from metaopt.meta_train.cli import main as cli_main

    return cli_main(argv)
