"""Command line of the meta-training program.

Usage::

    python -m meta_train --config configs/quickstart.yaml [key=value ...] [--resume | --fresh]
                         [--max-outer-steps-this-run N] [--no-progress] [--no-compilation-cache]
                         [--print-config] [--processes N]

Dotted keys set nested fields (``estimator.num_tasks=4 outer_steps=20``); they may come before or
after the flags. Running again into an existing run folder of the same config continues it from its
newest valid checkpoint; a folder made by a different config is refused unless ``--fresh`` (alias
``--overwrite``) is given, and a folder another live process is running in is always refused. Any bad
input prints one line ``error: FIELD: ...`` on stderr and exits with status 2 before anything is
created or written.
Compiled programs are kept in jax's persistent compilation cache (``metaopt.compilation_cache``), so
a second run of the same config starts without compiling again.
``--print-config`` prints the resolved config, as the run folder's ``config.yaml``
would hold it, and exits 0 without writing anything.

``--processes N`` starts N processes of this program on this machine as one job (see
``metaopt.meta_train.launch``). Started by another launcher (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or a SLURM or Open MPI job of several tasks), the program
joins that job; process 0 alone locks and writes the run folder. When a process of the job stops,
the others exit with status 3 and one line saying so; running the same command again resumes.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["make_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr and exit 2, like every other input error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metaopt-train", description="Meta-train a learned optimizer or schedule.")
    parser.add_argument("--config", required=True, help="YAML config file, or the name of a shipped one (quickstart, mulo_mlp, ...)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, dotted keys for nested fields")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in run_dir (the default when it exists); error if none")
    mode.add_argument("--fresh", "--overwrite", dest="fresh", action="store_true",
                      help="delete an existing run folder of this run_dir and start over")
    parser.add_argument("--max-outer-steps-this-run", type=int, default=None, metavar="N",
                        help="stop after N outer steps (writing a checkpoint); run again to continue")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="do not read or write jax's persistent compilation cache "
                             "(also METAOPT_COMPILATION_CACHE=0)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML, every setting spelled out) and exit "
                             "without touching the run folder")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="run as a job of N processes on this machine (each with its own devices)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the program; returns the exit status (0 done, 2 bad input; 3: a process of the job died)."""
    from metaopt import compilation_cache
    from metaopt.meta_train.config import ConfigError, load_config

    try:
        args = make_parser().parse_intermixed_args(argv)
    except SystemExit as e:  # the parser's one-line error (or --help): a status, not an exception
        return e.code if isinstance(e.code, int) else 2
    if args.processes is not None:
        from metaopt.meta_train import launch

        if args.processes < 1:
            print(f"error: --processes: expected a positive int, got {args.processes}", file=sys.stderr)
            return 2
        forwarded = launch.without_processes_flag(sys.argv[1:] if argv is None else list(argv))
        return launch.launch_local(forwarded, args.processes)
    if args.max_outer_steps_this_run is not None and args.max_outer_steps_this_run < 1:
        print(f"error: --max-outer-steps-this-run: expected a positive int, got "
              f"{args.max_outer_steps_this_run}", file=sys.stderr)
        return 2
    try:
        from metaopt.meta_train import sharding

        sharding.maybe_initialize_distributed()  # before anything starts jax's backend
        cfg = load_config(args.config, args.overrides)
        from metaopt.meta_train import run as run_mod

        # Every value is judged (by the task family, learned optimizer and estimator too) before
        # the run folder is looked at, so an error names the bad value rather than the folder.
        compilation_cache.enable(not args.no_compilation_cache)
        compile_meter = compilation_cache.CompileMeter()
        built = run_mod.build(cfg)
        cfg = built.cfg
        if args.print_config:
            from metaopt.configuration import dump

            if sharding.is_main_process():
                sys.stdout.write(dump(cfg))
            return 0
        plan = run_mod.plan_run_dir(cfg, resume=args.resume, fresh=args.fresh)
        built = _built_for(run_mod, built, plan)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    import jax

    from metaopt.meta_train.lock import RunLock

    main_process = sharding.is_main_process()
    lock = None
    if main_process:
        # The plan above was made without the lock; it is made again under it, since another
        # process may have changed the folder in between.
        lock = RunLock(plan.run_dir)
        try:
            lock.acquire()
            plan = run_mod.plan_run_dir(cfg, resume=args.resume, fresh=args.fresh)
            built = _built_for(run_mod, built, plan)
        except ConfigError as e:
            _undo_lock(lock)
            print(f"error: {e}", file=sys.stderr)
            return 2
    # Every process has decided from the folder as it was, before process 0 starts writing it.
    sharding.barrier("planned")
    if main_process:
        verb = {"new": "starting", "resume": "resuming", "extend": "extending",
                "overwrite": "starting over"}[plan.action]
        where = f" in {jax.process_count()} processes" if sharding.is_distributed() else ""
        print(f"{verb} {cfg['name']} in {plan.run_dir} on {built.mesh.devices.size} device(s){where}",
              file=sys.stderr)
    try:
        result = run_mod.run(built, plan, max_outer_steps_this_run=args.max_outer_steps_this_run,
                             progress=not args.no_progress, lock=lock)
    except Exception as e:  # noqa: BLE001 (in a job, any failure must end this process at once)
        if not sharding.is_distributed():
            raise
        text = str(e).strip().splitlines()
        detail = text[0] if text else type(e).__name__
        if isinstance(e, jax.errors.JaxRuntimeError):
            # A collective with a process that died fails here first (its connections close).
            sharding.abort_job(f"lost another process of the job ({detail})")
        # Leaving by an exception would wait in JAX's exit handler for the processes still running.
        sharding.abort_job(f"{type(e).__name__}: {detail}")
    finally:
        if lock is not None:
            lock.release()
    sharding.finish()
    if main_process:
        status = "finished" if result.finished else "paused"
        print(f"{status} at outer step {result.outer_step}/{cfg['outer_steps']}; "
              f"theta in {plan.run_dir}/theta; {compile_meter.seconds:.1f}s compiling", file=sys.stderr)
    return 0


def _built_for(run_mod, built, plan):
    """``built``, rebuilt when the plan's config differs (an extended run's schedule history)."""
    if plan.cfg is None or plan.cfg == built.cfg:
        return built
    return run_mod.build(plan.cfg)


def _undo_lock(lock) -> None:
    """Releases a lock taken for a run that is refused, removing what taking it created."""
    import os

    from metaopt.meta_train.lock import lock_path

    held = lock.held
    lock.release()
    if held and lock.created_dir:
        os.remove(lock_path(lock.run_dir))
        os.rmdir(lock.run_dir)


if __name__ == "__main__":
    sys.exit(main())
