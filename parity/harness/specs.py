"""The harness on user models: ``parity check --torch SPEC --flax SPEC --input-shape ...``.

:class:`SpecModels` builds one :class:`~parity.harness.pair.ModelPair` from two SPECs
(:mod:`parity.spec`), the torch weights converted into the Flax model, the parameter and layer
maps derived from the pairing; :meth:`SpecModels.foundation` computes the basic rows (eval and
train forward with shared dropout masks, BN statistics after one train pass, worst judged
gradient, round trip) for :func:`parity.harness.suite.run_policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from parity import convert
from parity.harness.dropout import SharedDropout, flax_dropout_hook
from parity.harness.input_checks import check_input_rank, check_memory, small_run
from parity.harness.lazy_init import build_flax, linen_converted, nnx_converted
from parity.harness.localize import GradientOptions, LocalizeOptions, localize, localize_gradients
from parity.harness.metrics import judged_forward
from parity.harness.pair import ModelPair
from parity.harness.results import Case, CaseInput, Check, CheckError, ModelsError
from parity.harness.sides import leaf_modules
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
            raise CheckError(f"--input-dtype {self.dtype!r} is not a numpy dtype") from None
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


def _layer_map(pair: ModelPair, inp: SpecInput, user_map: Any) -> dict[str, str]:
    """``{torch leaf: flax name}``: the Flax submodule called with one of the torch name's
    spellings (:func:`parity.convert.naming.flax_spellings`), or the user map's path."""
    called: set[str] = set()

    def record(name, module, call_next, args, kwargs):
        called.add(name)
        return call_next(*args, **kwargs)

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
    from parity.convert.naming import flax_spellings, load_user_map

    mapped = load_user_map(user_map)
    out = {}
    for name in leaf_modules(pair.torch):
        given = mapped(name) if mapped is not None else None
        found = [given.strip("/").replace("/", ".")] if given else []
        found = found or [s.replace("/", ".") for s in dict.fromkeys(flax_spellings(name))]
        found = [f for f in found if f in called]
        if len(found) == 1 and found[0] != name:
            out[name] = found[0]
    return out


def build_pair(spec: SpecModels, device: str) -> ModelPair:
    """Build both models, convert the torch weights into the Flax one, derive the maps.
    Raises :class:`parity.spec.SpecError` or :class:`parity.convert.ConversionError` (one line,
    module and key named) when the SPECs do not give a convertible pair."""
    from parity.spec import build, linen_variables

    inp = spec.input
    torch_model, _ = build(spec.torch, ("torch",))
    flax_model, kind, abstract = build_flax(spec.flax)  # NNX from shapes (lazy_init)
    # before any full-size tensor: the rank the first layer takes, the memory the batch needs
    run = small_run(torch_model, lambda n: inp.sample(np.random.default_rng(0), n), inp.shape[0])
    check_input_rank(inp.shape, run)
    check_memory(inp.shape, np.dtype(inp.dtype).itemsize, run)
    options = {
        "user_map": spec.user_map,
        "flatten_shapes": dict(spec.flatten_shapes) if spec.flatten_shapes else None,
        "input_shape": inp.shape if inp.is_float else None,
    }
    state = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    if kind == "linen":  # from shapes when torch fills every leaf (parity.harness.lazy_init)
        converted = linen_converted(
            lambda target: convert.torch_to_flax(state, torch_model, target, **options),
            lambda shapes_only: linen_variables(
                flax_model, inp.shape, inp.channels_last, inp.dtype, shapes_only=shapes_only
            ),
        )
    else:
        flax_model = converted = nnx_converted(
            flax_model,
            abstract,
            lambda: build(spec.flax, ("nnx",))[0],
            lambda target: convert.torch_to_flax(state, torch_model, target, **options),
        )
    variables = converted if kind == "linen" else None
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
    )
    pair.layer_map = _layer_map(pair, inp, spec.user_map)
    return pair


def outputs(pair: ModelPair, x: np.ndarray, train: bool, seed: int, float64: bool = False, given=None):
    """``(torch output, flax output, dropout uniforms)`` of one forward pass in ``train`` or
    eval mode, dropout with shared masks (``given`` replays earlier ones); copies only, nothing
    changes. ``float64``: both sides in double precision."""
    masks = SharedDropout(seed) if train else None
    out_t, record = pair.torch_side().forward(x, train, masks, given=given, float64=float64)
    to_flax = pair.to_flax()
    uniforms = {to_flax(n): [jnp.asarray(u) for u in us] for n, us in record.items()}
    hook = flax_dropout_hook(uniforms, torch_layout=True) if uniforms else None
    out_f = pair.flax_side().forward(pair.flax_input(x), train, hook=hook, float64=float64)
    return out_t, out_f, record


