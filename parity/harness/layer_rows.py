"""The rows of one :func:`parity.harness.localize.localize` pass: an ``output`` row per torch
leaf call, aligned to the Flax capture by name and layout, and in train mode each BatchNorm's
``running_mean`` / ``running_var`` rows. Shared by the float32 pass and the float64 one
(:mod:`parity.harness.layers64`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
from torch import nn as tnn

from parity.convert.shared import tied_keys
from parity.harness.metrics import rel_l2, unbiased_running_var
from parity.harness.report import LayerDiff, compare_tensor
from parity.harness.sides import TorchRun, flax_bn_stats, leaf_modules, to_numpy
from parity.layout import layout_hint, torch_to_flax_layout


def is_stateless(module: tnn.Module) -> bool:
    return not any(True for _ in module.parameters(recurse=False)) and not any(
        True for _ in module.buffers(recurse=False)
    )


def _only_tied(module: tnn.Module, name: str, tied: Mapping[str, str]) -> bool:
    """Whether every parameter of ``module`` is another module's, tied (a GPT's ``lm_head``,
    which a port computes as ``wte.attend(x)``: no Flax layer of its own to compare)."""
    keys = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
    return bool(keys) and all(k in tied for k in keys)


def output_rows(
    trun: TorchRun,
    ref: TorchRun | None,
    fouts: Mapping,
    to_flax: Callable[[str], str],
    bs: tuple[Mapping, Mapping],
    train: bool,
    tol: float,
) -> tuple[list[LayerDiff], list[str]]:
    """One ``output`` row per torch leaf call (plus BN running-statistics rows in train mode),
    and the stateless torch calls without a Flax counterpart (``nn.ReLU``: a function in Flax)."""
    tm = trun.model
    tbn = {n: m for n, m in tm.named_modules() if isinstance(m, tnn.modules.batchnorm._BatchNorm)}
    leaves = leaf_modules(tm)
    tied = tied_keys(tm)
    rows: list[LayerDiff] = []
    skipped: list[str] = []
    for name, k in trun.order:
        label = name if k == 0 else f"{name}#{k}"
        t_out = trun.outputs.get((name, k))
        if t_out is None:
            continue
        f_out = fouts.get((name, k))
        if f_out is None and (is_stateless(leaves[name]) or _only_tied(leaves[name], name, tied)):
            skipped.append(label)
            continue
        t_flax = torch_to_flax_layout(
            t_out, None if f_out is None else np.shape(f_out), layout_hint(leaves[name]), like=f_out
        )
        row = compare_tensor(label, "output", to_flax(name), f_out, t_flax, tol)
        if ref is not None and (name, k) in ref.outputs:
            row = with_ref(row, t_out, ref.outputs[(name, k)])
        rows.append(row)
        if train and name in tbn and k == 0:
            rows.extend(bn_rows(name, to_flax(name), tbn[name], *bs, trun.bn_counts.get(name), tol))
    return rows, skipped


def with_ref(row: LayerDiff, t32: np.ndarray, t64: np.ndarray) -> LayerDiff:
    return dataclasses.replace(row, float64_rel_l2=rel_l2(t32, t64))


def bn_rows(
    tname: str, fname: str, module: tnn.Module, before: Mapping, after: Mapping, n: int | None, tol: float
) -> list[LayerDiff]:
    """running_mean / running_var rows of one BatchNorm after a single train-mode pass."""
    if not module.track_running_stats or module.running_mean is None:
        return []
    fb, fa = flax_bn_stats(before, fname), flax_bn_stats(after, fname)
    t_mean, t_var = to_numpy(module.running_mean), to_numpy(module.running_var)
    if fb is None or fa is None:
        return [
            compare_tensor(tname, "running_mean", fname, None, t_mean, tol),
            compare_tensor(tname, "running_var", fname, None, t_var, tol),
        ]
    rows = [compare_tensor(tname, "running_mean", fname, fa["mean"], t_mean, tol)]
    if module.momentum is None or n is None or n < 2:
        rows.append(
            compare_tensor(
                tname, "running_var", fname, fa["var"], t_var, tol, note="uncorrected (torch momentum=None)"
            )
        )
    else:
        corrected = unbiased_running_var([fb["var"], fa["var"]], n, momentum=1.0 - float(module.momentum))
        rows.append(
            compare_tensor(
                tname, "running_var", fname, corrected, t_var, tol, note="flax var corrected n/(n-1)"
            )
        )
    return rows
