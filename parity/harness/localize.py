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
``features.0``: pass ``layer_map={'features.0': 'features_0'}``). Layout: torch activations
with ``ndim >= 3`` are channels-first (NCHW / NCW) and are compared after
:func:`parity.layout.to_channels_last`; the input of the first dense layer after a flatten is
permuted from torch's ``c*H*W + h*W + w`` order to Flax's ``h*W*C + w*C + c`` order
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

import contextlib
import copy
import inspect
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from parity import convert
from parity.harness.compare import rel_l2, unbiased_running_var
from parity.layout import to_channels_last
from parity.table import format_table

Mode = Literal["eval", "train"]
DropoutMasks = Literal["shared", "independent"]
#: ``hook(name, module, call_next, args, kwargs) -> output``: sees one Flax submodule call.
FlaxHook = Callable[[str, Any, Callable, tuple, dict], Any]


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
class Row:
    """One compared tensor: a layer output, a BN running statistic, or a parameter gradient.

    ``name`` is the torch name; ``kind`` is ``output``, ``running_mean``, ``running_var`` or
    ``grad``; values compare Flax (``candidate``) against torch (``reference``), both in
    torch-comparable layout. ``float64_rel_l2`` (optional) is torch float32 vs torch float64 on
    the same computation: the float32 noise floor of that tensor.
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
) -> Row:
    """A :class:`Row` for ``candidate`` (Flax) vs ``reference`` (torch); ``passed`` is
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
        return Row(
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
    return Row(
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
class Report:
    """Rows in forward order (layers) or backward order (gradients), and the first failure."""

    title: str
    rows: list[Row]
    tol: float
    meta: dict = field(default_factory=dict)

    @property
    def first_divergent(self) -> Row | None:
        """The first row whose ``rel_l2`` exceeds the tolerance, or ``None``."""
        return next((r for r in self.rows if not r.passed), None)

    @property
    def passed(self) -> bool:
        """True when every row is within tolerance."""
        return self.first_divergent is None

    def row(self, name: str, kind: str | None = None) -> Row:
        """The row for torch name ``name`` (and ``kind``, default the first one of that name)."""
        for r in self.rows:
            if r.name == name and (kind is None or r.kind == kind):
                return r
        raise KeyError(
            f"{name!r}{'' if kind is None else f' ({kind})'} not in the report; "
            f"rows: {', '.join(sorted({r.name for r in self.rows}))}"
        )

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
        head = ("name", "kind", "flax", "shape", "max_abs", "rel_l2", "cosine", "outside", "f64_ref", "pass")
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


def activation_to_flax(x: np.ndarray, flatten_shape: Sequence[int] | None = None) -> np.ndarray:
    """A torch activation in Flax layout.

    ``ndim >= 3``: channels-first -> channels-last. With ``flatten_shape`` (the channels-first
    ``(C, *spatial)`` that was flattened into a 2-D ``(N, C*prod(spatial))`` input), the
    features are re-ordered from torch's flatten order to Flax's. Otherwise unchanged.
    """
    x = np.asarray(x)
    if flatten_shape:
        n = x.shape[0]
        return to_channels_last(x.reshape(n, *flatten_shape)).reshape(n, -1)
    return to_channels_last(x) if x.ndim >= 3 else x


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


def leaf_modules(model: tnn.Module) -> dict[str, tnn.Module]:
    """``{name: module}`` for every module without children (the root only if it is a leaf)."""
    return {n: m for n, m in model.named_modules() if not any(True for _ in m.children())}


# --------------------------------------------------------------------------- shared dropout


class SharedDropout:
    """Identical dropout masks for torch and Flax, drawn from one numpy seed.

    :meth:`uniform` returns the same ``U[0, 1)`` float32 array, in torch layout, for the same
    ``(step, name, call, shape)``; :func:`mask_scale` turns it into the kept-and-scaled mask.
    Only for parity runs: the models themselves keep their own dropout.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def uniform(self, step: int, name: str, call: int, shape: Sequence[int]) -> np.ndarray:
        """Uniform draws for dropout layer ``name``'s ``call``-th call at ``step`` (torch layout)."""
        rng = np.random.default_rng([self.seed, int(step), zlib.crc32(name.encode()), int(call)])
        return rng.random(tuple(shape), dtype=np.float32)


def mask_scale(u, rate: float, xp=np):
    """``(u >= rate) * float32(1 / (1 - rate))``: the kept-and-scaled mask, computed the same
    way in numpy (torch side) and jax.numpy (Flax side) so both multiply by identical values."""
    if rate >= 1.0:
        return xp.zeros_like(u)
    return (u >= rate).astype(xp.float32) * xp.float32(1.0 / (1.0 - rate))


@contextlib.contextmanager
def torch_shared_dropout(
    model: tnn.Module,
    masks: SharedDropout,
    step: int,
    record: dict[str, list[np.ndarray]] | None = None,
    given: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> Iterator[dict]:
    """Forward hooks that make every ``nn.Dropout`` of ``model`` use the shared masks.

    In train mode each call's output becomes ``input * mask_scale(u, p)``; ``u`` is taken from
    ``given`` (``{name: [u per call]}``, torch layout) when present, else drawn from ``masks``.
    The ``u`` used are appended to the yielded dict (``{name: [u, ...]}``). Hooks are removed on
    exit. ``nn.Dropout1d/2d/3d`` (channel masks) and ``AlphaDropout`` are not supported.
    """
    record = {} if record is None else record
    handles = []

    def hook(name):
        def fn(module, args, output):
            if not module.training or module.p == 0:
                return None
            calls = record.setdefault(name, [])
            k = len(calls)
            x = args[0]
            if given is not None and name in given and k < len(given[name]):
                u = np.asarray(given[name][k], np.float32)
            else:
                u = masks.uniform(step, name, k, tuple(x.shape))
            calls.append(u)
            m = torch.from_numpy(mask_scale(u, float(module.p))).to(device=x.device, dtype=x.dtype)
            return x * m

        return fn

    for name, m in model.named_modules():
        if type(m) is tnn.Dropout:
            handles.append(m.register_forward_hook(hook(name)))
        elif isinstance(m, (tnn.Dropout1d, tnn.Dropout2d, tnn.Dropout3d, tnn.AlphaDropout)):
            for h in handles:
                h.remove()
            raise NotImplementedError(
                f"shared dropout masks support nn.Dropout only; {name!r} is {type(m).__name__}"
            )
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------ Flax side


def _is_linen(model: Any) -> bool:
    import flax.linen as nn

    return isinstance(model, nn.Module)


def _is_nnx(model: Any) -> bool:
    from flax import nnx

    return isinstance(model, nnx.Module)


@contextlib.contextmanager
def nnx_intercept(model: Any, hook: FlaxHook) -> Iterator[None]:
    """Route every submodule ``__call__`` of the NNX ``model`` through ``hook`` inside the block.

    ``hook(name, module, call_next, args, kwargs)`` gets the attribute path joined by ``.``
    (``'conv1'``, ``'blocks.0.fc'``); ``call_next(*args, **kwargs)`` runs the real method. The
    root module is not routed. Works under ``jax.jit`` / ``nnx.jit`` when entered inside the
    traced function (module identities are those of the traced graph). The classes are restored
    on exit, so the models' normal behaviour is untouched outside the block.
    """
    from flax import nnx

    paths = {id(m): ".".join(map(str, p)) for p, m in nnx.iter_modules(model) if p}
    classes = {type(m) for p, m in nnx.iter_modules(model) if p}
    active: set[int] = set()
    saved = {}

    def wrap(inherited):
        def __call__(self, *args, **kwargs):
            name = paths.get(id(self))
            if name is None or id(self) in active:
                return inherited(self, *args, **kwargs)
            active.add(id(self))
            try:
                return hook(name, self, lambda *a, **k: inherited(self, *a, **k), args, kwargs)
            finally:
                active.discard(id(self))

        __call__._parity_wrapped = True
        return __call__

    try:
        for cls in classes:
            saved[cls] = cls.__dict__.get("__call__")
            type.__setattr__(cls, "__call__", wrap(cls.__call__))
        yield
    finally:
        for cls, orig in saved.items():
            if orig is None:
                type.__delattr__(cls, "__call__")
            else:
                type.__setattr__(cls, "__call__", orig)


class FlaxSide:
    """A Linen module + variables, or an NNX module, seen as one pure function.

    ``params`` / ``batch_stats`` / ``rest`` are pytrees (dicts for Linen, ``nnx.State`` for
    NNX; ``rest`` holds NNX's other state, e.g. its dropout rng counters). :meth:`apply` runs
    the model on a channels-last input in train or eval mode with an optional per-submodule
    ``hook`` and returns ``(output, new_batch_stats, new_rest)``; it can be ``jit``-ed. The
    models passed in are never modified.

    The mode reaches the model as NNX ``.train()`` / ``.eval()`` on a private copy, or, for
    Linen, as the ``train=`` keyword (``deterministic=not train`` if ``__call__`` has that
    instead; nothing if it has neither). ``call_kwargs(train) -> dict`` overrides this.
    """

    def __init__(
        self, model: Any, variables: Mapping | None = None, call_kwargs: Callable[[bool], dict] | None = None
    ) -> None:
        self.model = model
        self._call_kwargs = call_kwargs
        if _is_linen(model):
            if variables is None:
                raise ValueError(
                    "a Linen model needs its variables: pass variables={'params': ..., "
                    "'batch_stats': ...} (e.g. from parity.convert.torch_to_linen)"
                )
            self.kind = "linen"
            self.params = jax.tree.map(jnp.asarray, dict(variables["params"]))
            self.batch_stats = jax.tree.map(jnp.asarray, dict(variables.get("batch_stats", {})))
            self.rest = None
        elif _is_nnx(model):
            from flax import nnx

            if variables is not None:
                raise ValueError(
                    "an NNX model holds its own weights; load them with "
                    "parity.convert.load_nnx_variables and pass variables=None"
                )
            self.kind = "nnx"
            self.graphdef, self.params, self.batch_stats, self.rest = nnx.split(
                model, nnx.Param, nnx.BatchStat, ...
            )
        else:
            raise TypeError(f"expected a flax.linen.Module or a flax.nnx.Module, got {type(model).__name__}")

    # -- helpers -------------------------------------------------------------------------
    def mode_kwargs(self, train: bool) -> dict:
        """Keyword arguments that put a Linen model in ``train`` mode (``{}`` for NNX)."""
        if self._call_kwargs is not None:
            return dict(self._call_kwargs(train))
        if self.kind == "nnx":
            return {}
        params = inspect.signature(type(self.model).__call__).parameters
        if "train" in params:
            return {"train": train}
        if "deterministic" in params:
            return {"deterministic": not train}
        return {}

    def pure(self, tree: Any) -> dict:
        """A ``params``- or ``batch_stats``-shaped tree as a nested dict of numpy arrays."""
        if self.kind == "nnx":
            from flax import nnx

            tree = nnx.to_pure_dict(tree)
        return jax.tree.map(np.asarray, dict(tree))

    def variables(self, params: Any = None, batch_stats: Any = None) -> dict:
        """Linen-style ``{'params', 'batch_stats'}`` of numpy arrays."""
        return {
            "params": self.pure(self.params if params is None else params),
            "batch_stats": self.pure(self.batch_stats if batch_stats is None else batch_stats),
        }

    @staticmethod
    def is_dropout(module: Any) -> bool:
        """True for a Linen or NNX ``Dropout`` module."""
        import flax.linen as nn
        from flax import nnx

        return isinstance(module, (nn.Dropout, nnx.Dropout))

    @staticmethod
    def dropout_active(module: Any, kwargs: dict) -> bool:
        """Whether a Flax ``Dropout`` call would drop (not deterministic, rate > 0)."""
        det = kwargs.get("deterministic")
        det = module.deterministic if det is None else det
        return not bool(det) and float(module.rate) > 0.0

    # -- the function --------------------------------------------------------------------
    def apply(
        self,
        params: Any,
        batch_stats: Any,
        rest: Any,
        x: jax.Array,
        *,
        train: bool,
        hook: FlaxHook | None = None,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, Any, Any]:
        """Run on channels-last ``x``; ``(output, new_batch_stats, new_rest)``.

        ``rng`` feeds the ``'dropout'`` stream of a Linen model (NNX models use their own
        ``Rngs``). In eval mode the statistics come back unchanged.
        """
        kwargs = self.mode_kwargs(train)
        if self.kind == "linen":
            import flax.linen as nn

            variables = {"params": params}
            if batch_stats:
                variables["batch_stats"] = batch_stats
            mutable = ["batch_stats"] if (train and batch_stats) else False
            rngs = {"dropout": rng} if rng is not None else None

            def interceptor(next_fun, args, kw, context):
                if hook is None or context.method_name != "__call__" or not context.module.path:
                    return next_fun(*args, **kw)
                name = ".".join(map(str, context.module.path))
                return hook(name, context.module, next_fun, args, kw)

            with nn.intercept_methods(interceptor):
                res = self.model.apply(variables, x, **kwargs, mutable=mutable, rngs=rngs)
            if mutable:
                out, upd = res
                return out, upd["batch_stats"], rest
            return res, batch_stats, rest

        from flax import nnx

        model = nnx.merge(self.graphdef, params, batch_stats, rest, copy=True)
        model.train() if train else model.eval()
        with contextlib.nullcontext() if hook is None else nnx_intercept(model, hook):
            out = model(x, **kwargs)
        _, _, new_bs, new_rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        return out, new_bs, new_rest


def flax_dropout_hook(uniforms: Mapping[str, Sequence[jax.Array]], inner: FlaxHook | None = None) -> FlaxHook:
    """A :data:`FlaxHook` that applies shared masks to Flax ``Dropout`` calls.

    ``uniforms`` is ``{flax name: [u per call]}`` in channels-last layout; other calls go to
    ``inner`` (or straight through). Works at trace time inside ``jit``.
    """
    counters: dict[str, int] = {}

    def hook(name, module, call_next, args, kwargs):
        if FlaxSide.is_dropout(module) and FlaxSide.dropout_active(module, kwargs) and name in uniforms:
            k = counters.get(name, 0)
            counters[name] = k + 1
            if k >= len(uniforms[name]):
                raise ValueError(
                    f"Flax dropout {name!r} was called {k + 1} times but torch drew masks for "
                    f"{len(uniforms[name])} call(s); a hook serves one forward pass"
                )
            m = mask_scale(jnp.asarray(uniforms[name][k]), float(module.rate), jnp)
            masked = lambda x, *a, **kw: x * m.astype(x.dtype)
            return inner(name, module, masked, args, kwargs) if inner else masked(*args, **kwargs)
        return inner(name, module, call_next, args, kwargs) if inner else call_next(*args, **kwargs)

    return hook


# ------------------------------------------------------------------------------- localize


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _torch_device(model: tnn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class _TorchRun:
    order: list[tuple[str, int]]
    inputs: dict[tuple[str, int], np.ndarray]
    outputs: dict[tuple[str, int], np.ndarray]
    bn_counts: dict[str, int]
    uniforms: dict[str, list[np.ndarray]]


def _run_torch(
    model: tnn.Module,
    x: np.ndarray,
    train: bool,
    masks: SharedDropout | None,
    given_uniforms: Mapping | None = None,
    step: int = 0,
) -> _TorchRun:
    """Run ``model`` (modified: stats update in train mode) and record every leaf call."""
    run = _TorchRun([], {}, {}, {}, {})
    counts: dict[str, int] = {}
    leaves = leaf_modules(model)

    def hook(name):
        def fn(module, args, output):
            k = counts.get(name, 0)
            counts[name] = k + 1
            run.order.append((name, k))
            if args and isinstance(args[0], torch.Tensor):
                run.inputs[(name, k)] = _np(args[0])
                if isinstance(module, tnn.modules.batchnorm._BatchNorm):
                    run.bn_counts[name] = args[0].numel() // args[0].shape[1]
            if isinstance(output, torch.Tensor):
                run.outputs[(name, k)] = _np(output)

        return fn

    model.train(train)
    dev = _torch_device(model)
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    with contextlib.ExitStack() as stack:
        if masks is not None:
            run.uniforms = stack.enter_context(torch_shared_dropout(model, masks, step, given=given_uniforms))
        handles = [m.register_forward_hook(hook(n)) for n, m in leaves.items()]
        stack.callback(lambda: [h.remove() for h in handles])
        with torch.no_grad():
            xt = torch.from_numpy(np.asarray(x)).to(dev)
            model(xt.to(dtype) if xt.is_floating_point() else xt)
    return run


def _invert(layer_map: Mapping[str, str] | None) -> Callable[[str], str]:
    layer_map = dict(layer_map or {})
    return lambda torch_name: layer_map.get(torch_name, torch_name)


def _flax_bn_stats(pure_bs: Mapping, flax_name: str) -> dict | None:
    node: Any = pure_bs
    for part in flax_name.split("."):
        if isinstance(node, Mapping) and part not in node and part.isdigit():
            part = int(part)  # NNX list items (nnx.List) are keyed by int in pure dicts
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) and "mean" in node and "var" in node else None


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
) -> Report:
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

    Returns:
        A :class:`Report` with one ``output`` row per torch leaf call in execution order,
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
    trun = _run_torch(tm, x, train, masks, step=step)
    ref = None
    if float64_reference:
        ref = _run_torch(
            copy.deepcopy(torch_model).double(),
            x.astype(np.float64) if x.dtype.kind == "f" else x,
            train,
            masks,
            given_uniforms=trun.uniforms,
        )

    side = FlaxSide(flax_model, variables, call_kwargs)
    to_flax = _invert(layer_map)
    from_flax = {to_flax(n): n for n, _ in trun.order}
    fshapes = dict(flatten_shapes) if flatten_shapes is not None else flatten_shapes_of(torch_model)
    fouts: dict[tuple[str, int], np.ndarray] = {}
    fcounts: dict[str, int] = {}

    def capture(name, module, call_next, args, kwargs):
        tname = from_flax.get(name)
        k = fcounts.get(name, 0)
        fcounts[name] = k + 1
        if reinject and tname is not None and (tname, k) in trun.inputs and args:
            xin = activation_to_flax(trun.inputs[(tname, k)], fshapes.get(tname))
            args = (jnp.asarray(xin, dtype=args[0].dtype), *args[1:])
        out = call_next(*args, **kwargs)
        if tname is not None:
            fouts[(tname, k)] = np.asarray(out)
        return out

    uniforms = {to_flax(n): [activation_to_flax(u) for u in us] for n, us in trun.uniforms.items()}
    hook = flax_dropout_hook(uniforms, capture) if masks is not None else capture
    rng = (
        jax.random.fold_in(jax.random.key(seed), step) if (train and dropout_masks == "independent") else None
    )
    xf = jnp.asarray(activation_to_flax(x))
    _, new_bs, _ = side.apply(side.params, side.batch_stats, side.rest, xf, train=train, hook=hook, rng=rng)

    bs_before, bs_after = side.pure(side.batch_stats), side.pure(new_bs)
    tbn = {n: m for n, m in tm.named_modules() if isinstance(m, tnn.modules.batchnorm._BatchNorm)}
    rows: list[Row] = []
    leaves = leaf_modules(tm)
    skipped: list[str] = []
    for name, k in trun.order:
        label = name if k == 0 else f"{name}#{k}"
        t_out = trun.outputs.get((name, k))
        if t_out is None:
            continue
        f_out = fouts.get((name, k))
        stateless = not any(True for _ in leaves[name].parameters(recurse=False)) and not any(
            True for _ in leaves[name].buffers(recurse=False)
        )
        if f_out is None and stateless:
            # e.g. nn.ReLU / nn.Flatten modules, plain functions in Flax: nothing to compare
            skipped.append(label)
            continue
        row = compare_tensor(label, "output", to_flax(name), f_out, activation_to_flax(t_out), tol)
        if ref is not None and (name, k) in ref.outputs:
            row = _with_ref(row, t_out, ref.outputs[(name, k)])
        rows.append(row)
        if train and name in tbn and k == 0:
            rows.extend(
                _bn_rows(name, to_flax(name), tbn[name], bs_before, bs_after, trun.bn_counts.get(name), tol)
            )
    meta = {
        "mode": mode,
        "reinject": reinject,
        "dropout_masks": dropout_masks if train else "n/a",
        "flax": side.kind,
    }
    if skipped:
        meta["unmatched_stateless_torch_layers"] = skipped
    title = f"localize (mode={mode}, reinject={'on' if reinject else 'off'}, {side.kind})"
    return Report(title, rows, tol, meta)


def _with_ref(row: Row, t32: np.ndarray, t64: np.ndarray) -> Row:
    from dataclasses import replace

    return replace(row, float64_rel_l2=rel_l2(t32, t64))


def _bn_rows(
    tname: str, fname: str, module: tnn.Module, before: Mapping, after: Mapping, n: int | None, tol: float
) -> list[Row]:
    """running_mean / running_var rows of one BatchNorm after a single train-mode pass."""
    if not module.track_running_stats or module.running_mean is None:
        return []
    fb, fa = _flax_bn_stats(before, fname), _flax_bn_stats(after, fname)
    t_mean, t_var = _np(module.running_mean), _np(module.running_var)
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


def torch_loss(name: str) -> Callable:
    """``'cross_entropy'`` (integer labels) or ``'mse'`` as a torch loss ``(out, y) -> scalar``."""
    import torch.nn.functional as F

    if name == "cross_entropy":
        return lambda out, y: F.cross_entropy(out, y.long())
    if name == "mse":
        return lambda out, y: F.mse_loss(out, y.to(out.dtype))
    raise ValueError(f"unknown loss {name!r}; choose 'cross_entropy' or 'mse'")


def flax_loss(name: str) -> Callable:
    """The same loss in jax: mean softmax cross-entropy, or mean squared error."""
    import optax

    if name == "cross_entropy":
        return lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y.astype(jnp.int32)).mean()
    if name == "mse":
        return lambda out, y: jnp.mean((out - y.astype(out.dtype)) ** 2)
    raise ValueError(f"unknown loss {name!r}; choose 'cross_entropy' or 'mse'")


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
) -> Report:
    """Per-parameter gradient differences of the mean loss, first divergent in backward order.

    Both sides differentiate ``loss(model(x), y)`` with respect to their parameters in ``mode``
    (train: batch statistics, shared dropout masks). Flax gradients are mapped to torch names
    and layout with :func:`parity.convert.params_to_torch` (or ``param_map(flax_grads) ->
    {torch name: array}``). A torch parameter without a gradient (``requires_grad=False``,
    unused) counts as a zero gradient. Rows come in backward order (:func:`backward_order`),
    so ``first_divergent`` is the first parameter whose gradient diverges as backprop runs.
    """
    train = mode == "train"
    x, y = np.asarray(x), np.asarray(y)
    tm = copy.deepcopy(torch_model)
    tm.train(train)
    masks = SharedDropout(seed) if (train and dropout_masks == "shared") else None
    dev = _torch_device(tm)
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, a, o, n=n: order.append(n)) for n, m in leaf_modules(tm).items()
    ]
    with contextlib.ExitStack() as stack:
        record = stack.enter_context(torch_shared_dropout(tm, masks, step)) if masks else {}
        tm.zero_grad(set_to_none=True)
        out = tm(torch.from_numpy(x).to(dev))
        torch_loss(loss)(out, torch.from_numpy(y).to(dev)).backward()
    for h in handles:
        h.remove()
    tgrads = {
        n: (_np(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), np.float32))
        for n, p in tm.named_parameters()
    }
    no_grad = {n for n, p in tm.named_parameters() if p.grad is None}

    side = FlaxSide(flax_model, variables, call_kwargs)
    to_flax = _invert(layer_map)
    uniforms = {to_flax(n): [activation_to_flax(u) for u in us] for n, us in record.items()}
    hook = flax_dropout_hook(uniforms) if masks is not None else None
    rng = (
        jax.random.fold_in(jax.random.key(seed), step) if (train and dropout_masks == "independent") else None
    )
    xf, yj = jnp.asarray(activation_to_flax(x)), jnp.asarray(y)
    lf = flax_loss(loss)

    def f(params):
        out, _, _ = side.apply(params, side.batch_stats, side.rest, xf, train=train, hook=hook, rng=rng)
        return lf(out, yj)

    fgrads_tree = side.pure(jax.jit(jax.grad(f))(side.params))
    fgrads = param_map(fgrads_tree) if param_map else convert.params_to_torch(fgrads_tree, torch_model)
    rows = [
        compare_tensor(
            n, "grad", n, fgrads.get(n), tgrads[n], tol, note="no torch grad" if n in no_grad else ""
        )
        for n in backward_order(tm, order)
    ]
    return Report(
        f"gradients (mode={mode}, loss={loss}, {side.kind}, backward order)",
        rows,
        tol,
        {"mode": mode, "loss": loss, "flax": side.kind},
    )
