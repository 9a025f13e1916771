"""What a run folder promises: one owner at a time, resumes that end where an uninterrupted run ends
whatever phase a kill lands in, records that refuse to load when changed, and bad input refused
with exit status 2, one line naming the field, and no byte of any folder changed.

Meta-training runs use a micro config (a 4-dimensional quadratic, a learned optimizer with two
features and no hidden layer, PES over one task pair) so that a run costs about one compilation.
Kills are real process exits at named phases (``METAOPT_CRASH_AT``, ``os._exit``: no cleanup runs).
"""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

import metaopt
from metaopt import checkpoint as ckpt_lib
from metaopt.meta_train import checkpoints as run_ckpts
from metaopt.meta_train import cli, faults
from metaopt.meta_train.lock import LOCK_FILE, RunLock, read_owner
from legacy_checkpoint import write_format_2
from conftest import TEST_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MICRO = {
    "name": "micro",
    "seed": 3,
    "outer_steps": 6,
    "checkpoint_every": 2,
    "log_every": 2,
    "task": {"family": "quadratic", "configs": [{"base_width": 4, "batch_size": 2}]},
    "lopt": {"kind": "mlp_lopt", "hidden_size": 2, "num_hidden_layers": 0, "time_features": False,
             "step_features": False, "features": ["grad", "momentum_0.9"], "momentum_decays": [0.9],
             "factored_decays": [0.9]},
    "estimator": {"name": "pes", "num_tasks": 1, "num_perturbations": 1, "truncation_length": 2,
                  "min_horizon": 4, "max_horizon": 4},
    "outer": {"learning_rate": 1e-2},
}
TIMING = ("step_s", "inner_steps_per_s", "wall_s", "compile_s")


def folder_digest(path):
    """Every file's sha256 and every folder under ``path`` (empty dict when it does not exist)."""
    digest = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                digest[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
        for name in dirnames:
            digest[os.path.relpath(os.path.join(dirpath, name), path) + "/"] = "dir"
    return digest


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    out = dict(os.environ)
    out.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_PLATFORMS="cpu")
    out["PYTHONPATH"] = ROOT + os.pathsep + out.get("PYTHONPATH", "")
    out["XLA_FLAGS"] = TEST_XLA_FLAGS
    out.pop(faults.ENV, None)
    return out


