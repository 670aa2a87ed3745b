"""Exact weight conversion between PyTorch ``state_dict``, Flax Linen variables and Flax NNX.

Rules (the layout ones live in :mod:`parity.layout`):

============================  =====================================  ==============================
torch key                     Linen variable                         rule
============================  =====================================  ==============================
``convK.weight`` (O,I,H,W)    ``params/convK/kernel`` (H,W,I,O)      transpose
``fcK.weight`` (out,in)       ``params/fcK/kernel`` (in,out)         transpose; the first dense
                                                                     after a flatten also permutes
                                                                     its rows (C-first -> C-last)
``*.bias``                    ``params/*/bias``                      copy
``bnK.weight`` / ``.bias``    ``params/bnK/scale`` / ``bias``        copy
``bnK.running_mean``/``_var`` ``batch_stats/bnK/mean`` / ``var``     copy
``bnK.num_batches_tracked``   (none)                                 dropped; restored from the
                                                                     ``num_batches_tracked``
                                                                     argument on the way back
============================  =====================================  ==============================

NNX state uses the same names as Linen (``Param`` -> ``params``, ``BatchStat`` ->
``batch_stats``), so NNX conversion goes through the Linen dicts. Every rule only moves
elements, so ``torch -> Linen -> torch`` and ``torch -> NNX -> torch`` are bit-exact.

The expected keys, shapes and dtypes come from a *template*: a torch model of the right
architecture and widths. Anything missing, unexpected, mis-shaped or of the wrong dtype raises
:class:`ConversionError` naming the key; nothing is dropped or zero-filled silently.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from parity import layout


class ConversionError(ValueError):
    """A checkpoint does not fit the template: the message names the key and what differs."""


@dataclass(frozen=True)
class Layer:
    """One convertible layer of a template: its attribute name and kind.

    ``flatten_shape`` is set for the first dense layer after the convolutions: the
    channels-first ``(C, *spatial)`` shape flattened into it.
    """

    name: str
    kind: Literal["conv", "dense", "bn"]
    flatten_shape: tuple[int, ...] | None = None


def layer_spec(template: nn.Module) -> list[Layer]:
    """The convertible layers of ``template`` in module order.

    The first ``nn.Linear`` after a convolution takes ``template.flatten_shape`` (the model's
    ``(C, *spatial)`` at the flatten), which every model in ``torch_impl`` declares.
    """
    spec: list[Layer] = []
    seen_conv = flattened = False
    for name, m in template.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            spec.append(Layer(name, "conv"))
            seen_conv = True
        elif isinstance(m, nn.Linear):
            shape = None
            if seen_conv and not flattened:
                shape = tuple(getattr(template, "flatten_shape", ()))
                if not shape:
                    raise ConversionError(
                        f"{type(template).__name__} has convolutions followed by "
                        f"{name!r} but declares no flatten_shape"
                    )
                flattened = True
            spec.append(Layer(name, "dense", shape))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            spec.append(Layer(name, "bn"))
        elif len(list(m.parameters(recurse=False))):
            raise ConversionError(f"no conversion rule for {name!r} ({type(m).__name__})")
    return spec


# ---------------------------------------------------------------------------------- validation


def _as_numpy(key: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as e:
        raise ConversionError(f"{key}: cannot read value of type {type(value).__name__}: {e}") from e


def _check(key: str, got: np.ndarray, expected_shape: tuple, expected_dtype: np.dtype) -> None:
    if tuple(got.shape) != tuple(expected_shape):
        raise ConversionError(f"{key}: expected shape {tuple(expected_shape)}, got {tuple(got.shape)}")
    if got.dtype != expected_dtype:
        raise ConversionError(f"{key}: expected dtype {expected_dtype}, got {got.dtype}")


def _check_keys(where: str, got: set[str], expected: set[str]) -> None:
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected key(s) {', '.join(unexpected)}")
        raise ConversionError(f"{where}: {'; '.join(parts)}")


def _validated(
    where: str, given: Mapping[str, Any], expected: Mapping[str, tuple[tuple[int, ...], np.dtype | None]]
) -> dict[str, np.ndarray]:
    """``given`` as numpy arrays, after checking its keys against ``expected`` and each value's
    shape and dtype (``None``: any dtype). Every error names the key."""
    _check_keys(where, set(given), set(expected))
    out = {}
    for k, (shape, dtype) in expected.items():
        out[k] = _as_numpy(k, given[k])
        _check(k, out[k], shape, out[k].dtype if dtype is None else dtype)
    return out


def flatten_tree(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{'params': {'conv1': {'kernel': a}}}`` -> ``{'params/conv1/kernel': a}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, path + "/"))
        else:
            out[path] = v
    return out


def unflatten_tree(flat: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_tree`."""
    tree: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


