"""GPU-only checks (``@pytest.mark.gpu``, skipped without CUDA): the precision policies took
effect (the probe), and the state lives on the GPU. The numbers are printed for the closing note
(run with ``-s`` or read them in ``scripts/gpu_check.sh``'s log).

The autouse fixture in ``conftest.py`` restores cpu/strict after each of these tests.
"""

import json

import jax
import jax.numpy as jnp
import pytest
import torch
from flax import nnx

from flax_impl import linen_models, linen_train
from parity import data
from parity.convert import torch_to_linen
from parity.device import configure, global_state, precision_probe
from parity.harness.compare import TOLERANCES, flax_forward, run_checks, torch_forward, zoo_pair
from parity.layout import to_channels_last
from torch_impl import train as torch_train
from torch_impl.models import build_model

TINY = {"channels": (4, 8), "hidden": 16, "dropout": 0.0}

OPS = [(framework, op) for framework in ("torch", "jax") for op in ("matmul", "conv")]


@pytest.mark.gpu
def test_strict_gives_float32_and_default_gives_tf32_where_the_gpu_has_it():
    strict = precision_probe(configure("cuda", "strict"))
    default = precision_probe(configure("cuda", "default"))
    print("precision probe:", json.dumps({"strict": strict, "default": default}, indent=1))
    for framework, op in OPS:
        assert strict[framework][op]["result"] == "float32", (framework, op, strict[framework][op])
    if not default["tf32_capable"]:  # before Ampere there is no TF32: default is float32 too
        assert all(default[f][op]["result"] == "float32" for f, op in OPS), default
        return
    hint = f"NVIDIA_TF32_OVERRIDE={default['nvidia_tf32_override']} (0 disables TF32 for the process)"
    # torch's defaults: TF32 for cuDNN convolutions, float32 for matmul
    assert default["torch"]["conv"]["result"] == "tf32", (default["torch"], hint)
    assert default["torch"]["matmul"]["result"] == "float32", default["torch"]
    # jax's default precision on NVIDIA GPUs: TF32 for float32 dots and convolutions
    assert default["jax"]["matmul"]["result"] == "tf32", (default["jax"], hint)
    assert default["jax"]["conv"]["result"] == "tf32", (default["jax"], hint)
    assert default["as_expected"] and strict["as_expected"]


@pytest.mark.gpu
def test_training_state_lives_on_the_gpu():
    """One short epoch of the torch and Linen loops: the trained state is on the GPU in both."""
    runtime = configure("cuda", "strict")
    gpu = {runtime.jax_device}
    assert runtime.jax_device.platform == "gpu"
    ds = data.load("digits")
    x, y, test = ds.x_train[:64], ds.y_train[:64], (ds.x_test[:64], ds.y_test[:64])
    model = build_model("digits", seed=0, **TINY)
    state = linen_train.create_train_state(
        linen_models.build_model("digits", **TINY),
        torch_to_linen(model.state_dict(), model),
        linen_train.make_optimizer(0.01),
    )
    model = model.cuda()
    torch_train.fit(
        model,
        torch_train.make_optimizer(model, 0.01),
        lambda e: data.iterate_batches(x, y, 32, 0, e),
        test,
        1,
        device="cuda",
    )
    assert next(model.parameters()).is_cuda and all(b.is_cuda for b in model.buffers())
    state, _ = linen_train.fit(
        state,
        lambda e: data.iterate_batches(to_channels_last(x), y, 32, 0, e),
        (to_channels_last(test[0]), test[1]),
        1,
        jax.random.key(0),
    )
    leaves = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
    assert leaves and all(leaf.devices() == gpu for leaf in leaves)


@pytest.mark.gpu
@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_harness_state_on_the_gpu_and_strict_meets_the_cpu_tolerances(framework):
    runtime = configure("cuda", "strict")
    pair = zoo_pair("digits", framework, 0, "cuda", dropout=0.0)
    assert next(pair.torch.parameters()).is_cuda
    batch = data.load("digits").x_test[:32]
    flax_forward(pair, batch, True)
    # Linen params stay host numpy in the harness (copied in per call); what jax computed is on
    # the GPU: the NNX module's every leaf, Linen's updated batch statistics
    tree = nnx.state(pair.flax) if framework == "nnx" else pair.variables["batch_stats"]
    leaves = jax.tree.leaves(tree)
    assert leaves and all(leaf.devices() == {runtime.jax_device} for leaf in leaves)
    assert torch_forward(pair, batch, False).shape == (32, 10)

    checks = run_checks(models=("digits",), frameworks=(framework,), device="cuda")
    worst = {}
    for c in checks:
        if c.value >= worst.get(c.check, (-1.0, 0.0))[0]:
            worst[c.check] = (c.value, c.tolerance)
    print(f"worst strict values on {torch.cuda.get_device_name(0)} ({framework}, digits):")
    for name, (value, tol) in sorted(worst.items()):
        print(f"  {name:<36}{value:>12.3e}  (tolerance {tol:.0e}, CPU's)")
    # strict keeps the CPU tolerances (about 3x margin there); the printed values set GPU bounds
    assert set(TOLERANCES.values()) >= {c.tolerance for c in checks if c.check != "roundtrip_max_abs"}
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


@pytest.mark.gpu
def test_ddp_over_nccl_on_the_gpus_matches_one_cpu_process():
    """Check 1 of ``parity check --data-parallel`` on the real path: nccl ranks, one per GPU
    (up to 2; a one-GPU machine runs one rank), ``nn.SyncBatchNorm``, strict float32, against
    one CPU process on the same 2 global batches of 8 digits rows; the CPU tolerance."""
    from parity.harness import data_parallel as dp
    from parity.harness.data_parallel_suite import TOL
    from torch_impl import data_parallel as torch_dp

    n = min(torch.cuda.device_count(), 2)
    spec = torch_dp.RunSpec(model="digits", config={"dropout": 0.0})
    x, y, _ = dp.model_batches("digits", 2, 8)
    ranks = torch_dp.run_ddp(spec, (torch_dp.Variant("sync"),), x, y, n, timeout_s=120, device="cuda")
    gaps = dp.compare_records(ranks, "sync", torch_dp.run_single(spec, x, y), "single")
    print(f"DDP + SyncBatchNorm over {n} nccl rank(s) vs one CPU process: {gaps}")
    assert max(gaps.values()) < TOL, gaps


@pytest.mark.gpu
def test_a_gpu_test_may_leave_cuda_and_default_behind():
    configure("cuda", "default")
    assert jnp.zeros(2).devices() == {jax.devices("gpu")[0]}


def test_the_next_test_runs_on_the_cpu_under_strict_again():
    """Runs after the GPU test above (file order), also where that one is skipped."""
    assert jnp.zeros(2).devices() == {jax.devices("cpu")[0]}
    assert global_state()["jax_default_matmul_precision"] == "highest"
    assert torch.backends.cudnn.allow_tf32 is False
