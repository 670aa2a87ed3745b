"""The two sides of every comparison: a torch model and a Flax model, each seen one way.

Torch side: :func:`run_torch` records every leaf-module call of one forward pass
(:class:`TorchRun`); :func:`torch_gradients` differentiates a loss; :func:`torch_shared_dropout`
makes ``nn.Dropout`` use masks drawn by :class:`SharedDropout`. Torch tensors are channels-first
(NCHW / NCW).

Flax side: :class:`FlaxSide` turns a Linen module + variables, or an NNX module, into one pure
function ``apply(params, batch_stats, rest, x)``; :func:`nnx_intercept` and
:func:`flax_dropout_hook` route submodule calls through a hook; :func:`flax_gradients`
differentiates a loss, in float32 or float64. Flax arrays are channels-last (NHWC / NWC);
:func:`activation_to_flax` converts torch activations.

Used by :mod:`parity.harness.localize` (per layer) and :mod:`parity.harness.trajectory` (per
step); nothing here compares anything.
"""

from __future__ import annotations

import contextlib
import inspect
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from parity.layout import to_channels_last

#: ``hook(name, module, call_next, args, kwargs) -> output``: sees one Flax submodule call.
FlaxHook = Callable[[str, Any, Callable, tuple, dict], Any]


#: How a torch activation is laid out: ``channels_first`` (torch ``(N, C, *spatial)``, Flax
#: ``(N, *spatial, C)``) or ``same`` (one layout in both frameworks: tokens ``(N, L, D)``,
#: features ``(N, F)``, token ids).
Layout = Literal["channels_first", "same"]
LAYOUTS = ("channels_first", "same")

#: Leaf modules whose output is channels-first in torch (when it has ``ndim >= 3``).
_CHANNELS_FIRST_MODULES = (
    tnn.modules.conv._ConvNd,
    tnn.modules.batchnorm._BatchNorm,
    tnn.modules.instancenorm._InstanceNorm,
    tnn.GroupNorm,
    tnn.MaxPool1d,
    tnn.MaxPool2d,
    tnn.MaxPool3d,
    tnn.AvgPool1d,
    tnn.AvgPool2d,
    tnn.AvgPool3d,
    tnn.AdaptiveAvgPool1d,
    tnn.AdaptiveAvgPool2d,
    tnn.AdaptiveAvgPool3d,
    tnn.AdaptiveMaxPool1d,
    tnn.AdaptiveMaxPool2d,
    tnn.AdaptiveMaxPool3d,
    tnn.Upsample,
)
#: Leaf modules that act on the last dimension: their output is laid out alike in both frameworks.
_SAME_MODULES = (tnn.Linear, tnn.Bilinear, tnn.LayerNorm, tnn.RMSNorm, tnn.Embedding, tnn.MultiheadAttention)


def layout_hint(module: tnn.Module) -> Layout | None:
    """The layout of ``module``'s output known from its type (``None`` for element-wise and
    unknown modules, whose output is laid out like their input)."""
    if isinstance(module, _SAME_MODULES):
        return "same"
    return "channels_first" if isinstance(module, _CHANNELS_FIRST_MODULES) else None


