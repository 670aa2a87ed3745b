"""Models from user code: ``SPEC`` is ``package.module:factory`` or ``path/to/file.py:factory``.

A factory takes no arguments and returns a ``torch.nn.Module``, a Flax Linen ``Module`` or an
NNX ``Module``. Every failure (the module does not import, the factory is missing, raises, calls ``sys.exit``
or returns the wrong type) raises :class:`SpecError` with one line naming the
SPEC.

A Linen module has no weights until initialised: :func:`linen_variables` calls ``init`` on
zeros of the given input shape, given in torch layout (``N, C, *spatial``) and moved to
channels-last by rank (rank >= 3) unless ``channels_last=False`` (token inputs).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from parity.errors import ParityError


class SpecError(ParityError, ValueError):
    """A SPEC that does not give a model of the expected kind; the message names the SPEC."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``'4,3,32,32'`` -> ``(4, 3, 32, 32)``; anything else raises ``ValueError``."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated positive integers, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"expected comma-separated positive integers, got {text!r}")
    return shape


def parse_dtype(text: str) -> str:
    """``'float32'``, ``'int32'``, ``'bfloat16'``, ... (a numeric or bool dtype jax knows) -> its
    canonical name; anything else raises :class:`SpecError` naming ``--input-dtype``."""
    import jax.numpy as jnp

    try:
        dtype = jnp.dtype(text)
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise SpecError(f"--input-dtype {text!r}: not a numeric dtype (e.g. float32, int32, bfloat16)")
    return dtype.name


def _exit_text(e: SystemExit) -> str:
    return f"called sys.exit({e.code!r})"


def _import_module(spec: str, where: str) -> Any:
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise SpecError(f"{spec}: no such file {where!r}")
        name = f"_parity_spec_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent.resolve()))  # so the file can import its neighbours
        try:
            loader_spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent.resolve()))
        return module
    return importlib.import_module(where)


def load_factory(spec: str) -> Callable[[], Any]:
    """The factory named by ``spec``."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise SpecError(f"{spec!r}: expected package.module:factory or path/to/file.py:factory")
    try:
        module = _import_module(spec, where)
    except SpecError:
        raise
    except SystemExit as e:  # user code that exits while importing: not our exit, not silent
        raise SpecError(f"{spec}: cannot import {where}: it {_exit_text(e)}") from None
    except Exception as e:  # user code: any import-time failure
        raise SpecError(f"{spec}: cannot import {where}: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SpecError(f"{spec}: {where} has no callable {attr!r}")
    return factory


def flax_call_kwargs(spec: str) -> dict:
    """The keyword arguments every call of the Flax model gets, from the factory file's
    module-level ``flax_call_kwargs``: a dict, or a no-argument callable returning one (``{}``
    when the file has none). For a ``__call__`` with required keyword-only arguments."""
    factory = load_factory(spec)
    value = getattr(sys.modules.get(factory.__module__), "flax_call_kwargs", None)
    if value is None:
        return {}
    try:
        value = value() if callable(value) else value
    except Exception as e:  # user code
        raise SpecError(f"{spec}: flax_call_kwargs() raised {type(e).__name__}: {e}") from None
    if not isinstance(value, dict):
        raise SpecError(
            f"{spec}: flax_call_kwargs must be a dict (or return one), got {type(value).__name__}"
        )
    return value


def _kind_of(obj: Any) -> str | None:
    import torch

    if isinstance(obj, torch.nn.Module):
        return "torch"
    from flax import linen, nnx

    if isinstance(obj, nnx.Module):
        return "nnx"
    if isinstance(obj, linen.Module):
        return "linen"
    return None


def build(spec: str, allowed: Sequence[str]) -> tuple[Any, str]:
    """Call the factory of ``spec``; return ``(model, kind)`` with ``kind`` in ``allowed``
    (``'torch'``, ``'linen'``, ``'nnx'``)."""
    factory = load_factory(spec)
    try:
        model = factory()
    except SystemExit as e:  # user code that exits: not our exit, not silent
        raise SpecError(f"{spec}: the factory {_exit_text(e)} instead of returning a model") from None
    except Exception as e:  # user code
        raise SpecError(f"{spec}: the factory raised {type(e).__name__}: {e}") from None
    kind = _kind_of(model)
    if kind not in allowed:
        names = {"torch": "a torch.nn.Module", "linen": "a Linen Module", "nnx": "an NNX Module"}
        wanted = " or ".join(names[a] for a in allowed)
        raise SpecError(f"{spec}: the factory returned {type(model).__name__}, not {wanted}")
    return model, kind


def flax_input_shape(torch_shape: Sequence[int], channels_last: bool = True) -> tuple[int, ...]:
    """Torch-layout shape -> the Flax input shape (``N, *spatial, C`` for rank >= 3)."""
    s = tuple(torch_shape)
    return (s[0], *s[2:], s[1]) if channels_last and len(s) >= 3 else s


def _eval_mode_kwargs(module: Any) -> dict:
    """The eval-mode flag a Linen ``__call__`` takes (``train=False`` or ``deterministic=True``),
    as :class:`parity.harness.sides.FlaxSide` passes it; ``{}`` when it takes neither."""
    params = inspect.signature(type(module).__call__).parameters
    if "train" in params:
        return {"train": False}
    if "deterministic" in params:
        return {"deterministic": True}
    return {}


def linen_variables(
    module: Any,
    torch_shape: Sequence[int],
    channels_last: bool = True,
    dtype: str = "float32",
    shapes_only: bool = False,
) -> dict:
    """``module.init`` on zeros of the Flax input shape; when the plain call fails, it is retried
    with the eval-mode flag (``train=False`` or ``deterministic=True``) if ``__call__`` has one.
    ``shapes_only``: ``jax.eval_shape`` of it (leaves are
    ``ShapeDtypeStruct``; no weights computed). Failures raise :class:`SpecError`."""
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct(flax_input_shape(torch_shape, channels_last), jnp.dtype(parse_dtype(dtype)))
    key = jax.random.key(0)
    # keyword arguments (the mode flag) stay static Python values: eval_shape traces only the
    # positional ones, so `if train:` in the user's __call__ still sees a bool
    init = (lambda *a, **k: jax.eval_shape(partial(module.init, **k), *a)) if shapes_only else module.init
    try:
        with warnings.catch_warnings():
            # float64 without jax_enable_x64 is truncated to float32: the init's weights are the
            # same, and the warning would only come before whatever the real outcome is
            warnings.filterwarnings("ignore", "Explicitly requested dtype", UserWarning)
            if not shapes_only:
                x = jnp.zeros(x.shape, x.dtype)
            try:
                return init(key, x)
            except Exception:
                mode = _eval_mode_kwargs(module)
                if not mode:
                    raise
                # a required `train`, or `deterministic=None` resolved by nn.merge_param
                return init(key, x, **mode)
    except Exception as e:  # user code
        msg = (str(e).splitlines() or [""])[0][:200]
        raise SpecError(
            f"{type(module).__name__}.init on input {tuple(x.shape)} failed: {type(e).__name__}: {msg}"
        ) from None
