"""Layer-by-layer parity: where a PyTorch model and its Flax port first disagree.

:func:`localize` runs both sides of a :class:`~parity.harness.pair.ModelPair` on one input,
captures every layer's output, aligns them by name and layout and reports per layer the max
absolute and relative L2 differences, the cosine and the share of elements outside tolerance
(:mod:`parity.harness.report`); :func:`localize_gradients` does the same for per-parameter
gradients in backward order. How each side is observed, and why, is in docs/HARNESS.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from torch import nn as tnn

from parity.defaults import FLOAT32_REL_TOL, FLOAT64_REL_TOL
from parity.harness import memory
from parity.harness.between import Between, input_rows, insert_input_rows
from parity.harness.diagnose import with_between_causes, with_causes, with_tied_causes
from parity.harness.dropout import (
    FlaxHook,
    SharedDropout,
    flax_dropout_hook,
    mask_scale,
    torch_shared_dropout,
)
from parity.harness.flax_grad import flax_loss
from parity.harness.layer_rows import output_rows
from parity.harness.layers64 import computes_in_float64, float64_pass, judge_rows, narrow_layers, worst_port
from parity.harness.metrics import GRADIENT_TOL_FLOAT64, REF_FACTOR, cosine, rel_l2, share_outside
from parity.harness.pair import ModelPair
from parity.harness.report import LayerDiff, LocalizationReport, compare_tensor
from parity.harness.sides import (
    FlaxCapture,
    FlaxSide,
    TorchRun,
    flax_bn_stats,
    leaf_modules,
    nnx_intercept,
    torch_loss,
)
from parity.layout import activation_to_flax, torch_shape_of

#: Re-exported for the public API (they live in the modules imported above).
__all__ = [
    "DropoutMasks",
    "FlaxHook",
    "FlaxSide",
    "GradientOptions",
    "LayerDiff",
    "LocalizationReport",
    "LocalizeOptions",
    "Mode",
    "ModelPair",
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


@dataclass(frozen=True)
class LocalizeOptions:
    """How :func:`localize` compares.

    ``mode``: ``'eval'`` (running statistics, no dropout) or ``'train'`` (batch statistics,
    running statistics updated and compared too, dropout per ``dropout_masks``). ``tol``:
    relative L2 tolerance per tensor. ``reinject``: feed each Flax layer the torch layer's
    input, so each row measures that layer alone. ``dropout_masks``: ``'shared'`` (identical
    masks) or ``'independent'`` (each framework its own: a fault, for tests). ``seed``,
    ``step``: the shared masks' key (``step=k`` replays step ``k`` of a trajectory with the
    same seed). ``float64_reference``: also run a float64 torch copy and report each layer's
    float32-vs-float64 difference (``float64_rel_l2``), the float32 noise floor. ``float64``:
    run both sides again in float64 and judge every row by the float64 port difference at
    :data:`parity.defaults.FLOAT64_REL_TOL` (:mod:`parity.harness.layers64`); rows keep their
    float32 values.
    """

    mode: Mode = "eval"
    tol: float = FLOAT32_REL_TOL
    reinject: bool = False
    dropout_masks: DropoutMasks = "shared"
    seed: int = 0
    step: int = 0
    float64_reference: bool = False
    float64: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train', got {self.mode!r}")
        if self.dropout_masks not in ("shared", "independent"):
            raise ValueError(f"dropout_masks must be 'shared' or 'independent', got {self.dropout_masks!r}")


@dataclass(frozen=True)
class GradientOptions:
    """How :func:`localize_gradients` compares: ``mode``, ``tol``, ``dropout_masks``, ``seed``,
    ``step`` as in :class:`LocalizeOptions` (``mode`` defaults to ``'train'``); ``loss``:
    ``'cross_entropy'`` (integer labels) or ``'mse'``; ``float64_check``: re-judge in float64
    a parameter whose float32 gradients differ by more than ``tol`` (:func:`rejudge_in_float64`);
    ``free_caches``: drop jax's compiled programs and trim the heap (:func:`memory.release`)
    before the float64 gradients, the peak of memory (``parity check`` sets it: the eager
    operations compiled for the passes before are not needed again). It changes no value.
    """

    mode: Mode = "train"
    tol: float = FLOAT32_REL_TOL
    loss: str = "cross_entropy"
    dropout_masks: DropoutMasks = "shared"
    seed: int = 0
    step: int = 0
    float64_check: bool = True
    free_caches: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train', got {self.mode!r}")


def flatten_shapes_of(torch_model: tnn.Module) -> dict[str, tuple[int, ...]]:
    """``{linear name: (C, *spatial)}`` for the first dense layer after a flatten
    (:meth:`parity.harness.pair.ModelPair.dense_flatten_shapes`)."""
    return ModelPair(torch_model, None).dense_flatten_shapes()


def independent_rng(train: bool, dropout_masks: str, seed: int, step: int) -> jax.Array | None:
    """Each framework's own dropout stream (``dropout_masks='independent'``), else ``None``."""
    if train and dropout_masks == "independent":
        return jax.random.fold_in(jax.random.key(seed), step)
    return None


