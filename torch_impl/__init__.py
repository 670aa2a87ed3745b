"""The PyTorch side: models in NCHW / NCW, and training loops whose mode lives in the
mutable ``Module.training`` flag. Nothing here imports jax or flax."""

from torch_impl.models import DigitsCNN, Signal1DCNN, build_model

__all__ = ["DigitsCNN", "Signal1DCNN", "build_model"]
