"""Past one host, on one machine: 2 jax processes joined by ``jax.distributed.initialize``, each
with 2 simulated CPU devices, train the Linen model on one 4-device mesh with the unchanged
single-device step; every logit, gradient and BN statistic matches one device within the
data-parallel tolerance (docs/DATA_PARALLEL.md, "Past one host"). Digits, tiny model, K = 3
steps of 32 rows (8 per device), lr 0.05, as tests/test_data_parallel.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flax_impl import data_parallel as flax_dp
from parity import convert
from parity.harness import data_parallel as dp
from parity.harness.data_parallel_suite import TOL
from parity.layout import to_channels_last
from torch_impl import data_parallel as torch_dp

REPO = Path(__file__).resolve().parents[1]
PROCESSES, K, B = 2, 3, 32


@pytest.mark.slow  # two fresh jax processes (imports, compilation) joined over gloo
def test_two_processes_on_one_mesh_match_one_device(tmp_path):
    spec = torch_dp.RunSpec()
    variables = dp.initial_variables(spec)
    x, y, _ = dp.digits_batches(K, B)
    x_cl = np.stack([to_channels_last(b) for b in x])
    data, out = tmp_path / "data.npz", tmp_path / "out.npz"
    np.savez(data, x=x_cl, y=y, **convert.flatten_tree(variables))
    port = str(torch_dp.free_port())
    script = str(REPO / "tests" / "multihost_linen_step.py")
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(p), str(PROCESSES), port, str(data), str(out)],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(PROCESSES)
    ]
    try:
        errors = [p.communicate(timeout=900)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in errors]
    with np.load(out) as d:
        got = dict(d)
    assert (int(got["processes"]), int(got["devices"])) == (PROCESSES, 2 * PROCESSES)
    single = flax_dp.run_single(flax_dp.RunSpec(), variables, x_cl, y)
    gaps = dp.compare_records([got], "multihost", single, "single", concat_logits=False)
    print(f"\n2 processes x 2 devices vs one device: {gaps}")
    assert max(gaps.values()) < TOL, gaps
