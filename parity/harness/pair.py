"""A torch model and its Flax port, seen as one object: the harness's single abstraction.

A :class:`ModelPair` holds the two models (the Flax one with the converted weights), the layer
map, the parameter map and the input layout. Two factories build it:
:func:`parity.harness.compare.zoo_pair` (the project's models) and
:meth:`parity.harness.specs.SpecModels.pair` (``--torch/--flax`` SPECs); tests and other
projects build one directly. Its two sides (:meth:`ModelPair.torch_side`,
:meth:`ModelPair.flax_side`) share method names, as AlgoPerf's JAX and PyTorch workloads do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn as tnn

from parity.harness.sides import FlaxSide, TorchSide, is_linen, name_mapper
from parity.layout import Layout, activation_to_flax


@dataclass
class ModelPair:
    """A torch model and a Flax model holding the same (converted) weights.

    ``flax`` is a Linen module (then ``variables`` are its ``{'params', 'batch_stats'}``) or an
    NNX module (``variables`` ``None``). ``layer_map``: ``{torch leaf name: flax name}`` where
    the names differ (Flax names are paths joined by ``.``). ``param_map``: Flax params-shaped
    tree -> ``{torch name: array}`` for models outside :func:`parity.convert.params_to_torch`'s
    rules. ``input_layout``: ``'channels_first'`` (images, signals: moved to channels-last for
    Flax) or ``'same'`` (tokens, ids). ``flatten_shapes``: ``{linear: (C, *spatial)}`` for a
    dense layer fed by a flatten (derived from the converter when ``None``). ``call_kwargs``:
    ``train -> kwargs`` of the Flax call when ``train=`` does not fit. ``name``: the label of
    the table rows; ``convert_options``: the converter options the pair was built with.
    ``full_flax``: when the models return more than one output (a tuple, a dict, a dataclass)
    and ``flax`` returns one leaf of it, the same Flax model returning every leaf (same
    weights, :mod:`parity.harness.outputs`); ``None`` otherwise. ``float32_only``: a side
    cannot compute in float64 (it fails under x64, or a module fixes float32); the float64
    passes are then skipped and float32 is the verdict.
    """

    torch: tnn.Module
    flax: Any
    variables: Mapping | None = None
    layer_map: Mapping[str, str] = field(default_factory=dict)
    param_map: Callable[[dict], dict[str, np.ndarray]] | None = None
    input_layout: Layout = "channels_first"
    flatten_shapes: Mapping[str, Sequence[int]] | None = None
    call_kwargs: Callable[[bool], dict] | None = None
    name: str = ""
    convert_options: dict = field(default_factory=dict)
    full_flax: Any = None
    float32_only: bool = False
    #: Flax layers the float64 passes widened from a fixed float32 dtype
    #: (:mod:`parity.harness.widen`), and whether both models' eval outputs were all zero; both
    #: are read by :meth:`parity.harness.specs.SpecModels.notes`
    widened: set[str] = field(default_factory=set, compare=False, repr=False)
    zero_output: bool = field(default=False, compare=False, repr=False)
    #: results kept for the pair's lifetime (e.g. the eval output shapes per input); a copy
    #: made by :meth:`replace` starts empty
    memo: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or type(self.torch).__name__
        self.layer_map = dict(self.layer_map or {})

    @property
    def kind(self) -> str:
        """``'linen'`` or ``'nnx'``."""
        return "linen" if is_linen(self.flax) else "nnx"

    #: the zoo's word for :attr:`kind` (a row's ``framework`` column)
    framework = kind

    def torch_side(self) -> TorchSide:
        """The torch side (works on private copies)."""
        return TorchSide(self.torch)

    def flax_side(self) -> FlaxSide:
        """A fresh Flax side (one pure function over the stored weights); the sides of one pair
        share their compiled gradient programs (:func:`parity.harness.flax_grad.gradient_program`)."""
        return FlaxSide(
            self.flax, self.variables, self.call_kwargs, self.memo.setdefault("flax_programs", {})
        )

    def to_flax(self) -> Callable[[str], str]:
        """``torch name -> flax name`` through :attr:`layer_map`."""
        return name_mapper(self.layer_map)

    def to_torch(self, tree: dict) -> dict[str, np.ndarray]:
        """A Flax params-shaped tree (numpy, Flax layout) in torch names and layout."""
        if self.param_map is not None:
            return self.param_map(tree)
        from parity import convert

        return convert.params_to_torch(tree, self.torch)

    def flax_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` (torch layout) as Flax takes it, per :attr:`input_layout`."""
        return activation_to_flax(x, layout=self.input_layout)

    def dense_flatten_shapes(self) -> dict[str, tuple[int, ...]]:
        """:attr:`flatten_shapes`, or ``{linear name: (C, *spatial)}`` from
        :func:`parity.convert.layer_spec` (``{}`` for layers the converter does not know)."""
        if self.flatten_shapes is not None:
            return {k: tuple(v) for k, v in self.flatten_shapes.items()}
        from parity import convert

        try:
            return {
                layer.name: tuple(layer.flatten_shape)
                for layer in convert.layer_spec(self.torch)
                if layer.flatten_shape
            }
        except convert.ConversionError:
            return {}

    def roundtrip_max_abs(self) -> float:
        """Max absolute difference of the torch state dict after torch -> Flax -> torch
        (bit-exact: 0; ``inf`` when a tensor comes back with another dtype or shape)."""
        from parity import convert

        source = self.variables if self.kind == "linen" else self.flax
        back = convert.flax_to_torch(source, self.torch, **self.convert_options)
        worst = 0.0
        for k, v in self.torch.state_dict().items():
            v, b = v.detach().cpu(), back[k]
            if b.dtype != v.dtype or b.shape != v.shape:
                return float("inf")
            if v.numel():
                worst = max(worst, float((b.double() - v.double()).abs().max()))
        return worst

    def replace(self, **changes: Any) -> ModelPair:
        """A copy with some fields changed (e.g. ``variables`` of a deliberately broken port)."""
        return dataclasses.replace(self, **changes)
