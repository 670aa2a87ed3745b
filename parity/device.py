"""Device choice and float32 precision policy, for torch and jax together.

``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set when :mod:`parity` is imported, before jax can
initialise a GPU backend, so that jax does not grab most of the GPU memory that torch needs
when both share one GPU.

Precision policies (float32 everywhere; they differ only on GPUs with TF32 / reduced-precision
matmul paths, and are no-ops on CPU):

* ``strict``: torch ``cudnn.allow_tf32 = False``, ``cuda.matmul.allow_tf32 = False``,
  ``set_float32_matmul_precision('highest')``; jax ``jax_default_matmul_precision='highest'``.
* ``default``: each framework's own defaults (torch: TF32 on for cuDNN convolutions, off for
  matmul; jax: the backend's default, which on NVIDIA GPUs uses TF32-class passes for float32
  convolutions and matmuls).

:func:`precision_probe` shows which policy actually took effect (an image with
``NVIDIA_TF32_OVERRIDE=0`` makes ``default`` compute like ``strict``), and
:func:`global_state` / :func:`restore_global_state` save and restore the process-wide settings
that :func:`configure` changes (the test suite's fixture uses them).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.defaults import FLOAT32_REL_TOL
from parity.errors import ParityError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("strict", "default")


class DeviceError(ParityError, RuntimeError):
    """The requested device cannot be used (e.g. ``cuda`` with no GPU)."""


@dataclass(frozen=True)
class Runtime:
    """Where and how both frameworks run: ``device`` is ``'cpu'`` or ``'cuda'``."""

    device: str
    precision: str
    settings: dict = field(default_factory=dict)

    @property
    def torch_device(self):
        """The ``torch.device``."""
        import torch

        return torch.device(self.device)

    @property
    def jax_device(self):
        """The jax device (the first GPU for ``cuda``)."""
        return jax_device("gpu" if self.device == "cuda" else "cpu")


def jax_device(platform: str):
    """The first jax device of ``platform`` (``'cpu'`` or ``'gpu'``); a backend jax cannot start
    (no CUDA build, or ``JAX_PLATFORMS`` leaving it out) raises :class:`DeviceError`, one line."""
    import jax

    try:
        return jax.devices(platform)[0]
    except (RuntimeError, AssertionError) as e:  # jax asserts when JAX_PLATFORMS names no usable backend
        env = os.environ.get("JAX_PLATFORMS")
        why = (str(e).splitlines() or [""])[0] or type(e).__name__
        if env is not None:
            raise DeviceError(
                f"jax has no usable {platform} backend with JAX_PLATFORMS={env!r} ({why}); "
                f"unset JAX_PLATFORMS or include {platform!r} in it"
            ) from None
        raise DeviceError(f"jax has no usable {platform} backend ({why})") from None


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU."""
    import torch

    return torch.cuda.is_available()


