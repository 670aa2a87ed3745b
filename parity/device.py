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
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("strict", "default")


class DeviceError(RuntimeError):
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
        import jax

        return jax.devices("gpu" if self.device == "cuda" else "cpu")[0]


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
            jax_dev = jax.devices("gpu")[0]
        except RuntimeError as e:
            raise DeviceError(
                f"torch sees a CUDA GPU but jax does not ({e}); install a CUDA "
                "build of jax or use --device cpu"
            ) from e
    else:
        jax_dev = jax.devices("cpu")[0]
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