def localize(
    pair: ModelPair, x: np.ndarray, options: LocalizeOptions = LocalizeOptions()
) -> LocalizationReport:
    """Compare every layer of ``pair``'s two models on the same input ``x`` (torch layout).

    Neither model is modified. Returns a :class:`LocalizationReport` with one ``output`` row
    per torch leaf call in execution order, followed in train mode by ``running_mean`` /
    ``running_var`` rows for each BatchNorm (torch's unbiased ``running_var`` against the Flax
    variance corrected by :func:`parity.harness.metrics.unbiased_running_var`). Parameter-free
    torch modules with no Flax counterpart (``nn.ReLU``: a plain function in Flax) are listed in
    ``meta['unmatched_stateless_torch_layers']``; any other unmatched layer is a failing row.
    With ``options.float64`` every row takes the float64 verdict (:mod:`parity.harness.layers64`);
    a layer whose input already differs while the previous layer matched gets an ``input`` row
    naming the code between them (:mod:`parity.harness.between`); a failing layer's note gives
    its probable cause (:mod:`parity.harness.diagnose`).
    """
    from parity.layout import ambiguous_layout

    with ambiguous_layout("same" if pair.input_layout == "same" else None):
        return _localize(pair, x, options)


def _localize(pair: ModelPair, x: np.ndarray, options: LocalizeOptions) -> LocalizationReport:
    o = options
    train = o.mode == "train"
    x = np.asarray(x)
    masks = SharedDropout(o.seed) if (train and o.dropout_masks == "shared") else None
    torch_side = pair.torch_side()
    trun = torch_side.activations(x, train, masks, step=o.step)
    run64, why64 = _torch_float64(torch_side, x, masks, trun, o)

    side, to_flax, fshapes = pair.flax_side(), pair.to_flax(), pair.dense_flatten_shapes()

    def plan(run: TorchRun) -> FlaxCapture:
        return FlaxCapture(run, to_flax, fshapes, o.reinject, masks is not None, inputs={})

    capture, xf = plan(trun), pair.flax_input(x)
    rng = independent_rng(train, o.dropout_masks, o.seed, o.step)
    fouts, new_bs = side.activations(xf, capture, train, rng)
    bs = (side.bn_stats(), side.bn_stats(new_bs))
    rows, skipped = output_rows(
        trun, run64 if o.float64_reference else None, fouts, to_flax, bs, train, o.tol
    )
    inputs = input_rows(trun, capture.inputs, to_flax, fshapes, o.tol)
    meta = {"mode": o.mode, "reinject": o.reinject, "dropout_masks": o.dropout_masks if train else "n/a"}
    meta["flax"] = side.kind
    meta.update({"float64": why64} if why64 else {})
    cause_from, wide = (trun, fouts), None
    if o.float64 and run64 is not None and _same_weights(pair, side, meta):
        wide = _float64_verdicts(side, xf, run64, plan, to_flax, train, rng, meta)
        if wide is not None:
            narrow = narrow_layers(run64.order, wide.outputs, o.reinject)
            rows = judge_rows(rows, wide, trun, narrow, o.tol)
            inputs = {r.name: r for r in judge_rows(list(inputs.values()), wide, trun, narrow, o.tol)}
            cause_from = (run64, wide.outputs) if not narrow else cause_from
    between = Between(pair.torch, x, train)
    rows = insert_input_rows(rows, inputs, between.describe)
    means = _bn_means(trun, wide.bn_stats[1] if cause_from[0] is run64 else bs[1], to_flax)
    rows = with_causes(rows, pair.torch, *cause_from, train, every=o.reinject, bn_means=means)
    finputs = wide.inputs if cause_from[0] is run64 else capture.inputs
    rows = with_between_causes(rows, pair.torch, cause_from[0], finputs, between, train)
    if skipped:
        meta["unmatched_stateless_torch_layers"] = skipped
    title = f"localize (mode={o.mode}, reinject={'on' if o.reinject else 'off'}, {side.kind})"
    return LocalizationReport(title, rows, o.tol, meta)