def configure(device: str = "auto", precision: str = "strict") -> Runtime:
    """Resolve ``device`` (auto/cpu/cuda), apply ``precision`` to torch and jax, and record it.

    Raises :class:`DeviceError` for ``cuda`` without a GPU visible to both torch and jax, and
    ``ValueError`` for an unknown device or precision. jax's default device is set, so plain
    ``jnp.asarray`` and ``jit`` calls land on the chosen device.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise DeviceError(
            "--device cuda was requested but torch sees no CUDA GPU "
            "(torch.cuda.is_available() is False); use --device cpu or auto"
        )
    resolved = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
    if resolved == "cuda":
        try:
            jax_dev = jax_device("gpu")
        except DeviceError as e:
            raise DeviceError(
                f"torch sees a CUDA GPU but jax does not ({e}); install a CUDA build of jax or use --device cpu"
            ) from None
    else:
        jax_dev = jax_device("cpu")
    jax.config.update("jax_default_device", jax_dev)

    strict = precision == "strict"
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")  # torch's own default too
    jax.config.update("jax_default_matmul_precision", "highest" if strict else None)
    settings = {
        "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torch.float32_matmul_precision": torch.get_float32_matmul_precision(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "jax_backend": jax_dev.platform,
        "torch_device_name": torch.cuda.get_device_name(0) if resolved == "cuda" else "cpu",
    }
    return Runtime(resolved, precision, settings)


def cpu_model() -> str:
    """The CPU's name as ``/proc/cpuinfo`` gives it (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_kernels() -> dict[str, str]:
    """What picks the float32 CPU kernels, so runs on different hosts can be told apart: the CPU
    model and the vector ISA torch dispatches to (``torch.backends.cpu.get_cpu_capability()``,
    e.g. ``AVX2`` or ``AVX512``). Same code and versions on two ISAs can round differently."""
    import torch

    return {"cpu": cpu_model(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    import flax
    import jax
    import numpy
    import optax
    import torch

    return {
        "torch": torch.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": numpy.__version__,
    }


# ------------------------------------------------------------------------- global state


def global_state() -> dict[str, Any]:
    """The process-wide device and precision settings :func:`configure` changes (a snapshot).

    Not JSON: ``jax_default_device`` is a jax device or ``None``. Pass it to
    :func:`restore_global_state`.
    """
    import jax
    import torch

    return {
        "jax_default_device": jax.config.jax_default_device,
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def restore_global_state(state: dict[str, Any]) -> None:
    """Put back the settings of a :func:`global_state` snapshot, in both frameworks."""
    import jax
    import torch

    jax.config.update("jax_default_device", state["jax_default_device"])
    jax.config.update("jax_default_matmul_precision", state["jax_default_matmul_precision"])
    # the precision first: set_float32_matmul_precision also sets matmul.allow_tf32
    torch.set_float32_matmul_precision(state["torch_float32_matmul_precision"])
    torch.backends.cudnn.allow_tf32 = state["torch_cudnn_allow_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = state["torch_matmul_allow_tf32"]


# ----------------------------------------------------------------------- precision probe

# Every probe input is PROBE_VALUE = 1 + 2**-12 and every weight is 1 or 2. In float32 (24-bit
# significand) each product and every partial sum (at most 288 * PROBE_VALUE, 21 significant bits)
# is exact, so any summation order gives the exact result. TF32 keeps 10 explicit significand bits
# and rounds PROBE_VALUE to 1.0 (bf16 too), so a TF32 result is low by exactly 2**-12 relative.
PROBE_VALUE = 1.0 + 2.0**-12
TF32_REL_GAP = 2.0**-12
# float32 results are exact for direct algorithms; Winograd / FFT convolutions add a few float32
# ulps (~1e-7 each), far below this and far below the 2.4e-4 TF32 gap.
FLOAT32_MATCH_TOL = FLOAT32_REL_TOL
# What each framework's ``default`` policy is expected to give on a GPU with TF32 (compute
# capability >= 8): torch keeps matmul in float32 by default and lets cuDNN use TF32.
DEFAULT_POLICY_EXPECTED = {
    "torch": {"matmul": "float32", "conv": "tf32"},
    "jax": {"matmul": "tf32", "conv": "tf32"},
}


def probe_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """The probe's float32 operands and their exact results (computed in float64).

    ``matmul_x (128, 256) @ matmul_w (256, 128)``; ``conv_x`` NCHW ``(8, 16, 16, 16)`` convolved
    with ``conv_w`` OIHW ``(32, 16, 3, 3)``, stride 1, zero padding 1 (output NCHW).
    """
    rng = np.random.default_rng(seed)
    mx = np.full((128, 256), PROBE_VALUE, np.float32)
    mw = rng.integers(1, 3, size=(256, 128)).astype(np.float32)
    cx = np.full((8, 16, 16, 16), PROBE_VALUE, np.float32)
    cw = rng.integers(1, 3, size=(32, 16, 3, 3)).astype(np.float32)
    padded = np.pad(cx.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = cx.shape[2:]
    conv_ref = sum(
        np.einsum("nchw,oc->nohw", padded[:, :, i : i + h, j : j + w], cw[:, :, i, j].astype(np.float64))
        for i in range(3)
        for j in range(3)
    )
    return {
        "matmul_x": mx,
        "matmul_w": mw,
        "matmul_ref": mx.astype(np.float64) @ mw.astype(np.float64),
        "conv_x": cx,
        "conv_w": cw,
        "conv_ref": conv_ref,
    }


def classify_probe(result: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """How a probe result compares with the exact float32 one (JSON-safe).

    ``result``: ``'float32'`` within :data:`FLOAT32_MATCH_TOL` relative, ``'tf32'`` when low
    by about :data:`TF32_REL_GAP` (between half and twice it), else ``'other'``.
    """
    err = float(np.max(np.abs(result.astype(np.float64) - reference) / np.abs(reference)))
    if err <= FLOAT32_MATCH_TOL:
        kind = "float32"
    elif 0.5 * TF32_REL_GAP <= err <= 2 * TF32_REL_GAP:
        kind = "tf32"
    else:
        kind = "other"
    return {"max_rel_err": err, "result": kind, "equals_float32": kind == "float32"}


def _torch_probe(runtime: Runtime, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    t = {k: torch.from_numpy(v).to(runtime.torch_device) for k, v in inputs.items() if k.endswith(("x", "w"))}
    with torch.no_grad():
        mm = t["matmul_x"] @ t["matmul_w"]
        conv = torch.nn.functional.conv2d(t["conv_x"], t["conv_w"], padding=1)
    return {"matmul": mm.cpu().numpy(), "conv": conv.cpu().numpy()}


def _jax_probe(runtime: Runtime, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import jax
    import jax.numpy as jnp

    dev = runtime.jax_device
    mm = jnp.matmul(jax.device_put(inputs["matmul_x"], dev), jax.device_put(inputs["matmul_w"], dev))
    x_nhwc = jax.device_put(inputs["conv_x"].transpose(0, 2, 3, 1), dev)
    w_hwio = jax.device_put(inputs["conv_w"].transpose(2, 3, 1, 0), dev)
    conv = jax.lax.conv_general_dilated(
        x_nhwc, w_hwio, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return {"matmul": np.asarray(mm), "conv": np.asarray(conv).transpose(0, 3, 1, 2)}


def tf32_capable(device: str) -> bool:
    """True on a CUDA GPU of compute capability >= 8 (Ampere and later: TF32 tensor cores)."""
    import torch

    return device == "cuda" and torch.cuda.get_device_capability(0)[0] >= 8


def precision_probe(runtime: Runtime) -> dict[str, Any]:
    """Run a matmul and a conv in torch and jax under the settings now applied; JSON-safe.

    Call it right after ``configure(device, precision)`` and pass what that returned. For each
    framework and op it records the worst relative error against the exact float32 result and
    whether the result is float32's, TF32's (:func:`classify_probe`) and what the policy is
    expected to give: ``strict`` always float32; ``default`` as in
    :data:`DEFAULT_POLICY_EXPECTED` where the device has TF32, float32 elsewhere.
    """
    import torch

    inputs = probe_inputs()
    tf32 = tf32_capable(runtime.device)
    report: dict[str, Any] = {
        "device": runtime.device,
        "device_name": torch.cuda.get_device_name(0) if runtime.device == "cuda" else "cpu",
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0)))
        if runtime.device == "cuda"
        else None,
        "precision": runtime.precision,
        "tf32_capable": tf32,
        "nvidia_tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "tf32_rel_gap": TF32_REL_GAP,
        "float32_match_tol": FLOAT32_MATCH_TOL,
    }
    for framework, run in (("torch", _torch_probe), ("jax", _jax_probe)):
        outputs = run(runtime, inputs)
        report[framework] = {}
        for op, out in outputs.items():
            row = classify_probe(out, inputs[f"{op}_ref"])
            expect_tf32 = runtime.precision == "default" and tf32
            row["expected"] = DEFAULT_POLICY_EXPECTED[framework][op] if expect_tf32 else "float32"
            row["as_expected"] = row["result"] == row["expected"]
            report[framework][op] = row
    report["as_expected"] = all(
        report[f][op]["as_expected"] for f in ("torch", "jax") for op in ("matmul", "conv")
    )
    return report
