"""``parity map`` and ``parity convert --torch SPEC --flax SPEC`` build the Flax port from shapes.

An NNX factory runs under ``nnx.eval_shape`` (:mod:`parity.harness.lazy_init`), a Linen module
is initialised by ``jax.eval_shape``: no random weights are drawn for values the conversion
overwrites. ``convert`` must still write the bytes of the plain route (the factory's own init),
also for a port with a Flax-only leaf, which it keeps from the real factory. Both commands name
their first step (on a terminal, in a bar on stderr) before torch or jax is imported. Timings are in
``scripts/bench_check.py`` and BENCHMARKS.md, not here.
"""

import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from parity.cli import main
from parity.convert.files import convert_models_file
from parity.spec import build, linen_variables

HERE = "tests/test_map_speed.py"
USER = "tests/convert_user_models.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: one entry per run of an NNX factory below: True when it ran on tracers (abstractly); kept in
#: sys.modules because the SPEC loader imports this file afresh, as a module of its own
RUNS: list[bool] = sys.modules.setdefault("_test_map_speed_runs", types.SimpleNamespace(runs=[])).runs


class TorchNet(nn.Module):
    """``(N, 3, H, W)`` -> conv -> BN without running stats -> mean over H, W -> ``(N, 4)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(2, 3))


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, only_flax: bool) -> None:
        self.conv = nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs)
        self.bn = nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, rngs=rngs)
        if only_flax:  # a Flax-only leaf torch does not fill, with random values of the factory's
            self.bn.mean.set_value(jax.random.normal(rngs.params(), (4,)))
        RUNS.append(isinstance(self.conv.kernel.get_value(), jax.core.Tracer))

    def __call__(self, x):
        return self.bn(self.conv(x)).mean(axis=(1, 2))


def torch_net() -> nn.Module:
    torch.manual_seed(0)
    return TorchNet()


def nnx_net() -> nnx.Module:
    """The port; its BN statistics are Flax-only (torch tracks none)."""
    return NNXNet(nnx.Rngs(0), only_flax=True)


def nnx_user() -> nnx.Module:
    """``convert_user_models.make_nnx``, counted in ``RUNS``."""
    from convert_user_models import make_nnx

    model = make_nnx()
    RUNS.append(isinstance(jax.tree.leaves(nnx.state(model, nnx.Param))[0], jax.core.Tracer))
    return model


def _plain_bytes(tmp_path, torch_spec: str, flax_spec: str, linen_shape=None) -> bytes:
    """The msgpack the plain route writes: the Flax target built with its real values."""
    from parity.harness.specs import SpecInput

    model, kind = build(flax_spec, ("linen", "nnx"))
    target = model if kind == "nnx" else linen_variables(model, linen_shape)
    first = SpecInput(linen_shape) if linen_shape else None
    options = {"input_shape": first.shape if first else None}
    convert_models_file(
        build(torch_spec, ("torch",))[0],
        target,
        str(tmp_path / "m.pth"),
        str(tmp_path / "p.msgpack"),
        **options,
    )
    return (tmp_path / "p.msgpack").read_bytes()


@pytest.mark.parametrize(
    "torch_spec, flax, extra, abstract_runs",
    [
        (f"{USER}:make_torch", f"{HERE}:nnx_user", [], [True]),
        (f"{USER}:make_torch", f"{USER}:make_linen", ["--input-shape", "2,3,4,4"], []),
        (f"{HERE}:torch_net", f"{HERE}:nnx_net", [], [True, False]),
    ],
    ids=["nnx", "linen", "nnx-flax-only-leaf"],
)
def test_convert_from_shapes_writes_the_plain_routes_bytes(
    tmp_path, capsys, torch_spec, flax, extra, abstract_runs
):
    """The NNX factory runs only abstractly when torch fills every leaf; a Flax-only leaf sends
    the conversion to one real run of the factory, whose value is written."""
    model = build(torch_spec, ("torch",))[0]
    torch.save(model.state_dict(), tmp_path / "m.pth")
    shape = tuple(int(n) for n in extra[1].split(",")) if extra else None
    plain = _plain_bytes(tmp_path, torch_spec, flax, shape)
    RUNS.clear()
    argv = [
        "convert",
        "--torch",
        torch_spec,
        "--flax",
        flax,
        *extra,
        str(tmp_path / "m.pth"),
        str(tmp_path / "m.msgpack"),
    ]
    assert main(argv) == 0
    assert RUNS == abstract_runs
    assert (tmp_path / "m.msgpack").read_bytes() == plain
    argv[-2:] = [str(tmp_path / "m.msgpack"), str(tmp_path / "back.pth")]
    RUNS.clear()
    assert main(argv) == 0 and RUNS == abstract_runs[:1]  # Flax -> torch needs shapes only
    back = torch.load(tmp_path / "back.pth")
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items() if "num_batches" not in k)


def test_map_builds_the_nnx_port_from_shapes_only(capsys):
    RUNS.clear()
    assert main(["map", "--torch", f"{USER}:make_torch", "--flax", f"{HERE}:nnx_user"]) == 0
    assert RUNS == [True] and "all paired" in capsys.readouterr().out


_FIRST_LINE = """
import sys
import types
from parity.progress import Progress

def first(self, text):
    heavy = [m for m in ("torch", "jax", "flax") if m in sys.modules]
    print("imported:", heavy, "|", text, file=sys.stderr, flush=True)
    import os; os._exit(0)

Progress.describe = first
from parity.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", ["map", "convert"])
def test_the_first_step_is_named_before_torch_or_jax_is_imported(command):
    argv = [command, "--torch", f"{USER}:make_torch", "--flax", f"{USER}:make_nnx"]
    argv += ["a.pth", "b.msgpack"] if command == "convert" else []
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_LINE, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr.strip() == f"imported: [] | loading the torch model {USER}:make_torch"


def test_a_shapes_only_linen_target_is_what_map_pairs():
    """``map`` (shapes only) gives ShapeDtypeStructs; the ``real`` callback gives values."""
    from parity.convert.files import load_models
    from parity.harness.specs import SpecInput

    steps: list[str] = []
    _, target, real = load_models(
        f"{USER}:make_torch", f"{USER}:make_linen", SpecInput((2, 3, 4, 4)), True, None, steps.append
    )
    leaves = jax.tree.leaves(target)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    values = jax.tree.leaves(real())
    assert [np.shape(x) for x in values] == [x.shape for x in leaves]
    assert steps == [f"building the Flax model {USER}:make_linen from shapes"]


@pytest.mark.slow  # 3.3 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_on_a_terminal_the_step_bar_shows_then_the_one_error_line():
    """stderr a pseudo-terminal (a user at a shell): the bar names the step; a failure still
    ends in its one line. (In a pipe stderr holds only that line: ``test_convert_bad_input``.)"""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = ["map", "--torch", "no_such_file.py:make", "--flax", f"{USER}:make_nnx"]
    proc = subprocess.Popen([sys.executable, "-m", "parity.cli", *argv], cwd=ROOT, env=env, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not data:
            break
        seen += data
    os.close(master)
    assert proc.wait(timeout=60) == 1
    text = seen.decode(errors="replace")
    assert "loading the torch model no_such_file.py:make" in text
    assert "parity map: no_such_file.py:make: no such file 'no_such_file.py'" in text
