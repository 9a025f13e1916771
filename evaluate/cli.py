"""Command line of the evaluation program.

    python -m metaopt.evaluate --checkpoint RUN_DIR --suite width_transfer [--out DIR] [key=value ...]
    metaopt-eval --checkpoint RUN_DIR --suite configs/my_suite.yaml seeds=5 tuning.mode=transfer

Bad input (unknown suite, missing checkpoint, unknown override key, bad value, an output folder
holding another evaluation) prints one line ``error: ...`` on stderr and exits with status 2.
Compiled programs are kept in jax's persistent compilation cache (``metaopt.compilation_cache``;
``--no-compilation-cache`` or ``METAOPT_COMPILATION_CACHE=0`` turns it off).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="metaopt-eval",
        description="Evaluate a learned optimizer checkpoint on a transfer suite against tuned baselines.")
    parser.add_argument("--checkpoint", help="meta-training run folder or metaopt.save folder")
    parser.add_argument("--suite", help="shipped suite name or path to a suite YAML")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval/SUITE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    parser.add_argument("--list-suites", action="store_true", help="print the shipped suites and exit")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="do not read or write jax's persistent compilation cache "
                             "(also METAOPT_COMPILATION_CACHE=0)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="suite overrides, e.g. seeds=5 base_num_steps=200 task.config.batch_size=64")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the program; returns 0 (raises ``SystemExit(2)`` on bad input)."""
    args = build_parser().parse_intermixed_args(argv)
    from metaopt.evaluate import suites

    if args.list_suites:
        for name in suites.list_suites():
            print(name)
        return 0
    if not args.checkpoint:
        _fail("--checkpoint: required (a run folder or a metaopt.save folder)")
    if not args.suite:
        _fail(f"--suite: required; shipped suites: {suites.list_suites()}")
    from metaopt import compilation_cache
    from metaopt.evaluate.evaluation import evaluate_suite

    compilation_cache.enable(not args.no_compilation_cache)
    try:
        results = evaluate_suite(args.checkpoint, args.suite, out=args.out, overrides=args.overrides,
                                 progress=not args.no_progress, plots_enabled=not args.no_plots)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    print(f"results: {results['files']['md']}")
    return 0


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main())
