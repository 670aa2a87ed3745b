"""Host arrays into jax without compiling anything.

On jax 0.10, ``jnp.asarray(numpy_array)`` runs a ``stage`` primitive and ``jnp.asarray(a,
dtype)`` a ``convert_element_type``: each compiles a small XLA program per new shape and dtype
(20-40 ms on the 2-core box). A check moves hundreds of arrays of distinct shapes (every weight
of a ResNet, in float32 and float64): 62 of the 224 compiles of a ResNet-18 check were these.
:func:`to_jax` casts on the host (numpy rounds to nearest even, as XLA does) and copies with
``jax.device_put``, which compiles nothing; the values are the same.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def to_jax(a: Any, dtype: Any = None) -> jax.Array:
    """``a`` (numpy, a jax array, a scalar) as a jax array on the default device, cast to
    ``dtype`` first when given (under ``jax.enable_x64`` for 64-bit dtypes, as with
    ``jnp.asarray``; otherwise jax narrows them to 32 bits)."""
    host = np.asarray(a)
    if dtype is not None and host.dtype != np.dtype(dtype):
        host = host.astype(dtype)
    return jax.device_put(host)
