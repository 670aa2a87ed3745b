"""The harness on user models: ``parity check --torch SPEC --flax SPEC --input-shape ...``.

:class:`SpecModels` builds one :class:`~parity.harness.pair.ModelPair` from two SPECs
(:mod:`parity.spec`), the torch weights converted into the Flax model, the parameter and layer
maps derived from the pairing; :meth:`SpecModels.foundation` computes the basic rows (eval and
train forward with shared dropout masks, BN statistics after one train pass, worst judged
gradient, round trip) for :func:`parity.harness.suite.run_policy`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from parity import convert
from parity.harness import ahead
from parity.harness import outputs as outputs_mod
from parity.harness.dropout import (
    SharedDropout,
    active_dropout,
    flax_dropout_active,
    flax_dropout_hook,
    is_flax_dropout,
)
from parity.harness.input_checks import check_input_rank, check_memory, small_run
from parity.harness.lazy_init import build_flax, linen_converted, nnx_converted
from parity.harness.localize import (
    GradientOptions,
    LocalizeOptions,
    localize,
    localize_gradients,
)
from parity.harness.metrics import judged_forward, judged_rel_l2
from parity.harness.pair import ModelPair
from parity.harness.results import Case, CaseInput, Check, CheckError, ModelsError
from parity.harness.sides import leaf_modules
from parity.harness.widen import widen_flax
from parity.spec import SpecError


@dataclass(frozen=True)
class SpecInput:
    """The input of a user model, in torch layout: ``shape`` (``N`` first), ``dtype``, ``high``
    (integers in ``[0, high)``; required for integer dtypes) and whether Flax gets it
    channels-last (rank >= 3) or as it is. Invalid settings raise ``ValueError``."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    high: int | None = None
    channels_last: bool = True

    def __post_init__(self) -> None:
        try:
            kind = np.dtype(self.dtype).kind
        except TypeError:
            raise CheckError(
                f"--input-dtype {self.dtype!r}: not a numeric dtype (e.g. float32, int64)"
            ) from None
        if kind not in "fiu":
            raise CheckError(f"--input-dtype {self.dtype!r}: use a float or an integer dtype")
        if kind in "iu" and (self.high is None or self.high < 1):
            raise CheckError(f"--input-dtype {self.dtype} needs --input-high N (ids in [0, N), N >= 1)")
        if kind == "f" and self.high is not None:
            raise CheckError("--input-high applies to integer inputs; give --input-dtype int64 with it")

    @property
    def layout(self) -> str:
        """``'channels_first'`` or ``'same'`` (:data:`parity.layout.Layout`)."""
        return "channels_first" if self.channels_last else "same"

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"

    def sample(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """One batch in torch layout (``n`` samples instead of ``shape[0]`` when given)."""
        shape = self.shape if n is None else (n, *self.shape[1:])
        if self.is_float:
            return rng.standard_normal(shape).astype(self.dtype)
        return rng.integers(0, self.high, size=shape).astype(self.dtype)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _dropout_rng(module: Any, kwargs: dict) -> dict:
    """``kwargs`` with a key for an NNX ``Dropout`` that is on but holds no ``rngs`` (a port
    that hard-codes ``deterministic=False`` on a dropout built for eval only): it runs, and
    the eval rows measure it, instead of an error."""
    from flax import nnx

    if isinstance(module, nnx.Dropout) and module.rngs is None and kwargs.get("rngs") is None:
        if flax_dropout_active(module, kwargs):
            return {**kwargs, "rngs": jax.random.key(0)}
    return kwargs


def _layer_map(pair: ModelPair, inp: SpecInput, user_map: Any) -> dict[str, str]:
    """``{torch leaf: flax name}``: the Flax submodule called with one of the torch name's
    spellings (:func:`parity.convert.naming.flax_spellings`), or the user map's path."""
    called: set[str] = set()

    def record(name, module, call_next, args, kwargs):
        called.add(name)
        return call_next(*args, **_dropout_rng(module, kwargs))

    side = pair.flax_side()
    shape = pair.flax_input(np.zeros(inp.shape, inp.dtype)).shape
    x = jax.ShapeDtypeStruct(shape, np.dtype(inp.dtype))
    try:
        jax.eval_shape(
            lambda p, b, r, x: side.apply(p, b, r, x, train=False, hook=record)[0],
            side.params,
            side.batch_stats,
            side.rest,
            x,
        )
    except Exception as e:  # user code
        raise SpecError(f"{type(pair.flax).__name__} on input {shape} failed: {_one_line(e)}") from None
    from parity.convert.naming import below_mapped_parent, flax_spellings, load_user_map

    mapped = load_user_map(user_map)
    slashed = {c.replace(".", "/") for c in called}
    # Linen auto-names (ResNetBlock_3/Conv_1) and relative map rules pair by the converter's order
    auto = convert.module_pairs(pair.torch, slashed, mapped)
    out = {}
    for name in leaf_modules(pair.torch):
        given = mapped(name) if mapped is not None else None
        if given is None and mapped is not None:  # below a module a rule moved
            given = below_mapped_parent(name, slashed, mapped)
        found = [given.strip("/").replace("/", ".")] if given else []
        found = found or list(dict.fromkeys(s.replace("/", ".") for s in flax_spellings(name)))
        found = [f for f in found if f in called]
        found = found or ([auto[name].replace("/", ".")] if name in auto else [])
        if len(found) == 1 and found[0] != name:
            out[name] = found[0]
    return out


def _torch_output_tree(model: tnn.Module, inp: SpecInput) -> Any:
    """The eval output of a private copy of ``model`` on two samples (``None`` if it fails:
    the checks after it name the failure)."""
    import copy

    tm = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            xt = torch.from_numpy(inp.sample(np.random.default_rng(0), min(inp.shape[0], 2)))
            dtype = next(iter(tm.parameters()), torch.zeros(())).dtype
            return tm(xt.to(dtype) if xt.is_floating_point() else xt)
    except Exception:  # user code: reported by the checks that follow
        return None


def _flax_output_tree(model: Any, variables: Any, inp: SpecInput) -> Any:
    """The eval output structure of the Flax model (``jax.eval_shape``; ``None`` if it fails)."""
    from parity.harness.sides import FlaxSide

    side = FlaxSide(model, variables)
    shape = (
        ModelPair(tnn.Identity(), model, variables, input_layout=inp.layout)
        .flax_input(np.zeros(inp.shape, inp.dtype))
        .shape
    )
    x = jax.ShapeDtypeStruct(shape, np.dtype(inp.dtype))
    try:
        return jax.eval_shape(
            lambda p, b, r, x: side.apply(p, b, r, x, train=False)[0],
            side.params,
            side.batch_stats,
            side.rest,
            x,
        )
    except Exception:  # user code: reported by the layer map's run
        return None


def _output_path(tree: Any, wanted: str | None, side: str) -> str | None:
    """The output leaf one side's passes run on: ``wanted`` (``--output``) or the first tensor
    leaf; ``None`` for a bare tensor."""
    if tree is None or (wanted is None and outputs_mod.is_array(tree)):
        return None
    try:
        if wanted is None:
            return outputs_mod.default_path(tree)
        outputs_mod.pick(tree, wanted)
        return wanted
    except KeyError as e:
        raise SpecError(f"--output: the {side} model has {e.args[0]}") from None


def _extra_inputs(spec: SpecModels) -> outputs_mod.ExtraInputs | None:
    return outputs_mod.extra_inputs(spec.flax, spec.input, spec.extra_inputs)


def _converted_flax(spec, flax_model, kind, abstract, extra, state, torch_model, options) -> tuple:
    """``(flax_model, full_flax, variables)`` holding the torch weights: Linen variables converted
    into shapes when torch fills every leaf, an NNX model built from shapes likewise
    (:mod:`parity.harness.lazy_init`); ``full_flax``: the model adapted to return every output
    leaf (:func:`parity.harness.outputs.adapt_flax`), which the output tree is read from."""
    from parity.spec import build, linen_variables

    inp = spec.input
    convert_into = lambda target: convert.torch_to_flax(state, torch_model, target, **options)
    if kind == "linen":
        full_flax = outputs_mod.adapt_flax(flax_model, None, extra)
        init = lambda shapes_only: linen_variables(
            full_flax, inp.shape, inp.channels_last, inp.dtype, shapes_only=shapes_only
        )
        return flax_model, full_flax, linen_converted(convert_into, init)
    rebuild = lambda: build(spec.flax, ("nnx",))[0]
    flax_model = nnx_converted(flax_model, abstract, rebuild, convert_into)
    return flax_model, outputs_mod.adapt_flax(flax_model, None, extra), None


def build_pair(spec: SpecModels, device: str) -> ModelPair:
    """Build both models, convert the torch weights into the Flax one, derive the maps.
    Raises :class:`parity.spec.SpecError` or :class:`parity.convert.ConversionError` (one line,
    module and key named) when the SPECs do not give a convertible pair. Models whose output is
    not one tensor are adapted to return the leaf ``spec.output`` (or their first tensor leaf;
    :mod:`parity.harness.outputs`), the Flax one also kept whole (``ModelPair.full_flax``)."""
    from parity.spec import build

    inp = spec.input
    torch_model, _ = build(spec.torch, ("torch",))
    flax_model, kind, abstract = build_flax(spec.flax)  # NNX from shapes (lazy_init)
    extra = _extra_inputs(spec)
    if extra is not None:
        outputs_mod.adapt_torch(torch_model, None, extra=extra)
    # before any full-size tensor: the rank the first layer takes, the memory the batch needs
    run = small_run(torch_model, lambda n: inp.sample(np.random.default_rng(0), n), inp.shape[0])
    check_input_rank(inp.shape, run)
    check_memory(inp.shape, np.dtype(inp.dtype).itemsize, run)
    torch_path = _output_path(_torch_output_tree(torch_model, inp), spec.output, "torch")
    if torch_path is not None:
        outputs_mod.adapt_torch(torch_model, torch_path, only=spec.output is not None)
    options = {
        "user_map": spec.user_map,
        "flatten_shapes": dict(spec.flatten_shapes) if spec.flatten_shapes else None,
        "input_shape": inp.shape if inp.is_float else None,
    }
    state = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    flax_model, full_flax, variables = _converted_flax(
        spec, flax_model, kind, abstract, extra, state, torch_model, options
    )
    flax_tree = _flax_output_tree(full_flax, variables, inp)
    keyed = flax_tree is not None and not outputs_mod.is_array(flax_tree)
    same_leaf = torch_path if keyed and torch_path in flax_tree else None
    flax_path = _output_path(flax_tree, spec.output or same_leaf, "Flax")
    flax_model = outputs_mod.adapt_flax(flax_model, flax_path, extra) if flax_path is not None else full_flax
    if kind == "nnx":
        full_flax = outputs_mod.nnx_as(flax_model, type(full_flax)) if flax_path is not None else flax_model
    # module dtype=float32: the float64 passes compute in float64 where Flax allows it (widen)
    widened: set[str] = set()
    flax_model = widen_flax(flax_model, widened)
    full_flax = widen_flax(full_flax, widened) if flax_path is not None else flax_model
    param_map = convert.params_to_torch_fn(
        torch_model, variables if kind == "linen" else flax_model, **options
    )
    torch_model.to(torch.device(device))
    pair = ModelPair(
        torch_model,
        flax_model,
        variables,
        param_map=param_map,
        input_layout=inp.layout,
        convert_options=options,
        full_flax=full_flax if flax_path is not None else None,
    )
    pair.layer_map = _layer_map(pair, inp, spec.user_map)
    pair.widened = widened  # read by SpecModels.notes (Linen: filled by the float64 passes)
    return pair


def outputs(
    pair: ModelPair,
    x: np.ndarray,
    train: bool,
    seed: int,
    float64: bool = False,
    given=None,
    low: list[str] | None = None,
):
    """``({path: torch leaf}, {path: flax leaf}, dropout uniforms, active)`` of one forward pass
    in ``train`` or eval mode, every output leaf (:func:`parity.harness.outputs.leaves`; ``''``
    for a bare tensor), dropout with shared masks (``given`` replays earlier ones); copies only,
    nothing changes. ``float64``: both sides in double precision. ``active``: the Flax dropout
    layers that dropped in eval mode (a port that hard-codes ``deterministic=False``); ``low``
    gets ``'name (dtype)'`` of each Flax layer whose float input or output is not float64
    under ``float64``. The float32 eval pass is kept on ``pair`` per ``(x, seed)``: validation,
    the output shapes and the forward rows all ask for it (the passes work on copies, so it
    cannot change)."""
    if train or float64 or given is not None or low is not None:
        return _outputs(pair, x, train, seed, float64, given, low)
    digest = hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()
    key = ("outputs_eval", digest, x.shape, x.dtype.str, seed)
    if key not in pair.memo:
        pair.memo[key] = _outputs(pair, x, False, seed, False, None, None)
    return pair.memo[key]


def _outputs(pair: ModelPair, x: np.ndarray, train: bool, seed: int, float64: bool, given, low):
    from parity.harness.sides import FlaxSide

    masks = SharedDropout(seed) if train else None
    out_t, record = outputs_mod.torch_tree(pair.torch, x, train, masks, given, float64)
    to_flax = pair.to_flax()
    uniforms = {to_flax(n): [jnp.asarray(u) for u in us] for n, us in record.items()}
    active: list[str] = []

    def watch(name, module, call_next, args, kwargs):
        if not train and is_flax_dropout(module) and flax_dropout_active(module, kwargs):
            active.append(name)
        out = call_next(*args, **_dropout_rng(module, kwargs))
        if float64 and low is not None:
            # a narrower input: the port's own code cast it (x.astype(jnp.float32))
            seen = jax.tree.leaves(args) + ([] if _is_embed(module) else jax.tree.leaves(out))
            kinds = {
                str(a.dtype) for a in seen if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
            }
            low.extend(f"{name} ({k})" for k in sorted(kinds - {"float64"}))
        return out

    hook = flax_dropout_hook(uniforms, watch, torch_layout=True) if uniforms else watch
    side = FlaxSide(pair.full_flax or pair.flax, pair.variables, pair.call_kwargs)
    out_f = outputs_mod.flax_tree(side, pair.flax_input(x), train, hook, float64, seed)
    return out_t, out_f, record, sorted(set(active))


def _is_embed(module: Any) -> bool:
    """An embedding lookup: a float32 ``dtype`` (NNX's default) only rounds weights that came
    from float32 torch weights, exactly, so it does not keep the pass from being float64."""
    import flax.linen as fnn
    from flax import nnx

    return isinstance(module, (fnn.Embed, nnx.Embed))


def primary(pair: ModelPair, tree: dict, side: str) -> str:
    """The path of the leaf ``pair``'s passes run on, in one side's :func:`outputs` tree."""
    model = pair.torch if side == "torch" else pair.flax
    path = getattr(type(model), "_parity_output", None)
    return path if path is not None else next(p for p, v in tree.items() if v is not None)


def output_shapes(pair: ModelPair, x: np.ndarray, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The eval output's shapes ``(torch, flax)`` of the leaf the passes run on; a model that
    fails on ``x`` raises :class:`parity.spec.SpecError`."""
    try:
        out_t, out_f, _, _ = outputs(pair, x, False, seed)
    except Exception as e:  # user code
        raise SpecError(f"{pair.name} on input {x.shape} ({x.dtype}) failed: {_one_line(e)}") from None
    t, f = out_t[primary(pair, out_t, "torch")], out_f[primary(pair, out_f, "flax")]
    if t.ndim < 2:
        raise SpecError(f"{pair.name} returned shape {t.shape}: labels need logits (N, ..., C)")
    return t.shape, f.shape


def forward_differences(
    pair: ModelPair, x: np.ndarray, train: bool, tol: float, seed: int, notes: set[str]
) -> tuple[dict[str, float | str], list[str]]:
    """``({leaf: judged relative L2 difference, or 'torch S vs Flax S'}, active dropouts)`` of
    every tensor leaf both sides return (:func:`parity.harness.metrics.judged_forward`). When a
    side cannot compute in float64 (it fails under x64, or a module fixes float32), the leaf is
    judged in float32 and ``notes`` gets the reason."""
    t32, f32, record, active = outputs(pair, x, train, seed)
    cache: dict = {}

    def float64() -> tuple[dict, dict]:
        if "trees" not in cache:
            cache["trees"] = _float64_trees(pair, x, train, seed, record, (t32, f32), notes)
        return cache["trees"]

    only = getattr(type(pair.torch), "_parity_only", False)
    leaves_t = {p: v for p, v in t32.items() if v is not None and f32.get(p) is not None}
    if only or not leaves_t:  # different structures (a tuple against a bare tensor): the passes' leaves
        pt, pf = primary(pair, t32, "torch"), primary(pair, f32, "flax")
        t32, f32 = {pt: t32[pt]}, {pt: f32[pf]}
        leaves_t = dict(t32)
    out: dict[str, float | str] = {}
    for p, t in leaves_t.items():
        f = f32[p]
        if t.shape != f.shape:
            out[p] = f"torch {tuple(t.shape)} vs Flax {tuple(f.shape)}"
            continue
        out[p] = judged_forward(t, f, tol, lambda p=p: tuple(tree.get(p) for tree in float64()))
    return out, active


def _float64_trees(pair, x, train, seed, record, float32_trees, notes: set[str]) -> tuple[dict, dict]:
    """Both output trees in float64, or the float32 ones (and a note) when a side cannot."""
    low: list[str] = []
    try:
        t64, f64, _, _ = outputs(pair, x, train, seed, float64=True, given=record, low=low)
    except Exception as e:  # user code under x64
        notes.add(f"{pair.name}: does not run in float64 ({_one_line(e)}); judged in float32")
        return float32_trees
    if low:
        notes.add(
            f"{pair.name}: Flax layer {low[0]} computes below float64 when run in float64 "
            "(its dtype is fixed); judged in float32"
        )
        return float32_trees
    for side, tree in (("torch", t64), ("Flax", f64)):
        kinds = {str(v.dtype) for v in tree.values() if v is not None and v.dtype.kind == "f"}
        if kinds - {"float64"}:
            notes.add(
                f"{pair.name}: the {side} side computes in {', '.join(sorted(kinds - {'float64'}))} "
                "when run in float64 (a module fixes its dtype); judged in float32"
            )
            return float32_trees
    return t64, f64


def batches(pair: ModelPair, inp: SpecInput, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``(x, y, training batches)``: the checked batch (torch layout), integer labels over the
    torch output's last dimension (shape ``out.shape[:-1]``), and ``steps`` more ``(x, y)``
    batches for the trajectory, all drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    x = inp.sample(rng)
    shape, _ = output_shapes(pair, x, seed)

    def labels() -> np.ndarray:
        return rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int64)

    y = labels()
    return x, y, [(inp.sample(rng), labels()) for _ in range(steps)]


def _forward_rows(pair: ModelPair, x, tol: float, seed: int, notes: set[str]) -> tuple[list[Check], bool]:
    """The ``forward_{eval,train}_rel_l2`` rows (the leaf the passes run on; ``[path]`` rows
    for every other leaf), a FAIL row per Flax dropout active in eval mode, and whether the
    passes' leaves have the same shape (a FAIL row naming both shapes when not)."""
    rows: list[Check] = []
    same = True
    for mode in ("eval", "train"):
        diffs, active = forward_differences(pair, x, mode == "train", tol, seed, notes)
        main = getattr(type(pair.torch), "_parity_output", None)
        main = main if main in diffs else next(iter(diffs))
        for path, value in diffs.items():
            name = f"forward_{mode}_rel_l2" + ("" if path == main else f"[{path}]")
            if isinstance(value, str):
                same = same and path != main
                name, value = f"{name}: shapes differ, {value}{_after_layer(pair, x, seed)}", float("inf")
            rows.append(Check.judged(pair.name, pair.kind, name, value, tol))
        rows += [
            Check.judged(pair.name, pair.kind, f"dropout_active_in_eval_mode[{n}]", 1.0, 0.0) for n in active
        ]
    leaves = [
        np.asarray(v) for tree in outputs(pair, x, False, seed)[:2] for v in tree.values() if v is not None
    ]
    pair.zero_output = bool(leaves) and not any(np.any(v) for v in leaves)  # read by SpecModels.notes
    return rows, same


def _after_layer(pair: ModelPair, x, seed: int) -> str:
    """Where outputs of different shapes arise: the first layer that differs in eval mode, or
    the code after the last layer when every layer matches."""
    try:
        rep = localize(pair, x, LocalizeOptions(mode="eval", seed=seed))
    except Exception:  # the layers cannot be compared either: the shapes say enough
        return ""
    first = rep.first_divergent
    if first is not None:
        cause = first.note.partition("probable cause: ")[2].split("; ")[0]
        return (
            f" (first differing layer: {first.name}" + (f"; probable cause: {cause}" if cause else "") + ")"
        )
    last = rep.rows[-1].name if rep.rows else "?"
    return f" (every layer matches; the outputs part after the last layer, {last})"


def foundation_rows(
    pair: ModelPair, x, y, tols: dict, seed: int, notes: set[str] | None = None, eval_layers: bool = False
) -> tuple[list[Check], dict]:
    """Eval and train forward, BN running statistics after one train pass (when the model has
    BatchNorm), worst judged gradient, round trip; and the train-mode layer and gradient reports
    they came from (for ``--localize``; ``eval_layers`` adds the eval-mode layer report, made
    before the gradients, which free jax's compiled eager operations). Outputs of different
    shapes stop after the forward rows (``{}`` reports)."""
    notes = set() if notes is None else notes

    def row(name: str, value: float, tol: float) -> Check:
        return Check.judged(pair.name, pair.kind, name, value, tol)

    # the gradient programs compile in the background while the eager passes below run
    gradient_options = GradientOptions(tol=tols["gradient"], seed=seed, free_caches=True)
    ahead.compile_gradients(pair, x, y, gradient_options)
    # can both sides compute in float64? On the whole batch: the float64 passes below run on
    # it, and jax compiles each eager operation once per shape (a 2-sample probe compiled
    # every operation of the model a second time)
    _float64_trees(pair, x, False, seed, None, ({}, {}), notes)
    rows, same_shape = _forward_rows(pair, x, tols["forward"], seed, notes)
    if not same_shape:
        return rows, {}
    gradient_options = dataclasses.replace(gradient_options, float64_check=not notes)
    modes = ("eval", "train") if eval_layers else ("train",)
    reports = {f"layers_{m}": localize(pair, x, LocalizeOptions(m, tols["layers"], seed=seed)) for m in modes}
    reports["gradients_train"] = localize_gradients(pair, x, y, gradient_options)
    for kind, name in (
        ("running_mean", "bn_running_mean_rel_l2"),
        ("running_var", "bn_running_var_corrected_rel_l2"),
    ):
        # judged_rel_l2: the float64 verdict where float32 cannot resolve the statistics
        values = [judged_rel_l2(r, tols["bn_state"]) for r in reports["layers_train"].rows if r.kind == kind]
        if values:
            rows.append(row(name, max(values), tols["bn_state"]))
    rows.append(row("gradient_max_rel_l2", reports["gradients_train"].worst_judged(), tols["gradient"]))
    rows.append(row("roundtrip_max_abs", pair.roundtrip_max_abs(), 0.0))
    return rows, reports


@dataclass(frozen=True)
class SpecModels:
    """What ``parity check --torch SPEC --flax SPEC`` checks: the two SPECs, the input, and the
    converter's options (``user_map``: a ``--map`` file or callable; ``flatten_shapes``). The
    pair is built once per device (:meth:`pair`) and shared by every section."""

    torch: str
    flax: str
    input: SpecInput
    user_map: Any = None
    flatten_shapes: Mapping[str, tuple[int, ...]] | None = None
    output: str | None = None
    extra_inputs: tuple[tuple[str, SpecInput], ...] = ()
    _built: dict = field(default_factory=dict, compare=False, repr=False)
    _notes: set = field(default_factory=set, compare=False, repr=False)

    def notes(self) -> list[str]:
        """One line per statement the rows need (e.g. why a side was judged in float32, which
        Flax layers the float64 passes widened: :mod:`parity.harness.widen`)."""
        widened = [
            f"{p.name}: Flax layer(s) {', '.join(sorted(p.widened))} fix a float32 dtype; the float64 "
            "passes compute them in float64 (the float32 passes as written)"
            for p in self._built.values()
            if p.widened
        ]
        zero = [
            f"{p.name}: both models' eval outputs are all zero (a zero-initialised head?): the forward "
            "rows compare nothing; the layer rows (--localize) and the gradient rows still compare"
            for p in self._built.values()
            if p.zero_output
        ]
        return sorted(self._notes) + widened + zero

    def pair(self, device: str) -> ModelPair:
        """The :class:`ModelPair` on ``device`` (built on first use: :func:`build_pair`)."""
        if device not in self._built:
            self._built[device] = build_pair(self, device)
        return self._built[device]

    def validate(self, config: Any) -> None:
        """Build the pair, run it once in eval mode, and refuse ``dropout_masks='off'`` on a
        model with dropout: one line (:class:`parity.spec.SpecError`,
        :class:`parity.convert.ConversionError`) before any output."""
        from parity.convert import ConversionError

        try:
            pair = self.pair("cpu")
            batches(pair, self.input, config.seed, 0)
        except (SpecError, ConversionError, OSError) as e:
            raise ModelsError(str(e)) from None
        if config.dropout_masks == "off" and active_dropout(pair.torch):
            raise ModelsError(
                f"--dropout-masks off: {pair.name} has dropout ({', '.join(active_dropout(pair.torch))}); "
                "build it with p=0 or use --dropout-masks shared"
            )

    def foundation(
        self, config: Any, device: str, precision: str, tols: dict
    ) -> tuple[list[Check], list[CaseInput]]:
        """The basic rows of one precision policy, and the one case the other sections run on
        (its train-mode layer and gradient reports already computed)."""
        pair = self.pair(device)
        x, y, train = batches(pair, self.input, config.seed, config.trajectory)
        rows, reports = foundation_rows(pair, x, y, tols, config.seed, self._notes, config.localize)
        if not reports:  # outputs of different shapes: no labels fit both sides
            return rows, []
        pair.float32_only = bool(self._notes)
        case = Case(pair.name, pair.kind, precision, device, tols)
        return rows, [CaseInput(case, lambda: pair, x, y, train, reports)]
