"""Exact weight conversion between PyTorch ``state_dict``, Flax Linen variables and Flax NNX.

Two entry points share the layer rules of :mod:`parity.layout`:

* the general converter, :func:`torch_to_flax` / :func:`flax_to_torch`: any torch model whose
  layers have a rule in the registry (:func:`register_rule`), paired by name with a Linen
  variables tree or an NNX module (see :mod:`parity.convert.general`);
* the template API of the project's own models, :func:`torch_to_linen`, :func:`linen_to_torch`,
  :func:`torch_to_nnx`, :func:`nnx_to_torch`, :func:`params_to_torch` (Flax names equal torch
  names, see :mod:`parity.convert.template`).

Files: :func:`read_checkpoint`, :func:`write_checkpoint`, :func:`convert_file`
(:mod:`parity.convert.checkpoint`).
"""

from parity.convert.autonames import module_pairs
from parity.convert.checkpoint import read_checkpoint, write_checkpoint
from parity.convert.common import ConversionError, flatten_tree, unflatten_tree
from parity.convert.files import convert_file
from parity.convert.general import (
    Pairing,
    flax_leaves,
    flax_to_torch,
    map_models,
    pair_models,
    params_to_torch_fn,
    torch_to_flax,
)
from parity.convert.rules import RuleContext, Transfer, register_rule, rename_rule, rule_for
from parity.convert.shared import tied_gradient_cause, tied_keys
from parity.convert.template import (
    Layer,
    expected_flax_shapes,
    layer_spec,
    linen_to_torch,
    load_nnx_variables,
    nnx_to_torch,
    nnx_variables,
    params_to_torch,
    torch_to_linen,
    torch_to_nnx,
)

__all__ = [
    "ConversionError",
    "convert_file",
    "Pairing",
    "RuleContext",
    "Transfer",
    "flax_leaves",
    "flax_to_torch",
    "map_models",
    "module_pairs",
    "pair_models",
    "params_to_torch_fn",
    "register_rule",
    "rename_rule",
    "tied_gradient_cause",
    "tied_keys",
    "rule_for",
    "torch_to_flax",
    "Layer",
    "expected_flax_shapes",
    "flatten_tree",
    "layer_spec",
    "linen_to_torch",
    "load_nnx_variables",
    "nnx_to_torch",
    "nnx_variables",
    "params_to_torch",
    "read_checkpoint",
    "torch_to_linen",
    "torch_to_nnx",
    "unflatten_tree",
    "write_checkpoint",
]