def torch_to_flax_layout(x: Any, flax_shape: Sequence[int] | None, hint: Layout | None = None) -> Any:
    """A torch activation ``x`` (numpy or jax) in the layout of its Flax counterpart.

    The Flax shape decides: ``x`` is moved channels-first -> channels-last when only the moved
    shape is ``flax_shape``, kept when only its own shape is. When both are (``C`` equal to
    every spatial size) or neither is (a mismatch the caller reports), ``hint`` decides, and
    without one an ``ndim >= 3`` activation is read channels-first.
    """
    shape = tuple(np.shape(x))
    moved = (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else shape
    target = None if flax_shape is None else tuple(flax_shape)
    if len(shape) < 3 or (target == shape and target != moved):
        return x
    if target == moved and target != shape:
        return _move_channels_last(x)
    return x if hint == "same" else _move_channels_last(x)


def _move_channels_last(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return to_channels_last(x)
    return jnp.moveaxis(x, 1, -1)


def activation_to_flax(
    x: np.ndarray, flatten_shape: Sequence[int] | None = None, layout: Layout = "channels_first"
) -> np.ndarray:
    """A torch activation in Flax layout.

    ``ndim >= 3`` and ``layout='channels_first'``: channels-first -> channels-last;
    ``layout='same'`` (tokens): unchanged. With ``flatten_shape`` (the channels-first
    ``(C, *spatial)`` that was flattened into a 2-D ``(N, C*prod(spatial))`` input), the
    features are re-ordered from torch's flatten order to Flax's. Otherwise unchanged.
    """
    x = np.asarray(x)
    if flatten_shape:
        n = x.shape[0]
        return to_channels_last(x.reshape(n, *flatten_shape)).reshape(n, -1)
    return to_channels_last(x) if x.ndim >= 3 and layout == "channels_first" else x


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


def is_linen(model: Any) -> bool:
    """True for a ``flax.linen.Module``."""
    import flax.linen as nn

    return isinstance(model, nn.Module)


def is_nnx(model: Any) -> bool:
    """True for a ``flax.nnx.Module``."""
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
        if is_linen(model):
            if variables is None:
                raise ValueError(
                    "a Linen model needs its variables: pass variables={'params': ..., "
                    "'batch_stats': ...} (e.g. from parity.convert.torch_to_linen)"
                )
            self.kind = "linen"
            self.params = jax.tree.map(jnp.asarray, dict(variables["params"]))
            self.batch_stats = jax.tree.map(jnp.asarray, dict(variables.get("batch_stats", {})))
            self.rest = None
        elif is_nnx(model):
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


def flax_dropout_hook(
    uniforms: Mapping[str, Sequence[jax.Array]], inner: FlaxHook | None = None, *, torch_layout: bool = False
) -> FlaxHook:
    """A :data:`FlaxHook` that applies shared masks to Flax ``Dropout`` calls.

    ``uniforms`` is ``{flax name: [u per call]}`` in Flax layout, or with ``torch_layout`` as
    torch drew them, each brought to the layout of the Flax dropout's input when it is called
    (:func:`torch_to_flax_layout`: channels-first maps are moved, tokens ``(N, L, D)`` are not).
    Other calls go to ``inner`` (or straight through). Works at trace time inside ``jit``.
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
            u = jnp.asarray(uniforms[name][k])
            if torch_layout and args:
                u = torch_to_flax_layout(u, np.shape(args[0]))
            m = mask_scale(u, float(module.rate), jnp)
            masked = lambda x, *a, **kw: x * m.astype(x.dtype)
            return inner(name, module, masked, args, kwargs) if inner else masked(*args, **kwargs)
        return inner(name, module, call_next, args, kwargs) if inner else call_next(*args, **kwargs)

    return hook


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A detached CPU numpy copy of ``t`` (same dtype and layout)."""
    return t.detach().cpu().numpy().copy()


def torch_device(model: tnn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a parameter-free model)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@dataclass
class TorchRun:
    """One recorded torch forward: leaf calls ``(name, call index)`` in order, their inputs and
    outputs (numpy, torch layout), values per channel of each BN, and the dropout uniforms."""

    order: list[tuple[str, int]]
    inputs: dict[tuple[str, int], np.ndarray]
    outputs: dict[tuple[str, int], np.ndarray]
    bn_counts: dict[str, int]
    uniforms: dict[str, list[np.ndarray]]


def run_torch(
    model: tnn.Module,
    x: np.ndarray,
    train: bool,
    masks: SharedDropout | None,
    given_uniforms: Mapping | None = None,
    step: int = 0,
) -> TorchRun:
    """Run ``model`` (modified: stats update in train mode) and record every leaf call."""
    run = TorchRun([], {}, {}, {}, {})
    counts: dict[str, int] = {}
    leaves = leaf_modules(model)

    def hook(name):
        def fn(module, args, output):
            k = counts.get(name, 0)
            counts[name] = k + 1
            run.order.append((name, k))
            if args and isinstance(args[0], torch.Tensor):
                run.inputs[(name, k)] = to_numpy(args[0])
                if isinstance(module, tnn.modules.batchnorm._BatchNorm):
                    run.bn_counts[name] = args[0].numel() // args[0].shape[1]
            if isinstance(output, torch.Tensor):
                run.outputs[(name, k)] = to_numpy(output)

        return fn

    model.train(train)
    dev = torch_device(model)
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


def name_mapper(layer_map: Mapping[str, str] | None) -> Callable[[str], str]:
    """``torch name -> flax name`` through ``layer_map`` (identity for names it does not list)."""
    layer_map = dict(layer_map or {})
    return lambda torch_name: layer_map.get(torch_name, torch_name)


def flax_bn_stats(pure_bs: Mapping, flax_name: str) -> dict | None:
    """``{'mean', 'var'}`` of BN ``flax_name`` (path joined by ``.``) in a pure ``batch_stats``
    tree, or ``None`` when the tree has no such BN."""
    node: Any = pure_bs
    for part in flax_name.split("."):
        if isinstance(node, Mapping) and part not in node and part.isdigit():
            part = int(part)  # NNX list items (nnx.List) are keyed by int in pure dicts
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) and "mean" in node and "var" in node else None


def torch_loss(name: str) -> Callable:
    """``'cross_entropy'`` (integer labels ``(...)`` for logits ``(..., C)``, mean over every
    label) or ``'mse'`` as a torch loss ``(out, y) -> scalar``."""
    import torch.nn.functional as F

    if name == "cross_entropy":  # classes on the last dimension, as in optax: (..., C), labels (...)
        return lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1).long())
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


