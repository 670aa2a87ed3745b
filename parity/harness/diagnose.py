"""Turning "layer X differs" into a cause: :func:`parity.harness.causes.probable_cause` on the
failing layer rows of :func:`parity.harness.localize.localize`, and
:func:`parity.convert.shared.tied_gradient_cause` on the failing gradient rows of
:func:`parity.harness.localize.localize_gradients`. Each found cause is put in the row's note."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from parity.harness.causes import probable_cause
from parity.harness.report import LayerDiff
from parity.harness.sides import TorchRun, leaf_modules
from parity.layout import layout_hint, sequence_first, to_channels_first, torch_to_flax_layout


def port_in_torch_layout(f_out: np.ndarray, t_out: np.ndarray, hint) -> np.ndarray:
    """The port's output moved back to torch layout (undoes the move the row compared with)."""
    f = np.asarray(f_out)
    moved = torch_to_flax_layout(t_out, f.shape, hint, like=f)
    if moved is t_out:
        return f
    return np.swapaxes(f, 0, 1) if sequence_first(np.shape(t_out), f.shape) else to_channels_first(f)


def _key(label: str) -> tuple[str, int]:
    name, _, k = label.partition("#")
    return name, int(k) if k else 0


def with_causes(
    rows: list[LayerDiff],
    torch_model,
    run: TorchRun,
    fouts: Mapping,
    train: bool,
    every: bool,
    bn_means: Mapping | None = None,
) -> list[LayerDiff]:
    """``rows`` with the probable cause of failing ``output`` rows in their note: every failing
    row when ``every`` (reinjection isolates each layer), else only the first failing row.
    ``run`` / ``fouts``: the torch run and Flax outputs the cause is computed from (the float64
    pass when there is one: a float64 port output is judged at ``FLOAT64_REL_TOL``).
    ``bn_means``: ``{torch BatchNorm name: the port's running mean after the pass}``, for the
    causes of failing ``running_mean`` rows (a misread momentum)."""
    leaves = leaf_modules(torch_model)
    out, tried = [], False
    for r in rows:
        if r.passed or r.kind not in ("output", "running_mean") or (tried and not every):
            out.append(r)
            continue
        tried = True
        key = _key(r.name)
        if r.kind == "output":
            cause = _cause(leaves.get(key[0]), run, fouts, key, train, r.name)
        else:
            cause = _mean_cause(leaves.get(key[0]), run.inputs.get(key), (bn_means or {}).get(r.name), r.name)
        out.append(
            r if cause is None else dataclasses.replace(r, note=_join(r.note, f"probable cause: {cause}"))
        )
    return out


def _cause(module, run: TorchRun, fouts: Mapping, key, train: bool, label: str):
    return _try_cause(module, run.inputs.get(key), run.outputs.get(key), fouts.get(key), train, label)


def _try_cause(module, x, t_out, f_out, train: bool, label: str):
    """:func:`probable_cause` of ``module`` on torch input ``x``, with the port's ``f_out``
    (Flax layout) moved to ``t_out``'s layout; ``None`` where anything is missing or torch
    refuses the layer's variants."""
    if module is None or x is None or t_out is None or f_out is None:
        return None
    port = port_in_torch_layout(f_out, t_out, layout_hint(module))
    if port.shape != np.shape(t_out):
        return None
    try:
        return probable_cause(module, x, port, train=train, layer=label)
    except (RuntimeError, ValueError, TypeError):
        return None


def _mean_cause(module, x, port_mean, label: str):
    """The cause of a failing ``running_mean`` row: ``module`` holds the statistics from before
    the train-mode pass (the caller's model, not the run's copy)."""
    if module is None or x is None or port_mean is None:
        return None
    try:
        return probable_cause(
            module, x, np.asarray(port_mean), train=True, output="running_mean", layer=label
        )
    except (RuntimeError, ValueError, TypeError):
        return None


def with_tied_causes(
    rows: list[LayerDiff], torch_grads: Mapping, copies: Mapping, tol: float
) -> list[LayerDiff]:
    """``rows`` (gradients) with "weights tied in torch, not in the port" in the note of each
    failing parameter whose torch gradient is the sum of the port's gradients of its copies
    (``copies``: ``{torch name: {Flax leaf: gradient in torch layout}}``)."""
    from parity.convert.shared import tied_gradient_cause

    out = []
    for r in rows:
        found = None
        if not r.passed and r.name in copies and r.name in torch_grads:
            found = tied_gradient_cause(r.name, torch_grads[r.name], copies[r.name], tol)
        out.append(r if found is None else dataclasses.replace(r, note=_join(r.note, found)))
    return out


def _join(a: str, b: str) -> str:
    return "; ".join(t for t in (a, b) if t)


def with_between_causes(
    rows: list[LayerDiff], torch_model, run: TorchRun, finputs: Mapping, between, train: bool
) -> list[LayerDiff]:
    """``rows`` with the probable cause of the first failing ``input`` row whose in-between code
    is one parameter-free torch module (``nn.GELU``, ``nn.MaxPool2d``), or ends with one (``relu``
    then ``maxpool``): that module, on its own torch input, against the Flax input of the next
    layer, which is the port's version of its output."""
    leaves = leaf_modules(torch_model)
    out, prev = [], None
    for i, r in enumerate(rows):
        if r.kind == "input" and not r.passed:
            lone = between.lone_module(prev, r.name) or between.last_module(prev, r.name)
            cause = (
                None
                if lone is None
                else _lone_cause(leaves, run, finputs, _key(lone), _key(r.name), train, lone)
            )
            if cause is not None:
                r = dataclasses.replace(r, note=_join(r.note, f"probable cause: {cause}"))
                out += [r, *rows[i + 1 :]]
                return out
        if r.kind == "output":
            prev = r.name
        out.append(r)
    return out


def _lone_cause(leaves, run: TorchRun, finputs: Mapping, key, next_key, train: bool, label: str):
    module, x, t_out, f_in = (
        leaves.get(key[0]),
        run.inputs.get(key),
        run.outputs.get(key),
        finputs.get(next_key),
    )
    return _try_cause(module, x, t_out, f_in, train, label)
