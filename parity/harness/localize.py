"""Layer-by-layer parity: where a PyTorch model and its Flax port first disagree.

:func:`localize` runs a torch model and a Flax model (Linen module + variables, or an NNX
module) that hold the same converted weights on the same input, captures every layer's output
on both sides, aligns them by name and layout, and reports per layer the max absolute
difference, the relative L2 difference, the cosine similarity and the share of elements outside
tolerance, plus the first layer that exceeds the tolerance. :func:`localize_gradients` does the
same for per-parameter gradients, in backward order.

How each side is observed (nothing in the models is changed; every hook is removed afterwards):

* torch: forward hooks on the *leaf* modules (modules without children), which see each call's
  input and output, in execution order.
* Linen: ``flax.linen.intercept_methods`` around ``apply``: the interceptor sees every
  submodule's ``__call__`` with its path (``context.module.path``) and can replace its input.
  ``capture_intermediates=True`` records outputs too, but cannot substitute inputs, which
  ``reinject`` needs; one mechanism serves both.
* NNX: NNX has no method interceptor (``nnx.capture(..., method_outputs=...)`` sows outputs, but
  cannot substitute inputs either), so :func:`nnx_intercept` does what ``nnx.capture`` does
  internally: it wraps ``__call__`` on the *classes* of the model's submodules for the duration
  of a ``with`` block (Python looks dunder methods up on the type, so a per-instance patch would
  be ignored), and maps each instance to its attribute path with ``nnx.iter_modules``.

Alignment: a torch leaf module ``name`` (from ``named_modules``, e.g. ``features.0``) matches
the Flax submodule whose path joined by ``.`` is the same (Linen ``features_0`` does not match
``features.0``: pass ``layer_map={'features.0': 'features_0'}``). Layout, per activation
(:func:`parity.harness.sides.torch_to_flax_layout`): a channels-first map (NCHW / NCW) is
compared after :func:`parity.layout.to_channels_last`, tokens ``(N, L, D)`` (the same in both
frameworks) as they are; the Flax output's shape decides, and where both readings fit (``C``
equal to every spatial size) the torch module's type does (:func:`layout_hint`). The model
input is given to Flax per ``input_layout``. The input of the first dense layer after a
flatten is permuted from torch's ``c*H*W + h*W + w`` order to Flax's ``h*W*C + w*C + c`` order
(:func:`activation_to_flax`).

Dropout with identical masks (``dropout_masks='shared'``, the default in train mode): one
uniform array ``u`` per dropout call is drawn from a numpy generator keyed by
``(seed, step, layer name, call index)`` in torch layout; each side keeps the elements with
``u >= rate`` (its *own* rate, so a rate mismatch still shows) and scales them by
``1 / (1 - rate)``. torch applies it with a forward hook on ``nn.Dropout`` that replaces the
module's output; Linen and NNX with the interceptor above, replacing ``Dropout.__call__``.
``dropout_masks='independent'`` lets each framework draw its own masks (a fault, for tests).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from torch import nn as tnn

from parity import convert
from parity.harness.compare import GRADIENT_TOL_FLOAT64, rel_l2, unbiased_running_var
from parity.harness.sides import (
    FlaxHook,
    FlaxSide,
    Layout,
    SharedDropout,
    TorchRun,
    activation_to_flax,
    flax_bn_stats,
    flax_dropout_hook,
    flax_gradients,
    flax_loss,
    layout_hint,
    leaf_modules,
    mask_scale,
    name_mapper,
    nnx_intercept,
    run_torch,
    to_numpy,
    torch_gradients,
    torch_loss,
    torch_shared_dropout,
    torch_to_flax_layout,
)
from parity.table import format_table

#: Re-exported from :mod:`parity.harness.sides`, where they live, for the public API.
__all__ = [
    "DropoutMasks",
    "FlaxHook",
    "FlaxSide",
    "LayerDiff",
    "LocalizationReport",
    "Mode",
    "SharedDropout",
    "activation_to_flax",
    "backward_order",
    "compare_tensor",
    "cosine",
    "flatten_shapes_of",
    "flax_dropout_hook",
    "flax_loss",
    "leaf_modules",
    "localize",
    "localize_gradients",
    "mask_scale",
    "nnx_intercept",
    "rejudge_in_float64",
    "share_outside",
    "torch_loss",
    "torch_shape_of",
    "torch_shared_dropout",
]

Mode = Literal["eval", "train"]
DropoutMasks = Literal["shared", "independent"]


# ---------------------------------------------------------------------------- small metrics


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64 (``1`` when both are zero)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def share_outside(candidate: np.ndarray, reference: np.ndarray, tol: float) -> float:
    """Share of elements with ``|candidate - reference| > tol * (|reference| + rms(reference))``.

    Relative for large elements, absolute at the layer's own scale for elements near zero (a
    plain relative test would flag every element that happens to be close to zero).
    """
    c, r = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    if r.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(r * r)))
    return float(np.mean(np.abs(c - r) > tol * (np.abs(r) + rms)))


@dataclass(frozen=True)
class LayerDiff:
    """One compared tensor: a layer output, a BN running statistic, or a parameter gradient.

    ``name`` is the torch name; ``kind`` is ``output``, ``running_mean``, ``running_var`` or
    ``grad``; values compare Flax (``candidate``) against torch (``reference``), both in
    torch-comparable layout. ``float64_rel_l2`` (optional) is torch float32 vs torch float64 on
    the same computation: the float32 noise floor of that tensor. ``port_float64_rel_l2``
    (gradients only, set by :func:`rejudge_in_float64`) is Flax float64 vs torch float64: the
    verdict on a gradient that float32 cannot resolve.
    """

    name: str
    kind: str
    flax_name: str
    shape: tuple[int, ...]
    max_abs: float
    rel_l2: float
    cosine: float
    outside: float
    passed: bool
    float64_rel_l2: float | None = None
    note: str = ""
    port_float64_rel_l2: float | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (``shape`` as a list)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def compare_tensor(
    name: str,
    kind: str,
    flax_name: str,
    candidate: np.ndarray | None,
    reference: np.ndarray | None,
    tol: float,
    note: str = "",
) -> LayerDiff:
    """A :class:`LayerDiff` for ``candidate`` (Flax) vs ``reference`` (torch); ``passed`` is
    ``rel_l2 <= tol``. A missing side or a shape mismatch is a failing row with ``inf``."""
    if candidate is None or reference is None or np.shape(candidate) != np.shape(reference):
        why = (
            "missing on the Flax side"
            if candidate is None
            else "missing on the torch side"
            if reference is None
            else f"shape {np.shape(candidate)} vs torch {np.shape(reference)}"
        )
        shape = tuple(np.shape(reference if reference is not None else candidate))
        return LayerDiff(
            name,
            kind,
            flax_name,
            shape,
            math.inf,
            math.inf,
            0.0,
            1.0,
            False,
            note=(note + "; " if note else "") + why,
        )
    c, r = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    max_abs = float(np.max(np.abs(c - r))) if c.size else 0.0
    rel = rel_l2(c, r)
    return LayerDiff(
        name,
        kind,
        flax_name,
        tuple(r.shape),
        max_abs,
        rel,
        cosine(c, r),
        share_outside(c, r, tol),
        bool(rel <= tol),
        note=note,
    )


@dataclass
class LocalizationReport:
    """Rows in forward order (layers) or backward order (gradients), and the first failure."""

    title: str
    rows: list[LayerDiff]
    tol: float
    meta: dict = field(default_factory=dict)

    @property
    def first_divergent(self) -> LayerDiff | None:
        """The first row whose ``rel_l2`` exceeds the tolerance, or ``None``."""
        return next((r for r in self.rows if not r.passed), None)

    @property
    def passed(self) -> bool:
        """True when every row is within tolerance."""
        return self.first_divergent is None

    def row(self, name: str, kind: str | None = None) -> LayerDiff:
        """The row for torch name ``name`` (and ``kind``, default the first one of that name)."""
        for r in self.rows:
            if r.name == name and (kind is None or r.kind == kind):
                return r
        raise KeyError(
            f"{name!r}{'' if kind is None else f' ({kind})'} not in the report; "
            f"rows: {', '.join(sorted({r.name for r in self.rows}))}"
        )

    def worst_judged(self) -> float:
        """The largest value the rows are judged by (:func:`parity.harness.compare.judged_rel_l2`:
        ``rel_l2``, or a float64 re-judged gradient on the float32 scale); ``0`` without rows."""
        from parity.harness.compare import judged_rel_l2

        return max((judged_rel_l2(r, self.tol) for r in self.rows), default=0.0)

    def summary(self) -> str:
        """One line: passed, or the first divergent row with its value and the tolerance."""
        first = self.first_divergent
        if first is None:
            worst = max((r.rel_l2 for r in self.rows), default=0.0)
            return f"{self.title}: all {len(self.rows)} tensors within tol {self.tol:.1e} (worst rel_l2 {worst:.2e})"
        return (
            f"{self.title}: first divergent: {first.name} ({first.kind}, flax {first.flax_name}): "
            f"rel_l2 {first.rel_l2:.3e} > tol {self.tol:.1e}, max_abs {first.max_abs:.3e}, "
            f"cosine {first.cosine:.6f}, {first.outside:.1%} of elements outside"
            + (f" [{first.note}]" if first.note else "")
        )

    def format(self) -> str:
        """The summary line and a table, one row per compared tensor."""
        head = (
            "name",
            "kind",
            "flax",
            "shape",
            "max_abs",
            "rel_l2",
            "cosine",
            "outside",
            "f64_ref",
            "f64_port",
            "pass",
        )
        body = [
            (
                r.name,
                r.kind,
                r.flax_name,
                "x".join(map(str, r.shape)),
                f"{r.max_abs:.2e}",
                f"{r.rel_l2:.2e}",
                f"{r.cosine:.6f}",
                f"{r.outside:.1%}",
                "-" if r.float64_rel_l2 is None else f"{r.float64_rel_l2:.1e}",
                "-" if r.port_float64_rel_l2 is None else f"{r.port_float64_rel_l2:.1e}",
                ("ok" if r.passed else "FAIL") + (f" {r.note}" if r.note else ""),
            )
            for r in self.rows
        ]
        return self.summary() + "\n" + format_table(head, body)

    def __str__(self) -> str:
        return self.format()

    def as_dict(self) -> dict:
        """``{'title', 'tol', 'passed', 'first_divergent', 'rows', **meta}`` for JSON."""
        first = self.first_divergent
        return {
            "title": self.title,
            "tol": self.tol,
            "passed": self.passed,
            "first_divergent": None if first is None else {"name": first.name, "kind": first.kind},
            "rows": [r.as_dict() for r in self.rows],
            **self.meta,
        }


# ---------------------------------------------------------------------------- layout helpers


def torch_shape_of(flax_shape: Sequence[int]) -> tuple[int, ...]:
    """The torch (channels-first) shape of a Flax activation shape (``ndim >= 3`` moves C)."""
    s = tuple(flax_shape)
    return (s[0], s[-1], *s[1:-1]) if len(s) >= 3 else s


def flatten_shapes_of(torch_model: tnn.Module) -> dict[str, tuple[int, ...]]:
    """``{linear name: (C, *spatial)}`` for the first dense layer after a flatten, from
    :func:`parity.convert.layer_spec`; ``{}`` when the model has layers the converter does not
    know (pass ``flatten_shapes`` yourself then)."""
    try:
        return {
            layer.name: tuple(layer.flatten_shape)
            for layer in convert.layer_spec(torch_model)
            if layer.flatten_shape
        }
    except convert.ConversionError:
        return {}


# ------------------------------------------------------------------------------- localize


def localize(
    torch_model: tnn.Module,
    flax_model: Any,
    x: np.ndarray,
    *,
    variables: Mapping | None = None,
    mode: Mode = "eval",
    layer_map: Mapping[str, str] | None = None,
    tol: float = 1e-5,
    reinject: bool = False,
    dropout_masks: DropoutMasks = "shared",
    seed: int = 0,
    step: int = 0,
    flatten_shapes: Mapping[str, Sequence[int]] | None = None,
    call_kwargs: Callable[[bool], dict] | None = None,
    float64_reference: bool = False,
    input_layout: Layout = "channels_first",
) -> LocalizationReport:
    """Compare every layer of ``torch_model`` and ``flax_model`` on the same input.

    Args:
        torch_model: the reference, any ``torch.nn.Module``; it is deep-copied, never modified.
        flax_model: a Linen module (then pass ``variables``) or an NNX module, holding the same
            weights converted (:mod:`parity.convert`); never modified.
        x: one batch, channels-first numpy (NCHW / NCW, or ``(N, F)``); Flax receives it
            channels-last.
        mode: ``'eval'`` (running statistics, no dropout) or ``'train'`` (batch statistics,
            running statistics updated and compared too, dropout per ``dropout_masks``).
        layer_map: ``{torch leaf name: flax name}`` where names differ (Flax names are paths
            joined by ``.``).
        tol: relative L2 tolerance per tensor (float32: see docs/HARNESS.md).
        reinject: feed each Flax layer the torch layer's input (converted to Flax layout), so
            each row measures that layer alone and errors do not accumulate.
        dropout_masks: ``'shared'`` (identical masks, see module docs) or ``'independent'``.
        seed, step: the shared masks' key; ``step=k`` reproduces the masks of step ``k`` of a
            :func:`parity.harness.trajectory.trajectory` run with the same ``seed``.
        flatten_shapes: ``{linear name: (C, *spatial)}`` for a dense layer fed by a flatten;
            derived from :func:`parity.convert.layer_spec` when the model allows it.
        call_kwargs: ``train -> kwargs`` for the Flax call when the default (``train=``) does
            not fit the model.
        float64_reference: also run a float64 copy of the torch model and report each layer's
            float32-vs-float64 difference (``float64_rel_l2``), the float32 noise floor.
        input_layout: ``'channels_first'`` (an image or signal, moved to channels-last for
            Flax) or ``'same'`` (tokens or ids, given to Flax as they are).

    Returns:
        A :class:`LocalizationReport` with one ``output`` row per torch leaf call in execution order,
        followed in train mode by ``running_mean`` / ``running_var`` rows for each BatchNorm
        (torch's unbiased ``running_var`` against the Flax variance corrected by
        :func:`parity.harness.compare.unbiased_running_var`), and ``first_divergent``. Parameter-free
        torch modules with no Flax counterpart (``nn.ReLU``: a plain function in Flax) are
        listed in ``meta['unmatched_stateless_torch_layers']``; any other unmatched layer is a
        failing row.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    if dropout_masks not in ("shared", "independent"):
        raise ValueError(f"dropout_masks must be 'shared' or 'independent', got {dropout_masks!r}")
    train = mode == "train"
    x = np.asarray(x)
    tm = copy.deepcopy(torch_model)
    masks = SharedDropout(seed) if (train and dropout_masks == "shared") else None
    trun = run_torch(tm, x, train, masks, step=step)
    ref = _float64_run(torch_model, x, train, masks, trun) if float64_reference else None

    side = FlaxSide(flax_model, variables, call_kwargs)
    to_flax = name_mapper(layer_map)
    fshapes = dict(flatten_shapes) if flatten_shapes is not None else flatten_shapes_of(torch_model)
    rng = (
        jax.random.fold_in(jax.random.key(seed), step) if (train and dropout_masks == "independent") else None
    )
    xf = activation_to_flax(x, layout=input_layout)
    fouts, new_bs = _flax_outputs(side, xf, trun, to_flax, fshapes, reinject, masks is not None, train, rng)
    bs = (side.pure(side.batch_stats), side.pure(new_bs))
    rows, skipped = _output_rows(tm, trun, ref, fouts, to_flax, bs, train, tol)
    meta = {"mode": mode, "reinject": reinject, "dropout_masks": dropout_masks if train else "n/a"}
    meta["flax"] = side.kind
    if skipped:
        meta["unmatched_stateless_torch_layers"] = skipped
    title = f"localize (mode={mode}, reinject={'on' if reinject else 'off'}, {side.kind})"
    return LocalizationReport(title, rows, tol, meta)


