"""The template API: our own models' weights between torch, Linen and NNX, Flax names = torch names.

The conversion of each layer is its rule in the one registry (:mod:`parity.convert.rules`,
layouts in :mod:`parity.layout`); :func:`layer_spec` lists the layers (conv, dense, BN) and
the flatten feeding a dense layer (declared ``flatten_shape``, else detected). For any other
model use :func:`parity.convert.torch_to_flax` / :func:`parity.convert.flax_to_torch`.

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

from parity.convert.common import ConversionError, flatten_tree, torch_tensor_to_numpy, unflatten_tree
from parity.convert.common import validated as _validated
from parity.convert.rules import RuleContext, rule_for


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

    A ``nn.Linear`` fed by a flattened channels-first map gets that map's ``(C, *spatial)``
    as ``flatten_shape``: from the model's ``flatten_shape`` attribute when it declares one
    (first Linear after a convolution), else detected by :mod:`parity.convert.flatten`.
    A module with parameters or buffers that no rule here converts raises, naming it.
    """
    declared = tuple(getattr(template, "flatten_shape", ()) or ())
    detected = None if declared else _detected_flattens(template)
    spec: list[Layer] = []
    seen_conv = flattened = False
    for name, m in template.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            spec.append(Layer(name, "conv"))
            seen_conv = True
        elif isinstance(m, nn.Linear):
            shape = None
            if detected is not None:
                shape = detected.get(name)
            elif seen_conv and not flattened:
                shape, flattened = declared, True
            spec.append(Layer(name, "dense", shape))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not m.track_running_stats:
                raise ConversionError(
                    f"{name!r} ({type(m).__name__}, track_running_stats=False): the template API keeps "
                    "no Flax model to take unused batch_stats from; use parity.convert.torch_to_flax"
                )
            spec.append(Layer(name, "bn"))
        elif _owns_tensors(m):
            held = [k for k, _ in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))]
            raise ConversionError(
                f"no conversion rule for {name!r} ({type(m).__name__}), which holds "
                f"{', '.join('.'.join(filter(None, (name, k))) for k in held)}"
            )
    return spec


def _owns_tensors(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))


def _detected_flattens(template: nn.Module) -> dict[str, tuple[int, ...]]:
    from parity.convert.flatten import detect_flattens

    return detect_flattens(template).shapes


# ------------------------------------------------------------------------------- the mapping


def _spec_transfers(template: nn.Module, spec: list[Layer], num_batches_tracked: int = 0):
    """``(torch keys, Flax keys, Transfer)`` of each layer's registry rule (:mod:`.rules`);
    in the template API the Flax names are the torch names (``a.b`` -> ``a/b``)."""
    for layer in spec:
        module = template.get_submodule(layer.name)
        ctx = RuleContext(layer.name, layer.flatten_shape, num_batches_tracked)
        prefix = layer.name.replace(".", "/")
        for tr in rule_for(module)(module, ctx):
            tkeys = tuple(".".join(filter(None, (layer.name, t))) for t in tr.torch)
            fkeys = tuple(
                "/".join(filter(None, (f.split("/", 1)[0], prefix, f.split("/", 1)[1]))) for f in tr.flax
            )
            yield tkeys, fkeys, tr


def _torch_to_flax_flat(
    sd: Mapping[str, np.ndarray], template: nn.Module, spec: list[Layer]
) -> dict[str, np.ndarray]:
    """Apply the layer rules to a validated, numpy state dict (no checks)."""
    out: dict[str, np.ndarray] = {}
    for tkeys, fkeys, tr in _spec_transfers(template, spec):
        if tkeys and fkeys:  # torch-only tensors (num_batches_tracked) are dropped
            out.update(zip(fkeys, tr.to_flax([sd[k] for k in tkeys]), strict=True))
    return out


def _flax_to_torch_flat(
    fl: Mapping[str, np.ndarray], template: nn.Module, spec: list[Layer], num_batches_tracked: int | None
) -> dict[str, np.ndarray]:
    """Inverse of :func:`_torch_to_flax_flat`; ``num_batches_tracked=None`` maps parameters only."""
    out: dict[str, np.ndarray] = {}
    for tkeys, fkeys, tr in _spec_transfers(template, spec, num_batches_tracked or 0):
        params_only = fkeys and all(f.startswith("params/") for f in fkeys)
        if tkeys and (num_batches_tracked is not None or params_only):
            out.update(zip(tkeys, tr.to_torch([fl[f] for f in fkeys]), strict=True))
    return out


def _template_state(template: nn.Module) -> dict[str, np.ndarray]:
    """The template's state as numpy; a key no layer rule converts (an unknown buffer) raises."""
    state = {k: torch_tensor_to_numpy(k, v) for k, v in template.state_dict().items()}
    known = {k for tkeys, _, _ in _spec_transfers(template, layer_spec(template)) for k in tkeys}
    unknown = sorted(set(state) - known)
    if unknown:
        raise ConversionError(
            f"{type(template).__name__}: no rule converts {', '.join(unknown)} (unknown parameter or "
            "buffer); register a layer rule for its module (parity.convert.register_rule)"
        )
    return state


def expected_flax_shapes(template: nn.Module) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{'params/conv1/kernel': ((3, 3, 1, 16), float32), ...}`` for ``template``."""
    flat = _torch_to_flax_flat(_template_state(template), template, layer_spec(template))
    return {k: (v.shape, v.dtype) for k, v in flat.items()}


def torch_to_linen(state_dict: Mapping[str, Any], template: nn.Module) -> dict[str, dict]:
    """A torch ``state_dict`` -> Linen ``{'params': ..., 'batch_stats': ...}`` of numpy arrays.

    ``template`` is a torch model of the checkpoint's architecture; its own ``state_dict``
    gives the expected keys, shapes and dtypes.
    """
    expected = {k: (v.shape, v.dtype) for k, v in _template_state(template).items()}
    sd = _validated("torch state_dict", state_dict, expected)
    return unflatten_tree(_torch_to_flax_flat(sd, template, layer_spec(template)))


def linen_to_torch(
    variables: Mapping[str, Any], template: nn.Module, num_batches_tracked: int = 0
) -> OrderedDict[str, torch.Tensor]:
    """Linen ``{'params', 'batch_stats'}`` -> a torch ``state_dict`` loadable into ``template``.

    Flax keeps no batch counter, so each BN's ``num_batches_tracked`` is set to
    ``num_batches_tracked`` (it only matters for torch BN with ``momentum=None``).
    """
    fl = _validated("Flax variables", flatten_tree(variables), expected_flax_shapes(template))
    tsd = _template_state(template)
    out = _flax_to_torch_flat(fl, template, layer_spec(template), num_batches_tracked)
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
    out = _flax_to_torch_flat(fl, template, layer_spec(template), None)
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
    from flax import nnx

    from parity.arrays import to_jax

    current = {k: (v.shape, v.dtype) for k, v in flatten_tree(nnx_variables(model)).items()}
    flat = _validated("NNX variables", flatten_tree(variables), current)
    for col, typ in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, typ)
        pure = unflatten_tree(
            {k.split("/", 1)[1]: to_jax(v) for k, v in flat.items() if k.startswith(col + "/")}
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
