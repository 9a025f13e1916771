"""The meta-training program: config validation, run folder, resume, devices, the shipped configs.

Runs go through the real command line in subprocesses (so exit codes, SIGKILL and forced host
devices are real) with a shared persistent compilation cache, on a tiny noisy-quadratic task so that
each run costs about a compilation.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import metaopt
from metaopt import checkpoint as ckpt_lib
from metaopt import tasks as tasks_lib
from metaopt.meta_train import cli, config as config_lib, run as run_lib
from conftest import TEST_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SHIPPED = ["quickstart", "mulo_mlp", "lo_mlp_sp", "temporal_lo_es", "schedule_es", "schedule_tbptt"]

TINY = {
    "name": "tiny",
    "seed": 3,
    "outer_steps": 24,
    "checkpoint_every": 5,
    "log_every": 4,
    "task": {"family": "quadratic", "configs": [{"base_width": 8, "batch_size": 4}]},
    "lopt": {"kind": "mlp_lopt", "hidden_size": 8, "num_hidden_layers": 1},
    "estimator": {"name": "pes", "num_tasks": 2, "num_perturbations": 2, "truncation_length": 4,
                  "min_horizon": 8, "max_horizon": 16},
    "outer": {"learning_rate": 1e-2, "warmup_steps": 2, "final_learning_rate": 1e-3},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    out = dict(os.environ)
    out.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_PLATFORMS="cpu")
    out["PYTHONPATH"] = ROOT + os.pathsep + out.get("PYTHONPATH", "")
    out["XLA_FLAGS"] = TEST_XLA_FLAGS
    return out


def cli_args(config_path, *args):
    return [sys.executable, "-m", "metaopt.meta_train", "--config", str(config_path), "--no-progress", *args]


def run_cli(env, config_path, *args, extra_env=None):
    full_env = dict(env, **(extra_env or {}))
    return subprocess.run(cli_args(config_path, *args), cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference_run(env, tiny_config, tmp_path_factory):
    """An uninterrupted tiny run: (run_dir, theta)."""
    run_dir = tmp_path_factory.mktemp("runs") / "reference"
    proc = run_cli(env, tiny_config, f"run_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    _, theta = metaopt.load(run_dir)
    return run_dir, theta


def assert_same_theta(a, b, exact=True):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        if exact:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-3, atol=2e-5)


def folder_digest(path):
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


# ---------------------------------------------------------------- configs and overrides


def test_overrides_parse_dotted_keys_and_scalars():
    raw = config_lib.apply_overrides(TINY, ["estimator.num_tasks=4", "outer.learning_rate=1e-3",
                                            "estimator=tbptt", "task.configs=[{base_width: 4}]",
                                            "outer.final_learning_rate=null"])
    cfg = config_lib.resolve(raw)
    assert cfg["estimator"]["num_tasks"] == 4 and cfg["estimator"]["name"] == "tbptt"
    assert cfg["outer"]["learning_rate"] == pytest.approx(1e-3)
    assert cfg["outer"]["final_learning_rate"] is None
    assert cfg["task"]["configs"] == [{"base_width": 4}]
    assert cfg["run_dir"] == os.path.join("runs", "tiny")
    assert TINY["estimator"]["num_tasks"] == 2  # the input is not modified
    # A bare name picks a config shipped with the package.
    assert config_lib.load_config("quickstart")["name"] == "quickstart"


@pytest.mark.parametrize("override, message", [
    ("estimator.num_tasks=-3", "error: estimator.num_tasks: expected an int >= 1, got -3"),
    ("outer_stepz=3", "error: outer_stepz: unknown key"),
    ("outer.learning_rate=fast", "error: outer.learning_rate: expected a number"),
    ("estimator.name=sgd", "error: estimator.name: expected one of"),
    ("seed=true", "error: seed: expected an int >= 0"),
    ("lopt.hidden_size=1.5", "error: lopt.hidden_size: expected an int"),
    ("lopt.colour=red", "error: lopt.colour: unknown key for lopt 'mlp_lopt'"),
    ("task.family=imagenet", "error: task.family: unknown family 'imagenet'"),
    ("task.configs=[{base_width: 0}]", "error: task.configs[0]."),
    ("estimator.min_horizon=64", "error: estimator.min_horizon"),
    ("estimator.temperature=2", "error: estimator.temperature"),
    ("devices=8", "error: devices:"),
    ("execution.member_map=pmap", "error: execution.member_map: expected one of"),
    ("execution.member_batch=0", "error: execution.member_batch: expected an int >= 1"),
    ("execution.rows=4", "error: execution.rows: unknown key"),
    ("not_a_pair", "error: override 'not_a_pair'"),
])
def test_bad_input_exits_2_and_leaves_run_folder_byte_identical(reference_run, tiny_config, capsys,
                                                                override, message):
    run_dir, _ = reference_run
    before = folder_digest(run_dir)
    status = cli.main(["--config", str(tiny_config), f"run_dir={run_dir}", override])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith(message), err
    assert len(err.splitlines()) == 1
    assert folder_digest(run_dir) == before


@pytest.mark.parametrize("key", ["horizon", "eval_every", "std", "loss_clip", "unroll_length"])
def test_estimator_keys_no_estimator_has_are_refused(tiny_config, tmp_path, capsys, key):
    run_dir = tmp_path / "run"
    status = cli.main(["--config", str(tiny_config), f"run_dir={run_dir}", f"estimator.{key}=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"error: estimator.{key}: unknown key for estimator 'pes'; allowed: "
                             "['name', 'num_tasks', 'truncation_length'"), err[0]
    assert not run_dir.exists()


def test_print_config_prints_the_resolved_config_and_writes_nothing(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    status = cli.main(["--config", str(tiny_config), f"run_dir={run_dir}", "outer_steps=30",
                       "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert status == 0 and not run_dir.exists()
    cfg = config_lib.resolve(dict(TINY, outer_steps=30, run_dir=str(run_dir)))
    assert printed == run_lib.build(cfg).cfg
    # Every setting is spelled out, defaults included.
    assert printed["outer_steps"] == 30 and printed["estimator"]["remat"] is True
    assert "eps" in printed["lopt"]


def test_run_folder_of_another_config_is_refused(reference_run, tiny_config, capsys, env, tmp_path):
    run_dir, _ = reference_run
    before = folder_digest(run_dir)
    status = cli.main(["--config", str(tiny_config), f"run_dir={run_dir}", "estimator.sigma=0.02"])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: run_dir: '{run_dir}' was made by a different config (estimator.sigma: 0.01 -> 0.02); "
        "use --fresh to start over or choose another run_dir"]
    assert folder_digest(run_dir) == before
    # A real process: the exit status and stderr are what a user sees.
    missing = run_cli(env, tmp_path / "missing.yaml")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: --config: no such file '{tmp_path / 'missing.yaml'}'"]
    unknown = run_cli(env, tiny_config, f"run_dir={run_dir}", "estimator.num_tasks=-3")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == ["error: estimator.num_tasks: expected an int >= 1, got -3"]
    # A folder that is not a run folder is never reused or deleted, even with --fresh.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    for extra in ([], ["--fresh"]):
        assert cli.main(["--config", str(tiny_config), f"run_dir={other}", *extra]) == 2
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(config_lib.ConfigError, match="--resume: no run folder"):
        run_lib.plan_run_dir(config_lib.resolve(dict(TINY, run_dir=str(tmp_path / "none"))), resume=True)


def test_schedule_difference_names_the_first_step_whose_learning_rate_changes():
    cosine = config_lib.resolve(dict(TINY, outer_steps=10))
    longer = config_lib.resolve(dict(TINY, outer_steps=20))
    # Warm-up (2 steps) and the step where the cosine starts do not depend on the length.
    assert config_lib.schedule_difference(cosine, longer, 3) is None
    assert config_lib.schedule_difference(cosine, longer, 4) == (
        "outer_steps: outer step 3 took its learning rate from a schedule of 10 steps, not 20")
    extended = config_lib.resolve(dict(TINY, outer_steps=20, outer=dict(TINY["outer"],
                                                                          schedule_history=[[10, 10]])))
    assert config_lib.schedule_difference(cosine, extended, 10) is None
    assert config_lib.schedule_horizon(extended, 9) == 10 and config_lib.schedule_horizon(extended, 10) == 20
    constant = config_lib.resolve(dict(TINY, outer_steps=10, outer={"learning_rate": 1e-2}))
    assert config_lib.schedule_difference(constant, dict(constant, outer_steps=99), 10) is None
    # The extended schedule is the old one before step 10 and the new one from there.
    old = run_lib.make_outer_schedule(cosine["outer"], 10)
    new = run_lib.make_outer_schedule(longer["outer"], 20)
    both = run_lib.make_outer_schedule(extended["outer"], 20)
    for t in (0, 5, 9, 10, 15):
        assert float(both(t)) == float((old if t < 10 else new)(t))
    with pytest.raises(config_lib.ConfigError, match=r"^outer\.schedule_history\[0\]"):
        config_lib.resolve(dict(TINY, outer_steps=10, outer=dict(TINY["outer"], schedule_history=[[5, 12]])))


def test_a_run_made_before_a_field_existed_resumes_with_its_default(reference_run, tmp_path):
    run_dir = tmp_path / "older"
    shutil.copytree(reference_run[0], run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["estimator"]["meta_loss_scale"]  # as written before the field existed
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    cfg = config_lib.resolve(dict(TINY, run_dir=str(run_dir)))
    assert config_lib.run_difference(saved, cfg, cfg["outer_steps"]) is None
    assert run_lib.plan_run_dir(cfg).action == "resume"
    other = config_lib.resolve(dict(TINY, run_dir=str(run_dir), estimator=dict(TINY["estimator"],
                                                                               meta_loss_scale="log")))
    assert config_lib.run_difference(saved, other, cfg["outer_steps"]) == (
        "estimator.meta_loss_scale: 'linear' -> 'log'")


def test_a_finished_run_is_extended_by_raising_outer_steps(reference_run, tiny_config, env, tmp_path, capsys):
    run_dir = tmp_path / "extended"
    shutil.copytree(reference_run[0], run_dir)
    before = folder_digest(run_dir)
    # Shortening it, or changing what its steps compute, is refused and touches nothing.
    for args, start in ((["outer_steps=20"], "error: outer_steps: the run in"),
                        (["outer_steps=27", "estimator.sigma=0.02"],
                         "error: run_dir: '" + str(run_dir) + "' was made by a different config "
                         "(estimator.sigma: 0.01 -> 0.02)")):
        assert cli.main(["--config", str(tiny_config), f"run_dir={run_dir}", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(start), err
        assert folder_digest(run_dir) == before
    extended = run_cli(env, tiny_config, f"run_dir={run_dir}", "outer_steps=27")
    assert extended.returncode == 0, extended.stderr
    assert "extending tiny" in extended.stderr
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["outer_steps"] == 27 and saved["outer"]["schedule_history"] == [[24, 24]]
    # The extended run is exactly the run its config.yaml describes, run in one go.
    fresh = tmp_path / "fresh"
    one_go = run_cli(env, tiny_config, f"run_dir={fresh}", "outer_steps=27",
                     "outer.schedule_history=[[24, 24]]")
    assert one_go.returncode == 0, one_go.stderr
    assert_same_theta(metaopt.load(run_dir)[1], metaopt.load(fresh)[1])
    # Running the same command again resumes the extended run (its history is kept).
    again = run_cli(env, tiny_config, f"run_dir={run_dir}", "outer_steps=27")
    assert again.returncode == 0 and "finished at outer step 27/27" in again.stderr, again.stderr


# ---------------------------------------------------------------- the run folder


def test_run_folder_contents(reference_run):
    run_dir, theta = reference_run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    resolved = run_lib.build(config_lib.resolve(dict(TINY, run_dir=str(run_dir)))).cfg
    assert saved == resolved
    # Defaults of the estimator and the learned optimizer are spelled out.
    assert saved["estimator"]["sigma"] == 0.01 and saved["lopt"]["mup"] is True
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "meta_loss" in r]
    assert steps == [4, 8, 12, 16, 20, 24]
    assert all(np.isfinite(r["meta_loss"]) and r["inner_steps_per_s"] > 0 for r in records if "meta_loss" in r)
    assert any("compile_s" in r for r in records)
    assert glob.glob(str(run_dir / "events.out.tfevents.*"))
    # Checkpoints every 5 outer steps and at the end; the last two kept.
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["step_00000020", "step_00000024"]
    meta = ckpt_lib.load_metadata(run_dir)
    assert meta["outer_step"] == 24 and meta["num_steps"] == 16
    assert meta["task"]["family"] == "quadratic" and meta["task"]["config"]["base_width"] == 8
    assert meta["run_config"]["estimator"]["name"] == "pes"
    family = tasks_lib.get_family(meta["task"]["family"], **meta["task"]["family_kwargs"])
    family.make_config(**meta["task"]["config"])
    lopt, loaded = metaopt.load(run_dir / "theta")
    assert lopt == metaopt.MLPLOpt(hidden_size=8, num_hidden_layers=1)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(loaded))
    initial = lopt.init(jax.random.fold_in(jax.random.key(TINY["seed"]), 0))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(theta)))


def test_kill_damaged_save_stop_and_resume_give_identical_theta(reference_run, tiny_config, env, tmp_path):
    _, reference = reference_run
    run_dir = tmp_path / "killed"
    # 1. A real SIGKILL mid-run. checkpoint_every does not change the computation: saving at every
    # step slows the loop down so that the kill lands in the middle of the run.
    proc = subprocess.Popen(cli_args(tiny_config, f"run_dir={run_dir}", "checkpoint_every=1"), cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = run_lib.checkpoints.list_checkpoints(str(run_dir))
        if found and found[0][0] >= 6:
            proc.send_signal(signal.SIGKILL)
            killed_at = found[0][0]
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    # 2. A save cut short: the newest checkpoint loses a file, so it no longer verifies.
    newest_step, newest = run_lib.checkpoints.list_checkpoints(str(run_dir))[0]
    array_files = sorted(p for p in glob.glob(os.path.join(newest, "state", "**", "*"), recursive=True)
                         if os.path.isfile(p))
    os.remove(array_files[-1])
    # 3. Resume (the default for a run folder of the same config), stopping after 3 more steps.
    stopped = run_cli(env, tiny_config, f"run_dir={run_dir}", "--max-outer-steps-this-run", "3")
    assert stopped.returncode == 0, stopped.stderr
    assert "skipping checkpoint" in stopped.stderr and "resuming" in stopped.stderr
    resumed_from = metaopt.checkpoint.load_metadata(run_dir)["outer_step"] - 3
    assert resumed_from < newest_step
    # 4. Resume explicitly to the end.
    final = run_cli(env, tiny_config, f"run_dir={run_dir}", "--resume")
    assert final.returncode == 0, final.stderr
    _, theta = metaopt.load(run_dir)
    assert_same_theta(theta, reference)
    # The metrics of the resumed runs continue the earlier ones without repeats.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "meta_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == TINY["outer_steps"]
    assert {4, 8, 12, 16, 20, 24} <= set(steps)


def test_four_devices_match_one(reference_run, tiny_config, env, tmp_path):
    _, reference = reference_run
    # One process with 4 forced host devices: first a population that does not split over them
    # (refused before anything is written), then the reference run.
    odd, four = tmp_path / "odd", tmp_path / "four"
    script = (
        "import sys\n"
        "from metaopt.meta_train.cli import main\n"
        f"args = ['--config', {str(tiny_config)!r}, '--no-progress']\n"
        f"status = main(args + ['run_dir={odd}', 'estimator.num_tasks=1', 'estimator.num_perturbations=3'])\n"
        "print('odd status', status, file=sys.stderr)\n"
        f"sys.exit(main(args + ['run_dir={four}']))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {TEST_XLA_FLAGS}"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == ("error: estimator: the population size 6 must be a multiple of the number of devices 4 "
                        "(change the population or set devices=)")
    assert lines[1] == "odd status 2"
    assert not odd.exists()
    assert "on 4 device(s)" in proc.stderr
    _, theta = metaopt.load(four)
    assert_same_theta(theta, reference, exact=False)


# ---------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_build(name):
    cfg = config_lib.load_config(os.path.join(CONFIGS, f"{name}.yaml"))
    assert cfg["name"] == name
    built = run_lib.build(cfg)
    assert built.trainer.num_steps >= 1 and len(built.tasks) >= 1


def _former_outer_schedule(peak, warmup, final, outer_steps):
    """The outer schedule meta_train used before it came from metaopt.schedules, written out."""
    decay_steps = max(outer_steps - warmup, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = peak * jnp.minimum((count + 1.0) / max(warmup, 1), 1.0)
        if final is None:
            return warm
        progress = jnp.clip((count - warmup) / decay_steps, 0.0, 1.0)
        cosine = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(count < warmup, warm, cosine)

    return schedule


@pytest.mark.parametrize("name", ["quickstart", "mulo_mlp", "schedule_tbptt", "constant"])
def test_outer_schedule_is_bit_identical_to_the_former_one(name):
    if name == "constant":
        cfg = config_lib.resolve(dict(TINY, outer={"learning_rate": 3e-3, "warmup_steps": 5}))
    else:
        cfg = config_lib.load_config(os.path.join(CONFIGS, f"{name}.yaml"))
    o, steps = cfg["outer"], cfg["outer_steps"]
    new = jax.jit(run_lib.make_outer_schedule(o, steps))
    old = jax.jit(_former_outer_schedule(o["learning_rate"], o["warmup_steps"], o["final_learning_rate"],
                                         steps))
    counts = range(0, steps, max(1, steps // 400))
    got = np.array([new(np.int32(t)) for t in counts])
    want = np.array([old(np.int32(t)) for t in counts])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("override, message", [
    ({"outer": {"learning_rate": 1e-3, "final_learning_rate": 1e-2}},
     "outer.final_learning_rate: must be <= outer.learning_rate"),
])
def test_outer_schedule_fields_are_checked_together(override, message):
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.resolve(dict(TINY, **override))


def test_sp_and_mup_configs_differ_only_in_parametrization():
    mup = config_lib.load_config(os.path.join(CONFIGS, "mulo_mlp.yaml"))
    sp = config_lib.load_config(os.path.join(CONFIGS, "lo_mlp_sp.yaml"))
    for cfg in (mup, sp):
        cfg.pop("name"), cfg.pop("run_dir")
    assert [c["parametrization"] for c in mup["task"]["configs"]] == ["mup"] * len(mup["task"]["configs"])
    assert [c["parametrization"] for c in sp["task"]["configs"]] == ["sp"] * len(sp["task"]["configs"])
    assert mup["lopt"]["mup"] is True and sp["lopt"]["mup"] is False
    for cfg in (mup, sp):
        for c in cfg["task"]["configs"]:
            c.pop("parametrization")
        cfg["lopt"].pop("mup")
    assert mup == sp


def test_config_names_the_trainers_estimators():
    from metaopt.meta.trainer import ESTIMATORS
    from metaopt.meta_train import config

    assert config.ESTIMATORS == ESTIMATORS


def test_zero_outer_steps_saves_the_initial_theta_and_ships_with_its_origin(reference_run, tmp_path):
    """``outer_steps: 0`` with ``init_theta`` turns trained weights plus new settings (here a weight
    decay) into a run folder that ships like any other, its cost naming where it started."""
    from metaopt.meta_train import ship

    source, _ = reference_run
    cfg = config_lib.resolve(dict(TINY, outer_steps=0, init_theta=str(source), run_dir=str(tmp_path / "run"),
                                  lopt=dict(TINY["lopt"], weight_decay=1e-3)))
    built = run_lib.build(cfg)
    result = run_lib.run(built, run_lib.plan_run_dir(cfg), progress=False)
    assert result.finished and result.outer_step == 0
    lopt, theta = metaopt.load(tmp_path / "run")
    assert lopt.weight_decay == 1e-3
    assert_same_theta(theta, built.theta)
    path = ship.package_run(tmp_path / "run", "tiny", "a tiny test optimizer",
                            "python -m meta_train --config configs/tiny.yaml", out_root=tmp_path / "shipped")
    cost = ckpt_lib.load_metadata(path)["pretrained"]["cost"]
    assert cost == f"0 minutes of meta-training on 2 CPU cores, starting from {source}"
    with pytest.raises(config_lib.ConfigError, match="^outer_steps: "):
        config_lib.resolve(dict(TINY, outer_steps=-1))


def test_init_theta_starts_from_saved_weights_and_is_checked(reference_run, tmp_path):
    run_dir, weights = reference_run
    cfg = config_lib.resolve(dict(TINY, init_theta=str(run_dir),
                                  lopt=dict(TINY["lopt"], weight_decay=1e-3)))
    built = run_lib.build(cfg)
    for name, value in weights.items():
        np.testing.assert_array_equal(built.theta[name], value)
    assert set(built.theta) - set(weights) == {"decay_b", "decay_time"}
    bad = [(str(tmp_path / "absent"), {}, "init_theta: "),
           (str(run_dir), {"hidden_size": 4}, "init_theta: hidden_size: the weights were trained with 8")]
    for path, lopt, message in bad:
        cfg = config_lib.resolve(dict(TINY, init_theta=path, lopt=dict(TINY["lopt"], **lopt)))
        with pytest.raises(config_lib.ConfigError, match=f"^{re.escape(message)}"):
            run_lib.build(cfg)