def _float64_run(torch_model: tnn.Module, x: np.ndarray, train: bool, masks, trun: TorchRun) -> TorchRun:
    """A float64 copy of ``torch_model`` on the same input, replaying ``trun``'s dropout masks."""
    x64 = x.astype(np.float64) if x.dtype.kind == "f" else x
    return run_torch(copy.deepcopy(torch_model).double(), x64, train, masks, given_uniforms=trun.uniforms)


def _flax_outputs(
    side: FlaxSide,
    x: np.ndarray,
    trun: TorchRun,
    to_flax: Callable[[str], str],
    fshapes: Mapping[str, Sequence[int]],
    reinject: bool,
    shared_masks: bool,
    train: bool,
    rng: jax.Array | None,
) -> tuple[dict[tuple[str, int], np.ndarray], Any]:
    """Run the Flax side once on ``x`` (Flax layout), capturing every submodule call that has a
    torch counterpart: ``({(torch name, call): output}, new batch_stats)``. ``reinject`` feeds
    each call the torch input of the same call; ``shared_masks`` applies torch's dropout masks."""
    from_flax = {to_flax(n): n for n, _ in trun.order}
    fouts: dict[tuple[str, int], np.ndarray] = {}
    fcounts: dict[str, int] = {}

    def capture(name, module, call_next, args, kwargs):
        tname = from_flax.get(name)
        k = fcounts.get(name, 0)
        fcounts[name] = k + 1
        if reinject and tname is not None and (tname, k) in trun.inputs and args:
            xin = trun.inputs[(tname, k)]
            flat = fshapes.get(tname)
            xin = activation_to_flax(xin, flat) if flat else torch_to_flax_layout(xin, np.shape(args[0]))
            args = (jnp.asarray(xin, dtype=args[0].dtype), *args[1:])
        out = call_next(*args, **kwargs)
        if tname is not None:
            fouts[(tname, k)] = np.asarray(out)
        return out

    uniforms = {to_flax(n): [jnp.asarray(u) for u in us] for n, us in trun.uniforms.items()}
    hook = flax_dropout_hook(uniforms, capture, torch_layout=True) if shared_masks else capture
    xf = jnp.asarray(x)
    _, new_bs, _ = side.apply(side.params, side.batch_stats, side.rest, xf, train=train, hook=hook, rng=rng)
    return fouts, new_bs