# ------------------------------------------------------------------------------- the mapping


def _torch_to_flax_flat(sd: Mapping[str, np.ndarray], spec: list[Layer]) -> dict[str, np.ndarray]:
    """Apply the rules to a validated, numpy state dict (no checks)."""
    out: dict[str, np.ndarray] = {}
    for layer in spec:
        n = layer.name
        if layer.kind == "conv":
            out[f"params/{n}/kernel"] = layout.conv_kernel_to_flax(sd[f"{n}.weight"])
        elif layer.kind == "dense":
            out[f"params/{n}/kernel"] = layout.dense_kernel_to_flax(sd[f"{n}.weight"], layer.flatten_shape)
        else:
            out[f"params/{n}/scale"] = sd[f"{n}.weight"].copy()
            out[f"batch_stats/{n}/mean"] = sd[f"{n}.running_mean"].copy()
            out[f"batch_stats/{n}/var"] = sd[f"{n}.running_var"].copy()
        if f"{n}.bias" in sd:
            out[f"params/{n}/bias"] = sd[f"{n}.bias"].copy()
    return out


def _flax_to_torch_flat(
    fl: Mapping[str, np.ndarray], spec: list[Layer], template_sd: Mapping, num_batches_tracked: int | None
) -> dict[str, np.ndarray]:
    """Inverse of :func:`_torch_to_flax_flat`; ``num_batches_tracked=None`` maps parameters only."""
    out: dict[str, np.ndarray] = {}
    for layer in spec:
        n = layer.name
        if layer.kind == "conv":
            out[f"{n}.weight"] = layout.conv_kernel_to_torch(fl[f"params/{n}/kernel"])
        elif layer.kind == "dense":
            out[f"{n}.weight"] = layout.dense_kernel_to_torch(fl[f"params/{n}/kernel"], layer.flatten_shape)
        else:
            out[f"{n}.weight"] = fl[f"params/{n}/scale"].copy()
            if num_batches_tracked is not None:
                out[f"{n}.running_mean"] = fl[f"batch_stats/{n}/mean"].copy()
                out[f"{n}.running_var"] = fl[f"batch_stats/{n}/var"].copy()
                out[f"{n}.num_batches_tracked"] = np.asarray(num_batches_tracked, dtype=np.int64)
        if f"{n}.bias" in template_sd:
            out[f"{n}.bias"] = fl[f"params/{n}/bias"].copy()
    return out


def _template_state(template: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in template.state_dict().items()}


def expected_flax_shapes(template: nn.Module) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{'params/conv1/kernel': ((3, 3, 1, 16), float32), ...}`` for ``template``."""
    flat = _torch_to_flax_flat(_template_state(template), layer_spec(template))
    return {k: (v.shape, v.dtype) for k, v in flat.items()}


def torch_to_linen(state_dict: Mapping[str, Any], template: nn.Module) -> dict[str, dict]:
    """A torch ``state_dict`` -> Linen ``{'params': ..., 'batch_stats': ...}`` of numpy arrays.

    ``template`` is a torch model of the checkpoint's architecture; its own ``state_dict``
    gives the expected keys, shapes and dtypes.
    """
    expected = {k: (v.shape, v.dtype) for k, v in _template_state(template).items()}
    sd = _validated("torch state_dict", state_dict, expected)
    return unflatten_tree(_torch_to_flax_flat(sd, layer_spec(template)))


def linen_to_torch(
    variables: Mapping[str, Any], template: nn.Module, num_batches_tracked: int = 0
) -> OrderedDict[str, torch.Tensor]:
    """Linen ``{'params', 'batch_stats'}`` -> a torch ``state_dict`` loadable into ``template``.

    Flax keeps no batch counter, so each BN's ``num_batches_tracked`` is set to
    ``num_batches_tracked`` (it only matters for torch BN with ``momentum=None``).
    """
    fl = _validated("Flax variables", flatten_tree(variables), expected_flax_shapes(template))
    tsd = _template_state(template)
    out = _flax_to_torch_flat(fl, layer_spec(template), tsd, num_batches_tracked)
    # np.array keeps 0-d counters 0-d (np.ascontiguousarray would make them 1-d)
    return OrderedDict((k, torch.from_numpy(np.array(out[k], order="C"))) for k in tsd)


def params_to_torch(params: Mapping[str, Any], template: nn.Module) -> dict[str, np.ndarray]:
    """A parameter-shaped Flax tree (e.g. gradients) -> ``{torch parameter name: array}`` in
    torch layout, in ``template.named_parameters()`` order. Shapes are checked like weights."""
    expected = {
        k: (shape, None)
        for k, (shape, _) in expected_flax_shapes(template).items()
        if k.startswith("params/")
    }
    fl = _validated("Flax params", flatten_tree({"params": params}), expected)
    out = _flax_to_torch_flat(fl, layer_spec(template), _template_state(template), None)
    return {name: out[name] for name, _ in template.named_parameters()}


# ------------------------------------------------------------------------------------- NNX


def nnx_variables(model: Any) -> dict[str, dict]:
    """An NNX model's weights as Linen-style ``{'params': ..., 'batch_stats': ...}`` (numpy)."""
    from flax import nnx

    to_np = lambda tree: {k: (to_np(v) if isinstance(v, Mapping) else np.asarray(v)) for k, v in tree.items()}
    return {
        "params": to_np(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
        "batch_stats": to_np(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))),
    }


