"""The float64 judge of :func:`parity.harness.localize.localize`: both sides run again in
float64 on the same input (same dropout masks), every layer is compared at
:data:`parity.defaults.FLOAT64_REL_TOL`, and each float32 row takes that verdict.

Correct ports agree to ~1e-12 in float64, so a config difference far below float32's
resolution (a LayerNorm epsilon of 1e-6 vs 1e-5, a tanh GELU: 4e-6 to 8e-6 relative in float32)
fails with the layer named, and a float32 row that only rounding pushes over the tolerance (a
train-mode BatchNorm over 4 values per channel) passes. A Flax module that fixes its own
``dtype=jnp.float32`` computes in float32 even here: such layers (and, without reinjection,
every layer after one) are judged on the float32 scale that module imposes instead.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from parity.arrays import to_jax
from parity.defaults import FLOAT64_REL_TOL
from parity.harness.between import input_rows
from parity.harness.flax_grad import float_cast
from parity.harness.layer_rows import output_rows
from parity.harness.metrics import REF_FACTOR, rel_l2
from parity.harness.report import LayerDiff
from parity.harness.sides import FlaxCapture, FlaxSide, TorchRun


@dataclass(frozen=True)
class Float64Pass:
    """What the float64 pass saw: the torch float64 run, the Flax float64 outputs and inputs
    (``{(torch name, call): array}``, Flax layout), their rows at ``FLOAT64_REL_TOL``
    (``output`` and BatchNorm rows, then ``input`` rows) and the Flax batch statistics
    ``(before, after)`` as pure trees."""

    run: TorchRun
    outputs: Mapping
    inputs: Mapping
    rows: list[LayerDiff]
    bn_stats: tuple = ({}, {})


def flax_activations_float64(
    side: FlaxSide, x: np.ndarray, plan: FlaxCapture, train: bool, rng: jax.Array | None
) -> tuple[dict, dict]:
    """:meth:`FlaxSide.activations` with the weights, statistics and ``x`` (Flax layout) cast
    to float64 under ``jax.enable_x64``; the side itself is not modified. A captured output
    whose dtype is not float64 is a layer that computed in a narrower dtype of its own."""
    with jax.enable_x64(True):
        cast = float_cast(jnp.float64)
        wide = copy.copy(side)
        wide.params, wide.batch_stats, wide.rest = (
            jax.tree.map(cast, t) for t in (side.params, side.batch_stats, side.rest)
        )
        fouts, new_bs = wide.activations(np.asarray(cast(to_jax(x))), plan, train, rng)
        return fouts, (wide.bn_stats(), wide.bn_stats(new_bs))


def float64_pass(
    side: FlaxSide,
    xf: np.ndarray,
    run64: TorchRun,
    plan: Callable[[TorchRun], FlaxCapture],
    to_flax: Callable[[str], str],
    train: bool,
    rng: jax.Array | None,
) -> Float64Pass:
    """Run the Flax side in float64 against ``run64`` (the torch float64 run) and compare."""
    capture = plan(run64)
    fouts, bs = flax_activations_float64(side, xf, capture, train, rng)
    rows, _ = output_rows(run64, None, fouts, to_flax, bs, train, FLOAT64_REL_TOL)
    finputs = capture.inputs or {}
    rows += input_rows(run64, finputs, to_flax, capture.flatten_shapes, FLOAT64_REL_TOL).values()
    return Float64Pass(run64, fouts, finputs, rows, bs)


def narrow_layers(order: list, outputs: Mapping, reinject: bool) -> set[str]:
    """Torch names whose float64-pass rows are not float64 computations: the Flax output came
    back narrower than float64 (a module ``dtype``), or, without ``reinject``, an earlier layer's
    did (its rounding reaches every later input)."""
    narrow, tainted = set(), False
    for name, k in order:
        out = outputs.get((name, k))
        own = out is not None and np.asarray(out).dtype != np.float64
        tainted = tainted or (own and not reinject)
        if own or tainted:
            narrow.add(name)
    return narrow


def judge_rows(
    rows32: list[LayerDiff], wide: Float64Pass, trun32: TorchRun, narrow: set[str], tol: float
) -> list[LayerDiff]:
    """Each float32 row with the float64 verdict (:func:`_judged`); rows keep their float32
    values; where float64 decides (it reverses the float32 verdict, or a module dtype keeps the
    layer in float32) ``port_float64_rel_l2`` records the float64 port difference and the note
    says why. A row whose float32 verdict float64 confirms is left as it is."""
    by_key = {}
    for r in wide.rows:
        by_key.setdefault((r.name, r.kind), r)
    out = []
    for r in rows32:
        r64 = by_key.get((r.name, r.kind))
        base = r.name.split("#")[0]
        out.append(r if r64 is None else _judged(r, r64, trun32, wide.run, base in narrow, tol))
    return out


def _noise(name: str, kind: str, trun32: TorchRun, run64: TorchRun) -> float:
    """torch float32 vs torch float64 on the row's tensor: float32's own error there."""
    key = (name.split("#")[0], int(name.split("#")[1]) if "#" in name else 0)
    field = "inputs" if kind == "input" else "outputs"
    a, b = getattr(trun32, field).get(key), getattr(run64, field).get(key)
    return rel_l2(a, b) if a is not None and b is not None and np.shape(a) == np.shape(b) else 0.0


def _judged(r: LayerDiff, r64: LayerDiff, trun32: TorchRun, run64: TorchRun, narrow: bool, tol: float):
    port = r64.rel_l2
    if narrow and r.kind in ("output", "input"):
        # the port computes in float32 here even when asked for float64: float32's scale applies
        bound = max(tol, REF_FACTOR * _noise(r.name, r.kind, trun32, run64))
        ok = r.passed or port <= bound
        note = (
            "the port computes in float32 here even in the float64 pass (a module dtype): "
            f"judged on the float32 scale, port vs torch float64 {port:.1e} {'<=' if ok else '>'} {bound:.1e}"
        )
        judged = (
            r.rel_l2 if r.passed and r.rel_l2 <= tol else (port * tol / bound if ok else max(r.rel_l2, port))
        )
        return dataclasses.replace(
            r, passed=ok, port_float64_rel_l2=port, judged=judged, note=_join(r.note, note)
        )
    if narrow:
        return dataclasses.replace(r, port_float64_rel_l2=port)
    ok = port <= FLOAT64_REL_TOL
    noise = _noise(r.name, r.kind, trun32, run64)
    if not ok and r.passed and port <= noise:
        # no wider than float32's own error on this tensor: a port whose layer keeps part of its
        # arithmetic in float32 inside (a float32 constant, an internal cast) looks the same as a
        # configuration difference this small, and neither shows in float32; float32 decides
        note = f"float64 port rel_l2 {port:.1e} is within float32's own error here ({noise:.1e}): float32 decides"
        return dataclasses.replace(r, port_float64_rel_l2=port, note=_join(r.note, note))
    if ok == r.passed:
        return r  # float32 shows the verdict: the row stays as float32 alone would give it
    note = ""
    if ok and not r.passed:
        note = f"float32 rounding: float64 port rel_l2 {port:.1e} <= {FLOAT64_REL_TOL:.0e}"
    elif not ok and r.passed:
        note = (
            f"float64 port rel_l2 {port:.1e} > {FLOAT64_REL_TOL:.0e}: a difference below float32's resolution"
        )
    return dataclasses.replace(r, passed=ok, port_float64_rel_l2=port, note=_join(r.note, note))


def _join(a: str, b: str) -> str:
    return "; ".join(t for t in (a, b) if t)


def computes_in_float64(side: FlaxSide, xf: np.ndarray) -> bool:
    """True when every floating input and output of every submodule, and the model's output, is float64
    in an eval pass in float64 (:meth:`FlaxSide.forward` with ``float64=True`` on ``xf``, Flax
    layout); False when a module fixes a narrower dtype (a residual add promotes it back to
    float64 at the output, hence the per-module check), or when the side cannot run in float64."""
    dtypes: set = set()

    def record(name, module, call_next, args, kwargs):
        out = call_next(*args, **kwargs)
        seen = jax.tree.leaves(args) + jax.tree.leaves(out)  # an input the port's code narrowed too
        dtypes.update(a.dtype for a in seen if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating))
        return out

    try:
        out = side.forward(xf, False, hook=record, float64=True)
    except Exception:  # a port that cannot run under x64 does not compute in float64
        return False
    return np.asarray(out).dtype == np.float64 and all(d == jnp.float64 for d in dtypes)


def worst_port(wide: Float64Pass) -> float:
    """The largest float64 port difference over every row of the float64 pass (correct ports:
    ~1e-15)."""
    return max((r.rel_l2 for r in wide.rows), default=0.0)
