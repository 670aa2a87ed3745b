"""The harness on user models: ``parity check --torch SPEC --flax SPEC --input-shape ...``.

:class:`UserPair` builds a torch model and a Flax model (Linen or NNX) from two SPECs
(:mod:`parity.spec`), converts the torch weights into the Flax model with the general
converter (:func:`parity.convert.torch_to_flax`), and derives what the harness needs from the
pairing: the per-parameter map back to torch names (:func:`parity.convert.params_to_torch_fn`)
and the layer map (torch leaf module -> the Flax submodule the naming conventions pair it with).

Inputs are generated in torch layout from :class:`SpecInput` (normal floats, or integers in
``[0, high)`` for token ids) and given to Flax channels-last where the rank says so (rank >= 3),
or as they are (``channels_last=False``: tokens). Labels for the gradient and trajectory checks
are integers over the output's last dimension (``(N, C)`` logits, or ``(N, L, V)`` per token).

:func:`spec_policy` runs one precision policy: the foundation rows (eval and train forward,
BN running statistics after one train pass, worst judged gradient, round trip), and the
``localize`` and ``trajectory`` sections when the config asks for them. Dropout is on in train
mode with shared masks; ``dropout_masks='off'`` refuses a model with active dropout.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from parity import convert
from parity.harness.compare import GRADIENT_TOL_FLOAT64, REF_FACTOR, Check, rel_l2
from parity.harness.sides import (
    FlaxSide,
    SharedDropout,
    activation_to_flax,
    flax_dropout_hook,
    float_cast,
    leaf_modules,
    to_numpy,
    torch_device,
    torch_shared_dropout,
)


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
            raise ValueError(f"--input-dtype {self.dtype!r} is not a numpy dtype") from None
        if kind not in "fiu":
            raise ValueError(f"--input-dtype {self.dtype!r}: use a float or an integer dtype")
        if kind in "iu" and (self.high is None or self.high < 1):
            raise ValueError(f"--input-dtype {self.dtype} needs --input-high N (ids in [0, N), N >= 1)")
        if kind == "f" and self.high is not None:
            raise ValueError("--input-high applies to integer inputs; give --input-dtype int64 with it")

    @property
    def layout(self) -> str:
        """``'channels_first'`` or ``'same'`` (:data:`parity.harness.sides.Layout`)."""
        return "channels_first" if self.channels_last else "same"

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One batch in torch layout."""
        if self.is_float:
            return rng.standard_normal(self.shape).astype(self.dtype)
        return rng.integers(0, self.high, size=self.shape).astype(self.dtype)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


