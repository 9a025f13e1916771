"""The quickstart runs end to end through the command line, and its meta-training is reproducible
bit for bit: theta after its 300 outer steps has a pinned digest (one per kind of CPU).

The digest is the sha256 of every leaf of theta (key path, dtype, shape and bytes, leaves in sorted
key-path order). Any change to the program layer that alters the random-number layout, the order of
floating-point operations or the outer schedule changes it; a deliberate change must re-pin it and
say why. The run takes about a minute and a half on 2 CPU cores.
"""

import glob
import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import metaopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# theta of configs/quickstart.yaml after its 300 outer steps, on CPU. XLA compiles different CPU
# code for different instruction sets (vector widths change the order of floating-point reductions),
# so the run is bit-for-bit reproducible on one kind of CPU and each kind has its own digest.
QUICKSTART_DIGESTS = {
    "73922c88855571155b5f74a8ce807e54d8b17e1d374edaecfe5f4c7831a769eb",  # the CPU this test was first pinned on
    "5a2ab06757d4806ab5fc83a7391304b2affa0015d7de2b28652b34072148e9c2",  # AMD EPYC (AVX2, no AVX-512)
}


def theta_digest(theta) -> str:
    """sha256 of a pytree's leaves: key path, dtype, shape and bytes, in sorted key-path order."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(theta)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_its_theta_is_pinned(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    run_dir = tmp_path / "quickstart"
    proc = subprocess.run(
        [sys.executable, "-m", "metaopt.meta_train", "--config", os.path.join(ROOT, "configs", "quickstart.yaml"),
         f"run_dir={run_dir}", "--no-progress", "--no-compilation-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "metrics.jsonl", "checkpoints", "theta"):
        assert (run_dir / name).exists(), name
    assert glob.glob(str(run_dir / "events.out.tfevents.*"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 300 and np.isfinite(records[-1]["meta_loss"])
    lopt, theta = metaopt.load(run_dir)
    assert isinstance(lopt, metaopt.MLPLOpt)
    lopt.check_theta(theta)
    assert metaopt.checkpoint.load_metadata(run_dir)["task"]["family"] == "mlp_mnist1d"
    assert theta_digest(theta) in QUICKSTART_DIGESTS