def _is_stateless(module: tnn.Module) -> bool:
    return not any(True for _ in module.parameters(recurse=False)) and not any(
        True for _ in module.buffers(recurse=False)
    )


def _output_rows(
    tm: tnn.Module,
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
    tbn = {n: m for n, m in tm.named_modules() if isinstance(m, tnn.modules.batchnorm._BatchNorm)}
    leaves = leaf_modules(tm)
    rows: list[LayerDiff] = []
    skipped: list[str] = []
    for name, k in trun.order:
        label = name if k == 0 else f"{name}#{k}"
        t_out = trun.outputs.get((name, k))
        if t_out is None:
            continue
        f_out = fouts.get((name, k))
        if f_out is None and _is_stateless(leaves[name]):
            skipped.append(label)
            continue
        t_flax = torch_to_flax_layout(
            t_out, None if f_out is None else np.shape(f_out), layout_hint(leaves[name])
        )
        row = compare_tensor(label, "output", to_flax(name), f_out, t_flax, tol)
        if ref is not None and (name, k) in ref.outputs:
            row = _with_ref(row, t_out, ref.outputs[(name, k)])
        rows.append(row)
        if train and name in tbn and k == 0:
            rows.extend(_bn_rows(name, to_flax(name), tbn[name], *bs, trun.bn_counts.get(name), tol))
    return rows, skipped


def _with_ref(row: LayerDiff, t32: np.ndarray, t64: np.ndarray) -> LayerDiff:
    from dataclasses import replace

    return replace(row, float64_rel_l2=rel_l2(t32, t64))


def _bn_rows(
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


# ------------------------------------------------------------------------------ gradients


def backward_order(torch_model: tnn.Module, call_order: Sequence[str]) -> list[str]:
    """Parameter names in backward order: leaf modules in reverse order of their first forward
    call, each module's own parameters reversed (``bias`` before ``weight``); parameters of
    modules never called come last, in reverse registration order."""
    names = [n for n, _ in torch_model.named_parameters()]
    seen, order = set(), []
    for mod in reversed(list(dict.fromkeys(call_order))):
        m = torch_model.get_submodule(mod) if mod else torch_model
        own = [f"{mod}.{p}" if mod else p for p, _ in m.named_parameters(recurse=False)]
        for p in reversed(own):
            if p in names and p not in seen:
                seen.add(p)
                order.append(p)
    order += [p for p in reversed(names) if p not in seen]
    return order


#: A float64 gradient whose norm is below this fraction of the largest parameter gradient's is
#: zero to float64 resolution (a conv bias right before a train-mode BatchNorm: the batch mean
#: removes it exactly). Its relative difference is rounding noise over noise (~1 even between
#: two float64 runs), so it is judged on the scale of the largest gradient instead.
ZERO_GRADIENT_FRACTION = 1e-12


def rejudge_in_float64(
    row: LayerDiff,
    torch32: np.ndarray,
    torch64: np.ndarray,
    flax64: np.ndarray | None,
    scale: float | None = None,
) -> LayerDiff:
    """The float64 verdict on a gradient row that failed in float32 (docs/HARNESS.md, "gradients
    float32 cannot resolve").

    Passes when the float64 gradients of both sides agree within
    :data:`parity.harness.compare.GRADIENT_TOL_FLOAT64`: relative to the torch gradient, or,
    when that is zero to float64 resolution (norm below :data:`ZERO_GRADIENT_FRACTION` of
    ``scale``, the largest float64 parameter-gradient norm), relative to ``scale``. The row keeps
    its float32 values and records ``float64_rel_l2`` (torch float32 vs torch float64: how far
    float32 itself is) and ``port_float64_rel_l2`` (Flax float64 vs torch float64: the verdict).
    """
    from dataclasses import replace

    shaped = flax64 is not None and np.shape(flax64) == np.shape(torch64)
    zero = bool(scale) and float(np.linalg.norm(torch64)) < ZERO_GRADIENT_FRACTION * scale
    if not shaped:
        port = math.inf
    elif zero:
        port = float(np.linalg.norm(np.asarray(flax64, np.float64) - torch64) / scale)
    else:
        port = rel_l2(flax64, torch64)
    ok = port <= GRADIENT_TOL_FLOAT64
    measure = "abs diff / largest gradient norm (true gradient is zero)" if zero else "rel_l2"
    note = (
        f"float32 cannot resolve it (torch f32 vs f64 {rel_l2(torch32, torch64):.1e}); "
        f"float64 port {measure} {port:.1e} {'<=' if ok else '>'} {GRADIENT_TOL_FLOAT64:.0e}"
    )
    return replace(
        row,
        passed=ok,
        float64_rel_l2=rel_l2(torch32, torch64),
        port_float64_rel_l2=port,
        note=(row.note + "; " if row.note else "") + note,
    )


def localize_gradients(
    torch_model: tnn.Module,
    flax_model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    variables: Mapping | None = None,
    mode: Mode = "train",
    loss: str = "cross_entropy",
    tol: float = 1e-5,
    dropout_masks: DropoutMasks = "shared",
    seed: int = 0,
    step: int = 0,
    layer_map: Mapping[str, str] | None = None,
    param_map: Callable[[dict], dict[str, np.ndarray]] | None = None,
    call_kwargs: Callable[[bool], dict] | None = None,
    float64_check: bool = True,
    input_layout: Layout = "channels_first",
) -> LocalizationReport:
    """Per-parameter gradient differences of the mean loss, first divergent in backward order.

    Both sides differentiate ``loss(model(x), y)`` with respect to their parameters in ``mode``
    (train: batch statistics, shared dropout masks). Flax gradients are mapped to torch names
    and layout with :func:`parity.convert.params_to_torch` (or ``param_map(flax_grads) ->
    {torch name: array}``). A torch parameter without a gradient (``requires_grad=False``,
    unused) counts as a zero gradient. Rows come in backward order (:func:`backward_order`),
    so ``first_divergent`` is the first parameter whose gradient diverges as backprop runs.

    ``float64_check``: a parameter whose float32 gradients differ by more than ``tol`` is
    recomputed on both sides in float64 (same weights, batch and masks) and passes when the
    float64 gradients agree within :data:`parity.harness.compare.GRADIENT_TOL_FLOAT64`
    (:func:`rejudge_in_float64`): float32 cannot resolve a gradient that sums cancelling terms
    or crosses a max-pool / ReLU decision within rounding distance; float64 can.
    ``input_layout``: as in :func:`localize`.
    """
    train = mode == "train"
    x, y = np.asarray(x), np.asarray(y)
    tm = copy.deepcopy(torch_model).train(train)
    masks = SharedDropout(seed) if (train and dropout_masks == "shared") else None
    tgrads, no_grad, order, record = torch_gradients(tm, x, y, loss, masks, step)

    side = FlaxSide(flax_model, variables, call_kwargs)
    to_flax = name_mapper(layer_map)
    uniforms = {to_flax(n): [jnp.asarray(u) for u in us] for n, us in record.items()}
    uniforms = uniforms if masks is not None else None
    layouts = {"input_layout": input_layout, "torch_layout": True}
    rng = (
        jax.random.fold_in(jax.random.key(seed), step) if (train and dropout_masks == "independent") else None
    )
    to_torch = param_map or (lambda tree: convert.params_to_torch(tree, torch_model))
    fgrads = to_torch(flax_gradients(side, x, y, loss, train, uniforms, rng, **layouts))
    rows = [
        compare_tensor(
            n, "grad", n, fgrads.get(n), tgrads[n], tol, note="no torch grad" if n in no_grad else ""
        )
        for n in backward_order(tm, order)
    ]
    # a parameter with no torch gradient is a structural difference, not rounding: not re-judged
    if float64_check and any(not r.passed and r.name not in no_grad for r in rows):
        t64 = copy.deepcopy(torch_model).double().train(train)
        tg64, _, _, _ = torch_gradients(t64, x, y, loss, masks, step, given=record)
        fg64 = to_torch(flax_gradients(side, x, y, loss, train, uniforms, rng, float64=True, **layouts))
        scale = max(float(np.linalg.norm(g)) for g in tg64.values())
        rows = [
            r
            if r.passed or r.name in no_grad
            else rejudge_in_float64(r, tgrads[r.name], tg64[r.name], fg64.get(r.name), scale)
            for r in rows
        ]
    return LocalizationReport(
        f"gradients (mode={mode}, loss={loss}, {side.kind}, backward order)",
        rows,
        tol,
        {"mode": mode, "loss": loss, "flax": side.kind, "float64_check": float64_check},
    )