class UserPair:
    """A torch model and its Flax port from two SPECs, with the torch weights converted in.

    ``torch`` (on ``device``), ``flax`` (a Linen module with ``variables``, or an NNX module
    holding the converted weights), ``kind`` (``'linen'`` / ``'nnx'``), ``param_map`` (Flax
    params-shaped tree -> ``{torch name: array}``), ``layer_map`` (``{torch leaf: flax name}``).
    Raises :class:`parity.spec.SpecError` or :class:`parity.convert.ConversionError` (one line,
    module and key named) when the SPECs do not give a convertible pair.
    """

    def __init__(
        self,
        torch_spec: str,
        flax_spec: str,
        inp: SpecInput,
        user_map: Any = None,
        flatten_shapes: Mapping[str, tuple[int, ...]] | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        from parity.spec import build, linen_variables

        self.inp, self.seed = inp, seed
        self.torch, _ = build(torch_spec, ("torch",))
        self.flax, self.kind = build(flax_spec, ("linen", "nnx"))
        self.name = type(self.torch).__name__
        self.options = {
            "user_map": user_map,
            "flatten_shapes": dict(flatten_shapes) if flatten_shapes else None,
            "input_shape": inp.shape if inp.is_float else None,
        }
        self.original = {k: v.detach().clone() for k, v in self.torch.state_dict().items()}
        target = self.flax
        if self.kind == "linen":
            target = linen_variables(self.flax, inp.shape, inp.channels_last, inp.dtype)
        converted = convert.torch_to_flax(self.original, self.torch, target, **self.options)
        self.variables = converted if self.kind == "linen" else None
        self.param_map = convert.params_to_torch_fn(self.torch, self.flax_source, **self.options)
        self.torch.to(torch.device(device))
        self.layer_map = self._layer_map(user_map)

    @property
    def flax_source(self) -> Any:
        """What the converter reads: Linen variables or the NNX module."""
        return self.variables if self.kind == "linen" else self.flax

    def side(self) -> FlaxSide:
        """A fresh :class:`FlaxSide` of the Flax model."""
        return FlaxSide(self.flax, self.variables)

    def flax_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` (torch layout) as Flax takes it."""
        return activation_to_flax(x, layout=self.inp.layout)

    def _layer_map(self, user_map: Any) -> dict[str, str]:
        """``{torch leaf: flax name}``: the Flax submodule called with one of the torch name's
        spellings (:func:`parity.convert.naming.flax_spellings`), or the user map's path."""
        from parity.convert.naming import flax_spellings, load_user_map

        called: set[str] = set()

        def record(name, module, call_next, args, kwargs):
            called.add(name)
            return call_next(*args, **kwargs)

        from parity.spec import SpecError

        side = self.side()
        shape = self.flax_input(np.zeros(self.inp.shape, self.inp.dtype)).shape
        x = jax.ShapeDtypeStruct(shape, np.dtype(self.inp.dtype))
        try:
            jax.eval_shape(
                lambda p, b, r, x: side.apply(p, b, r, x, train=False, hook=record)[0],
                side.params,
                side.batch_stats,
                side.rest,
                x,
            )
        except Exception as e:  # user code
            raise SpecError(f"{type(self.flax).__name__} on input {shape} failed: {_one_line(e)}") from None
        mapped = load_user_map(user_map)
        out = {}
        for name in leaf_modules(self.torch):
            given = mapped(name) if mapped is not None else None
            found = [given.strip("/").replace("/", ".")] if given else []
            found = found or [s.replace("/", ".") for s in dict.fromkeys(flax_spellings(name))]
            found = [f for f in found if f in called]
            if len(found) == 1 and found[0] != name:
                out[name] = found[0]
        return out

    # -- forward ------------------------------------------------------------------------
    def outputs(self, x: np.ndarray, train: bool, float64: bool = False, given: Mapping | None = None):
        """``(torch output, flax output, dropout uniforms)`` of one forward pass in ``train``
        or eval mode, dropout with shared masks (``given`` replays earlier ones); copies only,
        nothing changes. ``float64``: both sides in double precision."""
        tm = copy.deepcopy(self.torch).train(train)
        tm = tm.double() if float64 else tm
        masks = SharedDropout(self.seed) if train else None
        with contextlib.ExitStack() as stack:
            record = stack.enter_context(torch_shared_dropout(tm, masks, 0, given=given)) if masks else {}
            stack.enter_context(torch.no_grad())
            xt = torch.from_numpy(x).to(torch_device(tm))
            out_t = tm(xt.to(next(tm.parameters()).dtype) if xt.is_floating_point() else xt)
        if not isinstance(out_t, torch.Tensor):
            raise TypeError(f"the torch model returned {type(out_t).__name__}, not a tensor")
        side = self.side()
        uniforms = {self.layer_map.get(n, n): [jnp.asarray(u) for u in us] for n, us in record.items()}
        hook = flax_dropout_hook(uniforms, torch_layout=True) if uniforms else None
        with jax.enable_x64(True) if float64 else contextlib.nullcontext():
            cast = float_cast(jnp.float64 if float64 else None)
            p, b, r = (jax.tree.map(cast, t) for t in (side.params, side.batch_stats, side.rest))
            xf = cast(jnp.asarray(self.flax_input(x)))
            out_f, _, _ = side.apply(p, b, r, xf, train=train, hook=hook)
            return to_numpy(out_t), np.asarray(out_f), record

    def output_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """The eval output's shape; a model that fails on ``x`` raises :class:`parity.spec.SpecError`."""
        from parity.spec import SpecError

        try:
            out_t, out_f, _ = self.outputs(x, train=False)
        except Exception as e:  # user code
            raise SpecError(f"{self.name} on input {x.shape} ({x.dtype}) failed: {_one_line(e)}") from None
        if out_t.shape != out_f.shape:
            raise SpecError(
                f"{self.name}: torch output {out_t.shape}, Flax output {out_f.shape}: the port differs"
            )
        if out_t.ndim < 2:
            raise SpecError(f"{self.name} returned shape {out_t.shape}: labels need logits (N, ..., C)")
        return out_t.shape

    def forward_difference(self, x: np.ndarray, train: bool, tol: float) -> float:
        """The judged relative L2 difference of the outputs (as
        :func:`parity.harness.compare.forward_difference`: above ``tol`` in float32, the float64
        difference on the float32 scale when the float64 outputs agree within
        ``GRADIENT_TOL_FLOAT64`` and Flax float32 is as accurate as torch float32)."""
        t32, f32, record = self.outputs(x, train)
        rel = rel_l2(f32, t32)
        if rel <= tol:
            return rel
        t64, f64, _ = self.outputs(x, train, float64=True, given=record)
        port = rel_l2(f64, t64)
        as_accurate = rel_l2(f32, t64) <= max(tol, REF_FACTOR * rel_l2(t32, t64))
        return port * tol / GRADIENT_TOL_FLOAT64 if (port <= GRADIENT_TOL_FLOAT64 and as_accurate) else rel

    def roundtrip_max_abs(self) -> float:
        """Max absolute difference of the state dict after torch -> Flax -> torch (bit-exact: 0)."""
        back = convert.flax_to_torch(self.flax_source, self.torch, **self.options)
        worst = 0.0
        for k, v in self.original.items():
            b = back[k]
            if b.dtype != v.dtype or b.shape != v.shape:
                return float("inf")
            if v.numel():
                worst = max(worst, float((b.double() - v.double()).abs().max()))
        return worst

    def harness_kwargs(self) -> dict:
        """Keyword arguments of ``localize`` / ``localize_gradients`` / ``trajectory``."""
        return {
            "variables": self.variables,
            "layer_map": self.layer_map,
            "input_layout": self.inp.layout,
        }


def active_dropout(model: tnn.Module) -> list[str]:
    """Names of the dropout layers of ``model`` with ``p > 0``."""
    return [n for n, m in model.named_modules() if isinstance(m, tnn.modules.dropout._DropoutNd) and m.p > 0]


def check_row(pair: UserPair, name: str, value: float, tol: float) -> Check:
    """One row of the table, ``passed`` when ``value <= tol``."""
    return Check(pair.name, pair.kind, name, float(value), float(tol), bool(value <= tol))


def batches(pair: UserPair, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``(x, y, training batches)``: the checked batch (torch layout), integer labels over the
    output's last dimension (shape ``out.shape[:-1]``), and ``steps`` more ``(x, y)`` batches
    for the trajectory, all drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    x = pair.inp.sample(rng)
    shape = pair.output_shape(x)

    def labels() -> np.ndarray:
        return rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int64)

    y = labels()
    return x, y, [(pair.inp.sample(rng), labels()) for _ in range(steps)]


@dataclass(frozen=True)
class SpecModels:
    """What ``parity check --torch SPEC --flax SPEC`` checks: the two SPECs, the input, and the
    converter's options (``user_map``: a ``--map`` file or callable; ``flatten_shapes``)."""

    torch: str
    flax: str
    input: SpecInput
    user_map: Any = None
    flatten_shapes: Mapping[str, tuple[int, ...]] | None = None

    def pair(self, device: str, seed: int) -> UserPair:
        """A fresh :class:`UserPair`."""
        return UserPair(self.torch, self.flax, self.input, self.user_map, self.flatten_shapes, device, seed)


def foundation_rows(pair: UserPair, x, y, tols: dict, seed: int) -> tuple[list[Check], dict]:
    """Eval and train forward, BN running statistics after one train pass (when the model has
    BatchNorm), worst judged gradient, round trip; and the train-mode layer and gradient reports
    they came from (for ``--localize``)."""
    from parity.harness.localize import localize, localize_gradients

    kw = pair.harness_kwargs()
    rows = [
        check_row(
            pair,
            f"forward_{m}_rel_l2",
            pair.forward_difference(x, m == "train", tols["forward"]),
            tols["forward"],
        )
        for m in ("eval", "train")
    ]
    reports = {
        "layers_train": localize(pair.torch, pair.flax, x, mode="train", tol=tols["layers"], seed=seed, **kw),
        "gradients_train": localize_gradients(
            pair.torch, pair.flax, x, y, tol=tols["gradient"], seed=seed, param_map=pair.param_map, **kw
        ),
    }
    for kind, name in (
        ("running_mean", "bn_running_mean_rel_l2"),
        ("running_var", "bn_running_var_corrected_rel_l2"),
    ):
        values = [r.rel_l2 for r in reports["layers_train"].rows if r.kind == kind]
        if values:
            rows.append(check_row(pair, name, max(values), tols["bn_state"]))
    rows.append(
        check_row(pair, "gradient_max_rel_l2", reports["gradients_train"].worst_judged(), tols["gradient"])
    )
    rows.append(check_row(pair, "roundtrip_max_abs", pair.roundtrip_max_abs(), 0.0))
    return rows, reports


def validate_spec(spec: SpecModels, config: Any) -> None:
    """Build and convert the pair, run it once in eval mode, and refuse ``dropout_masks='off'``
    on a model with dropout; raises :class:`parity.spec.SpecError` or
    :class:`parity.convert.ConversionError` (one line)."""
    from parity.spec import SpecError

    pair = spec.pair("cpu", config.seed)
    if config.dropout_masks == "off" and active_dropout(pair.torch):
        raise SpecError(
            f"--dropout-masks off: {pair.name} has dropout ({', '.join(active_dropout(pair.torch))}); "
            "build it with p=0 or use --dropout-masks shared"
        )
    batches(pair, config.seed, 0)


def spec_policy(config: Any, spec: SpecModels, device: str, precision: str, log: Callable[[str], None]):
    """Everything for one precision policy on the user models: a
    :class:`parity.harness.suite.PolicyResult`. ``config`` is the
    :class:`parity.harness.suite.CheckConfig` (``localize``, ``trajectory``, ``optimizer``,
    ``dropout_masks``, ``seed``)."""
    from parity.harness.localize import localize
    from parity.harness.suite import (
        Case,
        PolicyResult,
        layer_reports_section,
        policy_tolerances,
        trajectory_rows,
    )

    tols = policy_tolerances(device, precision)
    pair = spec.pair(device, config.seed)
    x, y, train = batches(pair, config.seed, config.trajectory)
    rows, reports = foundation_rows(pair, x, y, tols, config.seed)
    out = PolicyResult(checks=rows)
    case = Case(pair.name, pair.kind, precision, device, tols)
    if config.localize:
        kw = pair.harness_kwargs()
        ev = localize(pair.torch, pair.flax, x, mode="eval", tol=tols["layers"], seed=config.seed, **kw)
        out.extend(layer_reports_section(case, {"layers_eval": ev, **reports}, log))
    if config.trajectory:

        def sides():
            fresh = spec.pair(device, config.seed)
            return fresh.torch, fresh.flax, {**fresh.harness_kwargs(), "param_map": fresh.param_map}

        out.extend(trajectory_rows(config, case, sides, train, log))
    return out