def output_shape(pair: ModelPair, x: np.ndarray, seed: int) -> tuple[int, ...]:
    """The eval output's shape; a model that fails on ``x`` raises :class:`parity.spec.SpecError`."""
    try:
        out_t, out_f, _ = outputs(pair, x, False, seed)
    except Exception as e:  # user code
        raise SpecError(f"{pair.name} on input {x.shape} ({x.dtype}) failed: {_one_line(e)}") from None
    if out_t.shape != out_f.shape:
        raise SpecError(
            f"{pair.name}: torch output {out_t.shape}, Flax output {out_f.shape}: the port differs"
        )
    if out_t.ndim < 2:
        raise SpecError(f"{pair.name} returned shape {out_t.shape}: labels need logits (N, ..., C)")
    return out_t.shape


def forward_difference(pair: ModelPair, x: np.ndarray, train: bool, tol: float, seed: int) -> float:
    """The judged relative L2 difference of the outputs (:func:`parity.harness.metrics.judged_forward`)."""
    t32, f32, record = outputs(pair, x, train, seed)
    return judged_forward(
        t32, f32, tol, lambda: outputs(pair, x, train, seed, float64=True, given=record)[:2]
    )


def roundtrip_max_abs(pair: ModelPair) -> float:
    """Max absolute difference of the state dict after torch -> Flax -> torch (bit-exact: 0)."""
    source = pair.variables if pair.kind == "linen" else pair.flax
    back = convert.flax_to_torch(source, pair.torch, **pair.convert_options)
    worst = 0.0
    for k, v in pair.torch.state_dict().items():
        v, b = v.detach().cpu(), back[k]
        if b.dtype != v.dtype or b.shape != v.shape:
            return float("inf")
        if v.numel():
            worst = max(worst, float((b.double() - v.double()).abs().max()))
    return worst


def active_dropout(model: tnn.Module) -> list[str]:
    """Names of the dropout layers of ``model`` with ``p > 0``."""
    return [n for n, m in model.named_modules() if isinstance(m, tnn.modules.dropout._DropoutNd) and m.p > 0]


def batches(pair: ModelPair, inp: SpecInput, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``(x, y, training batches)``: the checked batch (torch layout), integer labels over the
    output's last dimension (shape ``out.shape[:-1]``), and ``steps`` more ``(x, y)`` batches
    for the trajectory, all drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    x = inp.sample(rng)
    shape = output_shape(pair, x, seed)

    def labels() -> np.ndarray:
        return rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int64)

    y = labels()
    return x, y, [(inp.sample(rng), labels()) for _ in range(steps)]


def foundation_rows(pair: ModelPair, x, y, tols: dict, seed: int) -> tuple[list[Check], dict]:
    """Eval and train forward, BN running statistics after one train pass (when the model has
    BatchNorm), worst judged gradient, round trip; and the train-mode layer and gradient reports
    they came from (for ``--localize``)."""

    def row(name: str, value: float, tol: float) -> Check:
        return Check.judged(pair.name, pair.kind, name, value, tol)

    rows = [
        row(
            f"forward_{m}_rel_l2",
            forward_difference(pair, x, m == "train", tols["forward"], seed),
            tols["forward"],
        )
        for m in ("eval", "train")
    ]
    reports = {
        "layers_train": localize(pair, x, LocalizeOptions(mode="train", tol=tols["layers"], seed=seed)),
        "gradients_train": localize_gradients(pair, x, y, GradientOptions(tol=tols["gradient"], seed=seed)),
    }
    for kind, name in (
        ("running_mean", "bn_running_mean_rel_l2"),
        ("running_var", "bn_running_var_corrected_rel_l2"),
    ):
        values = [r.rel_l2 for r in reports["layers_train"].rows if r.kind == kind]
        if values:
            rows.append(row(name, max(values), tols["bn_state"]))
    rows.append(row("gradient_max_rel_l2", reports["gradients_train"].worst_judged(), tols["gradient"]))
    rows.append(row("roundtrip_max_abs", roundtrip_max_abs(pair), 0.0))
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
    _built: dict = field(default_factory=dict, compare=False, repr=False)

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
        rows, reports = foundation_rows(pair, x, y, tols, config.seed)
        case = Case(pair.name, pair.kind, precision, device, tols)
        return rows, [CaseInput(case, lambda: pair, x, y, train, reports)]