def _torch_float64(
    torch_side, x, masks, trun: TorchRun, o: LocalizeOptions
) -> tuple[TorchRun | None, str | None]:
    """The torch float64 run when ``o`` asks for one, or ``None`` and why not (user code that
    cannot run in float64, such as a LayerNorm subclass that casts its input to float32)."""
    if not (o.float64_reference or o.float64):
        return None, None
    try:
        return torch_side.activations(x, o.mode == "train", masks, given=trun.uniforms, float64=True), None
    except Exception as e:  # user code
        first = (str(e).splitlines() or [""])[0][:160]
        return None, f"not run: torch does not run in float64 ({type(e).__name__}: {first}); float32 verdicts"


def _bn_means(run: TorchRun, stats: Mapping, to_flax: Callable[[str], str]) -> dict:
    """``{torch BatchNorm name: the port's running mean}`` from a pure ``batch_stats`` tree."""
    found = {n: flax_bn_stats(stats, to_flax(n)) for n in run.bn_counts}
    return {n: m["mean"] for n, m in found.items() if m is not None}


def _same_weights(pair: ModelPair, side: FlaxSide, meta: dict) -> bool:
    """True when the Flax parameters, in torch names and layout, equal torch's exactly (the
    converter moves values, it does not round them). Two sides trained apart in float32 differ
    by float32 rounding in their weights, which float64 cannot judge below: then the float32
    verdicts stand and ``meta['float64']`` says why."""
    try:
        flax_params = pair.to_torch(side.pure(side.params))
    except Exception:  # a mapping that refuses its own tree: nothing to say, judge in float64
        return True
    worst = 0.0
    for name, p in pair.torch.named_parameters():
        f = flax_params.get(name)
        t = p.detach().cpu().numpy()
        if f is not None and np.shape(f) == t.shape and not np.array_equal(f, t):
            worst = max(worst, rel_l2(f, t))
    if worst > 0:
        meta["float64"] = (
            f"not run: the two sides hold different weights (worst parameter rel_l2 {worst:.1e}), "
            "below which float64 cannot judge; float32 verdicts"
        )
    return worst == 0