def run_cli(env, *args, crash_at=None):
    full_env = dict(env)
    if crash_at:
        full_env[faults.ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "metaopt.meta_train", "--no-progress", *map(str, args)],
                          cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding the micro config and, once ``reference`` ran, a finished run folder."""
    root = tmp_path_factory.mktemp("ws")
    (root / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    return root


@pytest.fixture(scope="module")
def reference(workspace, env):
    """An uninterrupted micro run in its own process: its folder (kept unchanged by every test)."""
    run_dir = workspace / "reference"
    proc = run_cli(env, "--config", workspace / "micro.yaml", f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    return run_dir


def final_record(run_dir):
    """(state leaves of the newest checkpoint, theta leaves, metrics without timings) of a run folder."""
    step, path = run_ckpts.list_checkpoints(str(run_dir))[0]
    state, meta = run_ckpts.load_state(path)
    _, theta = metaopt.load(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    metrics = [{k: v for k, v in r.items() if k not in TIMING} for r in records if "meta_loss" in r]
    return step, [np.asarray(x) for x in jax.tree.leaves(state)], [np.asarray(x) for x in jax.tree.leaves(theta)], metrics


def assert_bit_identical(a, b):
    step_a, state_a, theta_a, metrics_a = a
    step_b, state_b, theta_b, metrics_b = b
    assert step_a == step_b
    assert len(state_a) == len(state_b) and len(theta_a) == len(theta_b)
    for x, y in zip(state_a + theta_a, state_b + theta_b):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    assert metrics_a == metrics_b


# ---------------------------------------------------------------- kill and resume


# One kill at every phase of a run, in the order a run meets them. Each kill is followed by the
# next run resuming the folder, so every kill is also a test of resuming what the previous one left.
CHAIN = [("compile", None), ("step", 3), ("checkpoint", 4), ("theta", 6), ("end", None)]


def test_kill_at_every_phase_then_resume_is_bit_identical(workspace, reference, env):
    run_dir = workspace / "killed"
    config = workspace / "micro.yaml"
    for i, (phase, at) in enumerate(CHAIN):
        proc = run_cli(env, "--config", config, f"run_dir={run_dir}",
                       crash_at=phase if at is None else f"{phase}:{at}")
        assert proc.returncode == faults.CRASH_STATUS, (phase, proc.stderr)
        owner = read_owner(str(run_dir))
        assert owner is not None and owner["pid"] != os.getpid()  # the dead process still named
        if i:  # the previous process was killed holding the lock
            assert "taking over the lock of process" in proc.stderr, proc.stderr
        steps = [s for s, _ in run_ckpts.list_checkpoints(str(run_dir))]
        theta_step = (ckpt_lib.load_metadata(run_dir)["outer_step"]
                      if os.path.isdir(run_dir / "theta") else None)
        if phase == "compile":
            assert steps == [] and theta_step is None
        elif phase == "step":
            assert steps == [2] and theta_step == 2
        elif phase == "checkpoint":  # killed before the rename: the step-4 save is a temporary folder
            assert steps == [2] and theta_step == 2
            assert any("tmp" in n for n in os.listdir(run_dir / "checkpoints"))
        elif phase == "theta":  # the checkpoint of the last step is there, theta/ still from step 4
            assert steps == [6, 4] and theta_step == 4
        else:  # the resume that met "end" found a finished run with a stale theta/ and repaired it
            assert steps == [6, 4] and theta_step == 6
            assert "theta: rewritten from the checkpoint of outer step 6 (it held outer step 4)" in proc.stderr
    status = cli.main(["--config", str(config), f"run_dir={run_dir}", "--no-progress"])
    assert status == 0
    assert read_owner(str(run_dir)) is None  # released: the lock file is empty
    assert not [n for n in os.listdir(run_dir / "checkpoints") if "tmp" in n]
    assert_bit_identical(final_record(run_dir), final_record(reference))


def test_truncated_theta_of_a_finished_run_is_rewritten(workspace, reference, capsys):
    run_dir = workspace / "truncated"
    shutil.copytree(reference, run_dir)
    arrays = [os.path.join(d, f) for d, _, fs in os.walk(run_dir / "theta" / "tree") for f in fs]
    biggest = max(arrays, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    with pytest.raises(ckpt_lib.CheckpointError):
        metaopt.load(run_dir)
    assert cli.main(["--config", str(workspace / "micro.yaml"), f"run_dir={run_dir}", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "theta: rewritten from the checkpoint of outer step 6 (it did not verify" in err
    assert "finished at outer step 6/6" in err
    assert_bit_identical(final_record(run_dir), final_record(reference))


def test_every_checkpoint_corrupt_restarts_from_zero_and_says_so(workspace, reference, capsys):
    run_dir = workspace / "all_corrupt"
    shutil.copytree(reference, run_dir)
    for _, path in run_ckpts.list_checkpoints(str(run_dir)):
        files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(path, "state")) for f in fs]
        target = max(files, key=os.path.getsize)
        data = bytearray(open(target, "rb").read())
        data[len(data) // 2] ^= 0x01
        open(target, "wb").write(bytes(data))
    status = cli.main(["--config", str(workspace / "micro.yaml"), f"run_dir={run_dir}", "--no-progress"])
    assert status == 0
    err = capsys.readouterr().err
    assert err.count("warning: skipping checkpoint") == 2
    assert "no checkpoint in" in err and "verified; starting again from outer step 0" in err
    assert_bit_identical(final_record(run_dir), final_record(reference))


def test_second_process_on_a_run_folder_is_refused(workspace, reference, env):
    run_dir = workspace / "busy"
    shutil.copytree(reference, run_dir)
    before = folder_digest(run_dir)
    with RunLock(str(run_dir)):
        after_lock = folder_digest(run_dir)
        proc = run_cli(env, "--config", workspace / "micro.yaml", f"run_dir={run_dir}", "--fresh", "seed=1")
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: run_dir: '{run_dir}' is in use by process "
                                                       f"{os.getpid()} on host"), proc.stderr
        assert folder_digest(run_dir) == after_lock
    assert {k: v for k, v in folder_digest(run_dir).items() if k != LOCK_FILE} == \
        {k: v for k, v in before.items() if k != LOCK_FILE}


def test_stall_is_said_once_in_progress_and_metrics(workspace, capsys):
    run_dir = workspace / "stalled"
    status = cli.main(["--config", str(workspace / "micro.yaml"), f"run_dir={run_dir}", "--no-progress",
                       "lopt.lambda1=1e4", "stall_steps=2", "log_every=1", "outer_steps=5"])
    assert status == 0
    err = capsys.readouterr().err
    assert err.count("not learning") == 1
    assert ("warning: not learning: the meta-gradient is exactly zero at every outer step since step 1 "
            "(2 in a row); theta is not improving") in err
    with open(run_dir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f if "meta_loss" in line]
    flagged = [r for r in records if r.get("stalled")]
    assert [r["step"] for r in flagged] == [2] and flagged[0]["stalled_since"] == 1
    # Every inner run is at the loss ceiling: counted as diverged.
    assert all(r["diverged"] == 1.0 and r["grad_norm"] == 0.0 for r in records)


# ---------------------------------------------------------------- bit flips


def _flips(original, parse):
    """(refused, read) over every single-bit flip of ``original``; a flip that reads must leave the
    content as it was ("1e-08" -> "1E-08")."""
    content = json.loads(original)
    refused = same = 0
    flipped = bytearray(original)
    for byte in range(len(original)):
        for bit in range(8):
            flipped[byte] ^= 1 << bit
            try:
                parsed = parse(bytes(flipped))
            except ckpt_lib.CheckpointError:
                refused += 1
            else:
                assert parsed == content, (byte, bit)
                same += 1
            flipped[byte] ^= 1 << bit
    return refused, same


def test_every_single_bit_flip_of_a_checkpoint_record_is_refused(tmp_path):
    lopt = metaopt.MLPLOpt(hidden_size=2, num_hidden_layers=0, features=("grad",), momentum_decays=(0.9,),
                           factored_decays=(0.9,), time_features=False, step_features=False)
    path = tmp_path / "lopt"
    metaopt.save(path, lopt, lopt.init(jax.random.key(0)), metadata={"num_steps": 100, "outer_step": 40})
    checksums = (path / ckpt_lib.CHECKSUMS).read_bytes()
    refused, same = _flips(checksums, ckpt_lib.parse_checksums)
    assert refused == 8 * len(checksums) and same == 0
    # The checksums cover every other file: one flip anywhere on disk is refused.
    for name in (ckpt_lib.CHECKSUMS, "record/metadata", "tree/_METADATA", "_CHECKPOINT_METADATA"):
        original = (path / name).read_bytes()
        flipped = bytearray(original)
        flipped[len(original) // 2] ^= 0x04
        (path / name).write_bytes(bytes(flipped))
        for load in (metaopt.load, ckpt_lib.load_metadata):
            with pytest.raises(ckpt_lib.CheckpointError):
                load(path)
        (path / name).write_bytes(original)
    metaopt.load(path)


def test_every_single_bit_flip_of_a_format_2_manifest_is_refused_or_changes_nothing():
    original = (ckpt_lib.shipped_path("schedule-adamw") / ckpt_lib.MANIFEST).read_bytes()
    refused, same = _flips(original, ckpt_lib.parse_manifest)
    assert refused + same == 8 * len(original) and refused > 0.99 * 8 * len(original)


@pytest.mark.parametrize("field, old, new", [
    ("lambda2", '"lambda2": 0.001', '"lambda2": 0.003'),
    ("eps", '"eps": 1e-08', '"eps": 1e-09'),
    ("second_moment_decay", '"second_moment_decay": 0.999', '"second_moment_decay": 0.998'),
    ("num_steps", '"num_steps": 100', '"num_steps": 101'),
    ("outer_step", '"outer_step": 40', '"outer_step": 41'),
])
def test_a_changed_record_value_does_not_load(tmp_path, field, old, new):
    lopt = metaopt.MLPLOpt(hidden_size=2, num_hidden_layers=0)
    path = tmp_path / "lopt"
    metaopt.save(path, lopt, lopt.init(jax.random.key(0)), metadata={"num_steps": 100, "outer_step": 40})
    record = path / "record" / "metadata"
    text = record.read_text()
    assert text.count(old) == 1
    record.write_text(text.replace(old, new))
    with pytest.raises(ckpt_lib.CheckpointError, match="record/metadata is corrupt or truncated"):
        metaopt.load(path)
    with pytest.raises(ckpt_lib.CheckpointError, match="record/metadata is corrupt or truncated"):
        ckpt_lib.load_metadata(path)


def test_format_1_and_2_checkpoints_still_load(tmp_path):
    # The shipped weights are format 2; format 1 is format 2 without the manifest's own digest.
    shipped = ckpt_lib.shipped_path("lo-mlp-sp")
    lopt, theta = metaopt.load(shipped)
    path = tmp_path / "old"
    shutil.copytree(shipped, path)
    manifest = json.loads((path / ckpt_lib.MANIFEST).read_text())
    manifest.pop(ckpt_lib.DIGEST)
    manifest["format_version"] = 1
    (path / ckpt_lib.MANIFEST).write_text(json.dumps(manifest))
    again, loaded = metaopt.load(path)
    assert again == lopt and ckpt_lib.load_metadata(path) == ckpt_lib.load_metadata(shipped)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(theta)))
    text = (shipped / ckpt_lib.MANIFEST).read_text()
    (path / ckpt_lib.MANIFEST).write_text(text.replace('"lambda2": 0.001', '"lambda2": 0.003', 1))
    with pytest.raises(ckpt_lib.CheckpointError, match="corrupt manifest"):
        metaopt.load(path)


def test_format_2_run_checkpoints_still_resume(workspace, reference, capsys):
    # A run folder whose checkpoint of outer step 4 was written before they were orbax composites.
    from metaopt.meta_train import config as config_lib, run as run_lib

    run_dir = workspace / "format_2"
    shutil.copytree(reference, run_dir)
    (newest, newest_path), (_, path) = run_ckpts.list_checkpoints(str(run_dir))
    shutil.rmtree(newest_path)
    built = run_lib.build(config_lib.load_config(str(workspace / "micro.yaml"), [f"run_dir={run_dir}"]))
    reader = run_ckpts.RunCheckpoints(str(run_dir))
    step, state = reader.restore_latest(run_lib._initial_state(built)[0])
    reader.close()
    _, record = run_ckpts.load_state(path)
    shutil.rmtree(path)
    is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
    write_format_2(str(path), jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, state), record)
    assert cli.main(["--config", str(workspace / "micro.yaml"), f"run_dir={run_dir}", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (newest, step) == (6, 4) and "finished at outer step 6/6" in err and "skipping" not in err, err
    assert_bit_identical(final_record(run_dir), final_record(reference))


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def battery(workspace, reference):
    """A folder for the bad-input battery: a finished run, a non-run folder, and bad config files."""
    root = workspace / "battery"
    root.mkdir()
    shutil.copytree(reference, root / "run")
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("mine")
    (root / "a_file").write_text("not a folder")
    (root / "dup.yaml").write_text(yaml.safe_dump(MICRO) + "seed: 4\n")
    (root / "latin1.yaml").write_bytes(yaml.safe_dump(MICRO).encode() + b"name: caf\xe9\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "configs_dir").mkdir()
    # A run folder whose config.yaml says seed 4 but whose checkpoints were made with seed 3.
    shutil.copytree(reference, root / "foreign")
    saved = yaml.safe_load((root / "foreign" / "config.yaml").read_text())
    saved["seed"] = 4
    (root / "foreign" / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return root


# (arguments after --config, or a replacement --config; the start of the one error line)
TRAIN_CASES = [
    (["seed=1180591620717411303424"], "error: seed: expected an int in [0, 4294967295]"),  # 2**70
    (["seed=4294967296"], "error: seed: expected an int in [0, 4294967295]"),
    (["seed=-1"], "error: seed: expected an int >= 0"),
    (["lopt.num_hidden_layers=2", "lopt.hidden_size=1000000000000"], "error: lopt: theta alone is 3.47e+06 EiB (hidden_size=1000000000000, num_hidden_layers=2)"),
    (["estimator.num_tasks=4", "estimator.truncation_length=1000000000"],
     "error: estimator.truncation_length: the population takes 8000000000 inner steps per outer step"),
    (["estimator.num_tasks=4000000000"], "error: estimator.num_tasks: expected an int in [1, 2147483647]"),
    (["lopt.eps=.nan"], "error: lopt.eps: expected a finite number"),
    (["lopt.eps=0"], "error: lopt.eps: expected a number > 0"),
    (["lopt.lambda1=abc"], "error: lopt.lambda1: expected a number > 0 or None, got 'abc'"),
    (["lopt.lambda2=-.inf"], "error: lopt.lambda2: expected a finite number"),
    (["lopt.momentum_decays=0.9"], "error: lopt.momentum_decays: expected a non-empty list of decays in [0, 1)"),
    (["lopt.momentum_decays=[0.9, 1.5]"], "error: lopt.momentum_decays: expected a non-empty list of decays"),
    (["lopt.hidden_size=2.5"], "error: lopt.hidden_size: expected an int"),
    (["lopt.num_hidden_layers=-1"], "error: lopt.num_hidden_layers: expected an int >= 0"),
    (["lopt.mup=maybe"], "error: lopt.mup: expected True or False"),
    (["lopt.second_moment_decay=1.0"], "error: lopt.second_moment_decay: expected a number in [0, 1)"),
    (["lopt.kind=adam"], "error: lopt.kind: expected one of"),
    (["outer_steps=2.5"], "error: outer_steps: expected an int >= 0, got 2.5"),
    (["outer_steps=2147483648"], "error: outer_steps: expected an int in [0, 2147483647]"),
    (["outer.learning_rate=.inf"], "error: outer.learning_rate: expected a finite number"),
    (["outer.optimizer=sgd"], "error: outer.optimizer: expected one of"),
    (["estimator.sigma=.nan"], "error: estimator.sigma: expected a finite number"),
    (["task.family_kwargs={scale: .nan}"], "error: task.family_kwargs.scale: expected a finite number"),
    (["stall_steps=0"], "error: stall_steps: expected an int >= 1"),
    (["log_every=-2"], "error: log_every: expected an int >= 1"),
    (["name=a/b"], "error: name: expected letters, digits"),
    (["outer_steps"], "error: override 'outer_steps': expected key=value"),
    (["--max-outer-steps-this-run", "0"], "error: --max-outer-steps-this-run: expected a positive int"),
    (["--resume", "--fresh"], "error: argument --fresh/--overwrite: not allowed with argument --resume"),
    (["run_dir={root}/a_file"], "error: run_dir: '{root}/a_file' exists and is not a folder"),
    (["run_dir={root}/notes", "--fresh"], "error: run_dir: '{root}/notes' exists and is not a metaopt run folder"),
    (["run_dir={root}/nothing", "--resume"], "error: --resume: no run folder at '{root}/nothing'"),
    (["seed=5"], "error: run_dir: '{root}/run' was made by a different config (seed: 3 -> 5)"),
    (["run_dir={root}/foreign", "seed=4"],
     "error: run_dir: '{root}/foreign' holds the checkpoint of outer step 6 made by a different config "
     "(seed: 3 -> 4)"),
    (["--config={root}/dup.yaml"], "error: --config: {root}/dup.yaml: duplicate key 'seed'"),
    (["--config={root}/latin1.yaml"], "error: --config: '{root}/latin1.yaml' is not UTF-8 text"),
    (["--config={root}/configs_dir"], "error: --config: '{root}/configs_dir' is a folder"),
    (["--config={root}/missing.yaml"], "error: --config: no such file '{root}/missing.yaml'"),
    (["--config={root}/list.yaml"], "error: --config: {root}/list.yaml: expected a mapping at the top level"),
]


@pytest.mark.parametrize("args, message", TRAIN_CASES, ids=[" ".join(a) for a, _ in TRAIN_CASES])
def test_meta_train_bad_input(battery, workspace, capsys, args, message):
    root = str(battery)
    args = [a.replace("{root}", root) for a in args]
    config = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), str(workspace / "micro.yaml"))
    args = [a for a in args if not a.startswith("--config=")]
    if not any(a.startswith("run_dir=") for a in args):
        args.append(f"run_dir={root}/run")
    before = folder_digest(battery)
    status = cli.main(["--config", config, "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith(message.replace("{root}", root)), err
    assert folder_digest(battery) == before


def test_overrides_may_follow_flags(battery, workspace, capsys):
    # Parsed (the override after the flag is applied): the error is about the value, not the syntax.
    status = cli.main(["--config", str(workspace / "micro.yaml"), "outer_steps=5", "--fresh", "seed=-7",
                       f"run_dir={battery}/run"])
    assert status == 2
    assert capsys.readouterr().err.strip() == "error: seed: expected an int >= 0, got -7"


def _lopt():
    return metaopt.MLPLOpt(hidden_size=2, num_hidden_layers=0)


def _schedule():
    return metaopt.LearnedSchedule(hidden_size=2, num_hidden_layers=0)


LIBRARY_CASES = [
    (lambda: metaopt.MLPLOpt(hidden_size="abc"), TypeError, "hidden_size: expected an int >= 1, got 'abc'"),
    (lambda: metaopt.MLPLOpt(hidden_size=2.5), TypeError, "hidden_size: expected an int >= 1, got 2.5"),
    (lambda: metaopt.MLPLOpt(hidden_size=0), ValueError, "hidden_size: expected an int >= 1, got 0"),
    (lambda: metaopt.MLPLOpt(eps=math.nan), ValueError, "eps: expected a number > 0, got nan"),
    (lambda: metaopt.MLPLOpt(lambda1="abc"), TypeError, "lambda1: expected a number > 0 or None"),
    (lambda: metaopt.MLPLOpt(momentum_decays=0.9), TypeError, "momentum_decays: expected a non-empty list"),
    (lambda: metaopt.MLPLOpt(mup=1), TypeError, "mup: expected True or False, got 1"),
    (lambda: metaopt.MLPLOpt(features="grad"), TypeError, "features: expected None or a list"),
    (lambda: metaopt.LearnedSchedule(base="rmsprop"), ValueError, "base: expected one of"),
    (lambda: metaopt.LearnedSchedule(b2=1.0), ValueError, "b2: expected a number in [0, 1)"),
    (lambda: metaopt.LearnedSchedule(max_multiplier=math.inf), ValueError, "max_multiplier: expected a number >= 1"),
    (lambda: metaopt.LearnedSchedule(hidden_size=None), TypeError, "hidden_size: expected an int >= 1"),
    (lambda: _lopt().transform(_lopt().init(jax.random.key(0)), "100"), TypeError,
     "num_steps: expected a positive whole number of steps, got '100'"),
    (lambda: _lopt().transform(_lopt().init(jax.random.key(0)), 2.5), ValueError,
     "num_steps: expected a positive whole number of steps, got 2.5"),
    (lambda: _lopt().transform(_lopt().init(jax.random.key(0)), 0), ValueError,
     "num_steps: expected a positive whole number of steps, got 0"),
    (lambda: _lopt().transform(_lopt().init(jax.random.key(0)), True), TypeError,
     "num_steps: expected a positive whole number of steps, got True"),
    (lambda: _schedule().transform(_schedule().init(jax.random.key(0)), None),
     TypeError, "num_steps: expected a positive whole number of steps, got None"),
]


@pytest.mark.parametrize("make, error, message", LIBRARY_CASES, ids=[m for _, _, m in LIBRARY_CASES])
def test_library_bad_input(make, error, message):
    with pytest.raises(error) as info:
        make()
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith(message), text


@pytest.fixture(scope="module")
def eval_battery(tmp_path_factory):
    """A saved learned optimizer with its task, a finished-looking output folder, and bad suite files."""
    root = tmp_path_factory.mktemp("eval_battery")
    lopt = _lopt()
    metaopt.save(root / "lopt", lopt, lopt.init(jax.random.key(0)),
                 metadata={"task": {"family": "quadratic", "family_kwargs": {}, "config": {"base_width": 4}},
                           "num_steps": 8, "outer_step": 1})
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("mine")
    (root / "dup.yaml").write_text("suite: s\naxis: width\nvalues: [1]\naxis: depth\n")
    (root / "latin1.yaml").write_bytes(b"suite: caf\xe9\naxis: width\nvalues: [1]\n")
    (root / "suite_dir.yaml").mkdir()
    return root


EVAL_CASES = [
    (["--suite", "nope"], "error: suite: unknown suite 'nope'"),
    (["--suite", "{root}/dup.yaml"], "error: suite: {root}/dup.yaml: duplicate key 'axis'"),
    (["--suite", "{root}/latin1.yaml"], "error: suite: '{root}/latin1.yaml' is not UTF-8 text"),
    (["--suite", "{root}/suite_dir.yaml"], "error: suite: '{root}/suite_dir.yaml' is a folder"),
    (["--checkpoint", "{root}/missing"], "error: checkpoint: no such folder"),
    (["seeds=0"], "error: seeds: expected an int >= 1, got 0"),
    (["confidence=.nan"], "error: confidence: expected a finite number"),
    (["divergence_tolerance=.inf"], "error: divergence_tolerance: expected a finite number"),
    (["values=[1, 2.5]"], "error: values[1]: expected an int >= 1, got 2.5"),
    (["tuning.warmup_fraction=.nan"], "error: tuning.warmup_fraction: expected a finite number"),
    (["tuning.seed=1180591620717411303424"], "error: tuning.seed: expected an int in [0, 4294967295]"),
    (["--out", "{root}/notes"], "error: out: {root}/notes is a non-empty folder that is not an evaluation"),
    (["--no-plots", "seeds=-1", "--no-progress"], "error: seeds: expected an int >= 1, got -1"),
]


@pytest.mark.parametrize("args, message", EVAL_CASES, ids=[" ".join(a) for a, _ in EVAL_CASES])
def test_evaluate_bad_input(eval_battery, capsys, args, message):
    from metaopt.evaluate import cli as eval_cli

    root = str(eval_battery)
    args = [a.replace("{root}", root) for a in args]
    if "--checkpoint" not in args:
        args = ["--checkpoint", f"{root}/lopt", *args]
    if "--suite" not in args:
        args = ["--suite", "width_transfer", *args]
    if "--out" not in args:
        args += ["--out", f"{root}/out"]
    before = folder_digest(eval_battery)
    with pytest.raises(SystemExit) as info:
        eval_cli.main(args)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith(message.replace("{root}", root)), err
    assert folder_digest(eval_battery) == before


def test_the_battery_holds_at_least_40_cases():
    assert len(TRAIN_CASES) + 1 + len(LIBRARY_CASES) + len(EVAL_CASES) >= 40


# ---------------------------------------------------------------- plots


def _curve_cell(per_seed):
    steps = list(range(len(per_seed[0])))
    return {"status": "done", "name": "c", "family": "f", "num_steps": len(steps), "target": None,
            "optimizers": {"a": {"diverged": [False] * len(per_seed),
                                 "curve": {"steps": steps, "per_seed": per_seed}}}}


def test_curve_bands_are_named_and_never_invented_on_a_log_axis():
    from matplotlib.collections import PolyCollection

    from metaopt.evaluate import plots

    # Three seeds far apart: the 95% t-interval of the mean reaches below zero at every step.
    fig = plots.curves_figure(_curve_cell([[1.0, 0.5, 0.2], [1.0, 0.6, 0.3], [9.0, 8.0, 7.0]]), ["a"], 0.95)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "bands: 95% t-interval of the mean over non-diverged seeds" in ax.get_title()
    bottom = ax.get_ylim()[0]
    band = next(c for c in ax.collections if isinstance(c, PolyCollection))
    lows = band.get_paths()[0].vertices[:, 1]
    # The lower edge runs at the axis floor (no data bound), not at mean / 10 or another made-up value.
    assert np.isclose(lows.min(), bottom)
    means = np.array([11 / 3, 9.1 / 3, 7.5 / 3])
    assert not np.any(np.isclose(lows[:, None], means[None, :] / 10))
    # The floor itself comes from the data that can be drawn (the means): nothing far below them.
    assert bottom > 0.5 * means.min() / 1.5


def _summary(mean, lo, hi):
    return {"mean": mean, "ci_low": lo, "ci_high": hi}


def _axis_cells(lost):
    cells = []
    for x, mean in ((8.0, 1.0), (16.0, 0.8)):
        opts = {"a": {"final_train_loss": _summary(mean, mean - 2.0, mean + 2.0),
                      "final_eval_loss": _summary(mean, mean - 0.1, mean + 0.1)},
                "b": {"final_train_loss": _summary(None if lost and x == 16.0 else 2.0, 1.5, 2.5),
                      "final_eval_loss": _summary(2.0, 1.5, 2.5)}}
        cells.append({"status": "done", "x": x, "name": f"w{x:g}", "optimizers": opts})
    return cells


@pytest.mark.parametrize("lost", [False, True])
def test_final_vs_axis_title_mentions_diverged_marks_only_when_there_are_some(lost):
    from metaopt.evaluate import plots

    fig = plots.final_vs_axis_figure(_axis_cells(lost), ["a", "b"], "width", 0.9)
    title = fig._suptitle.get_text()
    assert "bands: 90% t-interval of the mean over non-diverged seeds" in title
    assert ("(x: all seeds diverged)" in title) == lost
    train = fig.axes[0]
    assert train.get_yscale() == "log" and train.get_ylim()[0] > 0.5


def test_evaluation_manifest_and_cells_refuse_a_changed_byte(tmp_path, capsys):
    from metaopt.evaluate import store

    out = str(tmp_path / "eval")
    manifest = {"suite": "s", "theta_sha256": "ab" * 32, "fingerprint": "f" * 16, "suite_config": {"seeds": 3}}
    store.open_output(out, manifest)
    store.save_cell(out, {"name": "c", "fingerprint": "f" * 16, "loss": 0.25})
    assert store.load_cell(out, "c", "f" * 16) == {"name": "c", "fingerprint": "f" * 16, "loss": 0.25}
    cell = store.cell_path(out, "c")
    with open(cell) as f:
        text = f.read()
    with open(cell, "w") as f:
        f.write(text.replace("0.25", "0.35"))
    assert store.load_cell(out, "c", "f" * 16) is None
    assert "does not match its record_sha256; running the cell again" in capsys.readouterr().err
    path = os.path.join(out, store.MANIFEST)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace('"seeds": 3', '"seeds": 4'))
    before = folder_digest(out)
    with pytest.raises(store.OutputMismatchError, match="does not match its record_sha256"):
        store.open_output(out, manifest)
    assert folder_digest(out) == before