def torch_gradients(
    tm: tnn.Module,
    x: np.ndarray,
    y: np.ndarray,
    loss: str,
    masks: SharedDropout | None,
    step: int,
    given: Mapping | None = None,
) -> tuple[dict[str, np.ndarray], set[str], list[str], dict]:
    """``(grads, names without a grad, leaf call order, dropout uniforms)`` of ``loss(tm(x), y)``.

    ``tm`` runs in its current mode and dtype (``x`` is cast to it); a parameter without a
    gradient counts as zero. ``given`` replays the dropout uniforms of an earlier run.
    """
    dev = torch_device(tm)
    dtype = next(tm.parameters()).dtype
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, a, o, n=n: order.append(n)) for n, m in leaf_modules(tm).items()
    ]
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [h.remove() for h in handles])
        record = stack.enter_context(torch_shared_dropout(tm, masks, step, given=given)) if masks else {}
        tm.zero_grad(set_to_none=True)
        xt = torch.from_numpy(x).to(dev)
        out = tm(xt.to(dtype) if xt.is_floating_point() else xt)
        torch_loss(loss)(out, torch.from_numpy(y).to(dev)).backward()
    grads = {
        n: (to_numpy(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), to_numpy(p).dtype))
        for n, p in tm.named_parameters()
    }
    return grads, {n for n, p in tm.named_parameters() if p.grad is None}, order, record


def flax_gradients(
    side: FlaxSide,
    x: np.ndarray,
    y: np.ndarray,
    loss: str,
    train: bool,
    uniforms: Mapping | None,
    rng: jax.Array | None,
    float64: bool = False,
    *,
    input_layout: Layout = "channels_first",
    torch_layout: bool = False,
) -> dict:
    """The Flax gradient tree (numpy, Flax layout) of the mean ``loss``; ``float64`` casts the
    parameters, statistics and the input (torch layout ``x``, given to Flax per
    ``input_layout``) to float64 under ``jax.enable_x64``. ``uniforms`` (``{flax name: [u per
    call]}``, channels-last, or as torch drew them with ``torch_layout``) are the shared
    dropout masks (:func:`flax_dropout_hook`)."""
    lf = flax_loss(loss)
    hook = flax_dropout_hook(uniforms, torch_layout=torch_layout) if uniforms is not None else None
    with jax.enable_x64(True) if float64 else contextlib.nullcontext():
        cast = float_cast(jnp.float64 if float64 else None)
        params, bstats, rest = (jax.tree.map(cast, t) for t in (side.params, side.batch_stats, side.rest))
        xf, yj = cast(jnp.asarray(activation_to_flax(x, layout=input_layout))), jnp.asarray(y)

        def f(p):
            out, _, _ = side.apply(p, bstats, rest, xf, train=train, hook=hook, rng=rng)
            return lf(out, yj)

        return side.pure(jax.jit(jax.grad(f))(params))


def float_cast(dtype) -> Callable:
    """Cast floating arrays to ``dtype`` (identity when ``dtype`` is None); others unchanged."""

    def cast(a):
        if dtype is None or not (hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)):
            return a
        return jnp.asarray(a, dtype)

    return cast