def _float64_verdicts(side, xf, run64, plan, to_flax, train, rng, meta: dict):
    """The float64 pass (:func:`parity.harness.layers64.float64_pass`), or ``None`` with the
    reason in ``meta['float64']`` when the Flax side cannot run in float64."""
    try:
        wide = float64_pass(side, xf, run64, plan, to_flax, train, rng)
    except Exception as e:  # a port that crashes under x64 is judged in float32, with the reason
        meta["float64"] = (
            f"not run, judged in float32: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
        return None
    own = sorted({n for (n, _), out in wide.outputs.items() if np.asarray(out).dtype != np.float64})
    if own:
        later = "" if plan(run64).reinject else " and the layers after them"
        meta["float64"] = (
            f"the port computes in float32 even in the float64 pass (a module dtype) at: {', '.join(own)}; "
            f"those layers{later} are judged on the float32 scale"
        )
    else:
        meta["float64"] = f"every layer judged in float64 (tol {FLOAT64_REL_TOL:.0e})"
    meta["float64_worst_rel_l2"] = worst_port(wide)
    return wide


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
    narrow: bool = False,
    tol: float = FLOAT32_REL_TOL,
) -> LayerDiff:
    """The float64 verdict on a gradient row that failed in float32 (docs/HARNESS.md, "gradients
    float32 cannot resolve").

    Passes when the float64 gradients of both sides agree within
    :data:`parity.harness.metrics.GRADIENT_TOL_FLOAT64`: relative to the torch gradient, or,
    when that is zero to float64 resolution (norm below :data:`ZERO_GRADIENT_FRACTION` of
    ``scale``, the largest float64 parameter-gradient norm), relative to ``scale``. The row keeps
    its float32 values and records ``float64_rel_l2`` (torch float32 vs torch float64: how far
    float32 itself is) and ``port_float64_rel_l2`` (Flax float64 vs torch float64: the verdict).
    ``narrow``: the port computes in float32 even in the float64 pass (a module ``dtype``,
    :func:`parity.harness.layers64.computes_in_float64`): the row is judged on the float32 scale
    instead, against ``tol``.
    """
    shaped = flax64 is not None and np.shape(flax64) == np.shape(torch64)
    if narrow and shaped:
        return _rejudge_on_float32_scale(row, torch32, torch64, flax64, tol)
    zero = bool(scale) and float(np.linalg.norm(torch64)) < ZERO_GRADIENT_FRACTION * scale
    if not shaped:
        port = math.inf
    elif zero:
        port = float(np.linalg.norm(np.asarray(flax64, np.float64) - torch64) / scale)
    else:
        port = rel_l2(flax64, torch64)
    ok = port <= GRADIENT_TOL_FLOAT64
    measure = "abs diff / largest gradient norm (true gradient is zero)" if zero else "rel_l2"
    verdict = f"float64 port {measure} {port:.1e} {'<=' if ok else '>'} {GRADIENT_TOL_FLOAT64:.0e}"
    # the sentence follows the numbers: "cannot resolve" only where float64 clears the row
    said = "float32 cannot resolve it" if ok else "a real difference: float64 keeps it"
    note = f"{said} (torch f32 vs f64 {rel_l2(torch32, torch64):.1e}); {verdict}"
    return dataclasses.replace(
        row,
        passed=ok,
        float64_rel_l2=rel_l2(torch32, torch64),
        port_float64_rel_l2=port,
        note=(row.note + "; " if row.note else "") + note,
    )


def _rejudge_on_float32_scale(
    row: LayerDiff, torch32: np.ndarray, torch64: np.ndarray, flax64: np.ndarray, tol: float
) -> LayerDiff:
    """The verdict on a gradient row of a port that computes in float32 even in the float64
    pass (a module ``dtype``): its float64 gradient carries float32 rounding, so it passes when
    it is within ``max(tol, REF_FACTOR * torch float32's distance)`` of torch float64."""
    noise = rel_l2(torch32, torch64)
    bound = max(tol, REF_FACTOR * noise)
    port = rel_l2(flax64, torch64)
    ok = port <= bound
    note = (
        "the port computes in float32 even in the float64 pass (a module dtype): judged on the "
        f"float32 scale, port vs torch float64 {port:.1e} {'<=' if ok else '>'} {bound:.1e} "
        f"(torch float32 vs float64 {noise:.1e}, tol {tol:.0e})"
    )
    judged = port * tol / bound if ok else max(row.rel_l2, port)
    return dataclasses.replace(
        row,
        passed=ok,
        float64_rel_l2=noise,
        judged=judged,
        note=(row.note + "; " if row.note else "") + note,
    )