def load_nnx_variables(model: Any, variables: Mapping[str, Any]) -> Any:
    """Write Linen-style ``{'params', 'batch_stats'}`` into an NNX ``model`` in place; return it.

    Keys, shapes and dtypes must match the model's own state exactly.
    """
    import jax.numpy as jnp
    from flax import nnx

    current = {k: (v.shape, v.dtype) for k, v in flatten_tree(nnx_variables(model)).items()}
    flat = _validated("NNX variables", flatten_tree(variables), current)
    for col, typ in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, typ)
        pure = unflatten_tree(
            {k.split("/", 1)[1]: jnp.asarray(v) for k, v in flat.items() if k.startswith(col + "/")}
        )
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(model, state)
    return model


def torch_to_nnx(state_dict: Mapping[str, Any], template: nn.Module, model: Any) -> Any:
    """A torch ``state_dict`` -> the NNX ``model`` (updated in place and returned)."""
    return load_nnx_variables(model, torch_to_linen(state_dict, template))


def nnx_to_torch(
    model: Any, template: nn.Module, num_batches_tracked: int = 0
) -> OrderedDict[str, torch.Tensor]:
    """An NNX model -> a torch ``state_dict`` loadable into ``template``."""
    return linen_to_torch(nnx_variables(model), template, num_batches_tracked)


# ------------------------------------------------------------------------------ checkpoints


def read_checkpoint(path: str) -> dict:
    """Read a ``.pt`` torch state_dict or a ``.msgpack`` Flax ``{'params', 'batch_stats'}``."""
    if path.endswith(".pt"):
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(sd, Mapping):
            raise ConversionError(f"{path}: expected a state_dict (a mapping), got {type(sd).__name__}")
        return dict(sd)
    if path.endswith(".msgpack"):
        from flax import serialization

        with open(path, "rb") as f:
            return serialization.msgpack_restore(f.read())
    raise ConversionError(f"{path}: unknown checkpoint format; use .pt (torch) or .msgpack (Flax)")


def write_checkpoint(path: str, tree: Mapping) -> None:
    """Write a torch state_dict (``.pt``) or Flax variables (``.msgpack``) atomically."""
    import io

    from parity.io import atomic_write_bytes

    if path.endswith(".pt"):
        buf = io.BytesIO()
        torch.save(OrderedDict(tree), buf)
        atomic_write_bytes(path, buf.getvalue())
    elif path.endswith(".msgpack"):
        from flax import serialization

        atomic_write_bytes(
            path,
            serialization.msgpack_serialize(
                {k: dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
            ),
        )
    else:
        raise ConversionError(f"{path}: unknown checkpoint format; use .pt (torch) or .msgpack (Flax)")


def convert_file(model: str, src: str, dst: str, **config) -> str:
    """Convert checkpoint ``src`` to ``dst`` for architecture ``model``; return the direction.

    ``.pt -> .msgpack`` is torch -> Flax, ``.msgpack -> .pt`` is Flax -> torch. ``dst`` is
    written atomically and only after the whole conversion succeeded.
    """
    from torch_impl.models import build_model

    template = build_model(model, **config)
    exts = (src.rsplit(".", 1)[-1], dst.rsplit(".", 1)[-1])
    if exts == ("pt", "msgpack"):
        write_checkpoint(dst, torch_to_linen(read_checkpoint(src), template))
        return "torch -> flax"
    if exts == ("msgpack", "pt"):
        write_checkpoint(dst, linen_to_torch(read_checkpoint(src), template))
        return "flax -> torch"
    raise ConversionError(f"cannot convert {src!r} to {dst!r}: use SRC.pt DST.msgpack or SRC.msgpack DST.pt")