def localize_gradients(
    pair: ModelPair, x: np.ndarray, y: np.ndarray, options: GradientOptions = GradientOptions()
) -> LocalizationReport:
    """Per-parameter gradient differences of the mean loss, first divergent in backward order.

    Both sides differentiate ``loss(model(x), y)`` with respect to their parameters in
    ``options.mode`` (train: batch statistics, shared dropout masks); Flax gradients are
    mapped to torch names and layout by :meth:`ModelPair.to_torch`. A torch parameter without a
    gradient (``requires_grad=False``, unused) counts as a zero gradient. Rows come in backward
    order (:func:`backward_order`). With ``float64_check`` a parameter above ``tol`` is
    recomputed on both sides in float64 and passes when the float64 gradients agree within
    :data:`parity.harness.metrics.GRADIENT_TOL_FLOAT64` (:func:`rejudge_in_float64`).
    """
    o = options
    train = o.mode == "train"
    x, y = np.asarray(x), np.asarray(y)
    masks = SharedDropout(o.seed) if (train and o.dropout_masks == "shared") else None
    torch_side = pair.torch_side()
    tgrads, no_grad, order, record, tm = torch_side.gradients(x, y, o.loss, train, masks, o.step)
    names = backward_order(tm, order)
    del tm  # the private copy's weights (tgrads are views of its gradients, kept)

    side = pair.flax_side()
    to_flax = pair.to_flax()
    uniforms = {to_flax(n): [jnp.asarray(u) for u in us] for n, us in record.items()}
    uniforms = uniforms if masks is not None else None
    rng = independent_rng(train, o.dropout_masks, o.seed, o.step)
    flax_args = (x, y, o.loss, train, uniforms, rng)
    ftree = side.gradients(*flax_args, input_layout=pair.input_layout)
    fgrads = pair.to_torch(ftree)
    fnames, note = _flax_param_names(pair, ftree), {n: "no torch grad" for n in no_grad}
    rows = [
        compare_tensor(n, "grad", fnames.get(n, n), fgrads.get(n), tgrads[n], o.tol, note=note.get(n, ""))
        for n in names
    ]
    del fgrads  # torch-layout copies of the Flax gradients: the rows hold what they need
    # a parameter with no torch gradient is a structural difference, not rounding: not re-judged
    if o.float64_check and any(not r.passed and r.name not in no_grad for r in rows):
        narrow = not computes_in_float64(side, pair.flax_input(x))
        if o.free_caches:
            memory.release()
        # Flax first: its compile is the peak of memory, so it runs before the torch float64 copy
        fg64 = pair.to_torch(side.gradients(*flax_args, float64=True, input_layout=pair.input_layout))
        tg64 = torch_side.gradients(x, y, o.loss, train, masks, o.step, given=record, float64=True)[0]
        scale = max(float(np.linalg.norm(g)) for g in tg64.values())
        rows = [
            r
            if r.passed or r.name in no_grad
            else rejudge_in_float64(r, tgrads[r.name], tg64[r.name], fg64.get(r.name), scale, narrow, o.tol)
            for r in rows
        ]
    side.drop_programs()  # compiled ahead and not needed (float64, when every float32 row passed)
    if any(not r.passed for r in rows):
        rows = with_tied_causes(rows, tgrads, _gradient_copies(pair, ftree), o.tol)
    return LocalizationReport(
        f"gradients (mode={o.mode}, loss={o.loss}, {side.kind}, backward order)",
        rows,
        o.tol,
        {"mode": o.mode, "loss": o.loss, "flax": side.kind, "float64_check": o.float64_check},
    )


def _gradient_copies(pair: ModelPair, ftree: dict) -> dict:
    """``{torch name: {Flax leaf: gradient in torch layout}}`` of the Flax gradient tree
    (:func:`parity.convert.params_to_torch_fn` with ``copies=True``); ``{}`` for a pair the
    general converter does not pair (its ``param_map`` is the user's own)."""
    from parity import convert

    source = pair.variables if pair.kind == "linen" else pair.flax
    try:
        return convert.params_to_torch_fn(pair.torch, source, copies=True, **pair.convert_options)(ftree)
    except Exception:  # a pair outside the general converter's rules: no copies to name
        return {}


def _flax_param_names(pair: ModelPair, ftree: dict) -> dict[str, str]:
    """``{torch parameter: Flax leaf path joined by '.'}``: every Flax leaf filled with its own
    index and mapped by :meth:`ModelPair.to_torch` (layout moves keep the value, so a torch
    tensor that holds one index came from that leaf); ``{}`` where the mapping refuses it."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(ftree)
    paths = [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p) for p, _ in with_paths]
    marked = [np.full(np.shape(a), float(i), np.float32) for i, (_, a) in enumerate(with_paths)]
    try:
        mapped = pair.to_torch(jax.tree.unflatten(treedef, marked))
    except Exception:  # a user param_map that computes, not moves: keep the torch names
        return {}
    names = {}
    for name, a in mapped.items():
        values = np.unique(np.asarray(a))
        if values.size == 1 and 0 <= int(values[0]) < len(paths):
            names[name] = paths[int(values[0])]
    return names
