"""The two sides of every comparison, with the same method names: :class:`TorchSide` and
:class:`FlaxSide` each offer ``forward``, ``activations``, ``gradients`` and ``bn_stats``.

Torch tensors are channels-first (NCHW / NCW), Flax arrays channels-last (NHWC / NWC); the
layout rules are :mod:`parity.layout`'s. Nothing here compares anything.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from parity.arrays import to_jax
from parity.harness import flax_grad
from parity.harness.dropout import (
    FlaxHook,
    SharedDropout,
    flax_dropout_active,
    flax_dropout_hook,
    is_flax_dropout,
    torch_shared_dropout,
)
from parity.harness.flax_grad import float_cast
from parity.layout import Layout, activation_to_flax


def leaf_modules(model: tnn.Module) -> dict[str, tnn.Module]:
    """``{name: module}`` for every module without children (the root only if it is a leaf)."""
    return {n: m for n, m in model.named_modules() if not any(True for _ in m.children())}


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
    ``programs`` keeps the compiled gradient programs (:func:`parity.harness.flax_grad.gradient_program`);
    sides of one pair share it (:meth:`parity.harness.pair.ModelPair.flax_side`).
    """

    def __init__(
        self,
        model: Any,
        variables: Mapping | None = None,
        call_kwargs: Callable[[bool], dict] | None = None,
        programs: dict | None = None,
    ) -> None:
        self.model = model
        self._call_kwargs = call_kwargs
        self.programs = {} if programs is None else programs
        if is_linen(model):
            if variables is None:
                raise ValueError(
                    "a Linen model needs its variables: pass variables={'params': ..., "
                    "'batch_stats': ...} (e.g. from parity.convert.torch_to_linen)"
                )
            self.kind = "linen"
            self.params = jax.tree.map(to_jax, dict(variables["params"]))
            self.batch_stats = jax.tree.map(to_jax, dict(variables.get("batch_stats", {})))
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

    is_dropout = staticmethod(is_flax_dropout)
    dropout_active = staticmethod(flax_dropout_active)

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

        ``rng`` feeds the ``'dropout'`` stream of a Linen model, and through ``'params'`` any
        other stream it draws from (NNX models use their own ``Rngs``). In eval mode the statistics come back unchanged.
        """
        kwargs = self.mode_kwargs(train)
        if self.kind == "linen":
            import flax.linen as nn

            variables = {"params": params}
            if batch_stats:
                variables["batch_stats"] = batch_stats
            mutable = ["batch_stats"] if (train and batch_stats) else False
            # a port that hard-codes deterministic=False needs a dropout rng even in eval mode
            key = rng if rng is not None else jax.random.key(0)
            # 'params' is the stream Linen's make_rng falls back to for any name it was not
            # given: a port's own stream (a DropPath's make_rng('drop_path')) runs, not crashes
            rngs = {"dropout": key, "params": jax.random.fold_in(key, 1)}

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

    # -- the shared interface (same names as TorchSide) ---------------------------------
    def forward(self, x: np.ndarray, train: bool, hook: FlaxHook | None = None, float64: bool = False):
        """The output (numpy) of one pass on ``x`` (Flax layout) from the stored weights and
        statistics, nothing updated; ``float64``: everything cast to float64 under
        ``jax.enable_x64``."""
        with jax.enable_x64(True) if float64 else contextlib.nullcontext():
            cast = float_cast(jnp.float64 if float64 else None)
            p, b, r = (jax.tree.map(cast, t) for t in (self.params, self.batch_stats, self.rest))
            out, _, _ = self.apply(p, b, r, cast(to_jax(x)), train=train, hook=hook)
            return np.asarray(out)

    def activations(self, x: np.ndarray, plan: FlaxCapture, train: bool, rng: jax.Array | None):
        """Run once on ``x`` (Flax layout), capturing every submodule call that has a torch
        counterpart in ``plan.run``: ``({(torch name, call): output}, new batch_stats)``."""
        from parity.layout import torch_to_flax_layout

        trun, to_flax, fshapes = plan.run, plan.to_flax, plan.flatten_shapes
        from_flax = {to_flax(n): n for n, _ in trun.order}
        fouts: dict[tuple[str, int], np.ndarray] = {}
        fcounts: dict[str, int] = {}

        def capture(name, module, call_next, args, kwargs):
            tname = from_flax.get(name)
            k = fcounts.get(name, 0)
            fcounts[name] = k + 1
            if plan.inputs is not None and tname is not None and args:
                plan.inputs[(tname, k)] = np.asarray(args[0])  # before any reinjection
            if plan.reinject and tname is not None and (tname, k) in trun.inputs and args:
                xin = trun.inputs[(tname, k)]
                flat = fshapes.get(tname)
                xin = (
                    activation_to_flax(xin, flat)
                    if flat
                    else torch_to_flax_layout(xin, np.shape(args[0]), like=np.asarray(args[0]))
                )
                args = (to_jax(xin, args[0].dtype), *args[1:])
            out = call_next(*args, **kwargs)
            if tname is not None:
                fouts[(tname, k)] = np.asarray(out)
            return out

        uniforms = {to_flax(n): [jnp.asarray(u) for u in us] for n, us in trun.uniforms.items()}
        hook = flax_dropout_hook(uniforms, capture, torch_layout=True) if plan.shared_masks else capture
        xf = to_jax(x)
        _, new_bs, _ = self.apply(
            self.params, self.batch_stats, self.rest, xf, train=train, hook=hook, rng=rng
        )
        return fouts, new_bs

    def gradients(
        self,
        x: np.ndarray,
        y: np.ndarray,
        loss: str,
        train: bool,
        uniforms: Mapping | None,
        rng: jax.Array | None,
        float64: bool = False,
        input_layout: Layout = "channels_first",
    ) -> dict:
        """:func:`flax_gradients` of this side (``x`` torch layout, masks as torch drew them)."""
        return flax_grad.flax_gradients(
            self, x, y, loss, train, uniforms, rng, float64, input_layout=input_layout, torch_layout=True
        )

    def drop_programs(self) -> None:
        """Forget the gradient programs not taken, cancelling those not started yet."""
        for pending in self.programs.values():
            pending.cancel()
        self.programs.clear()

    def bn_stats(self, batch_stats: Any = None) -> dict:
        """The running statistics (stored, or ``batch_stats``) as a pure Linen-style tree."""
        return self.pure(self.batch_stats if batch_stats is None else batch_stats)


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
    model: tnn.Module | None = None


def run_torch(
    model: tnn.Module,
    x: np.ndarray,
    train: bool,
    masks: SharedDropout | None,
    given_uniforms: Mapping | None = None,
    step: int = 0,
) -> TorchRun:
    """Run ``model`` (modified: stats update in train mode) and record every leaf call."""
    run = TorchRun([], {}, {}, {}, {}, model)
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
    # the model's float dtype (its first float parameter or buffer); a model with neither (a
    # pooling layer alone) computes in the input's dtype, so its float64 pass stays float64
    p = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    dtype = p.dtype if p is not None else None
    with contextlib.ExitStack() as stack:
        if masks is not None:
            run.uniforms = stack.enter_context(torch_shared_dropout(model, masks, step, given=given_uniforms))
        handles = [m.register_forward_hook(hook(n)) for n, m in leaves.items()]
        stack.callback(lambda: [h.remove() for h in handles])
        with torch.no_grad():
            xt = torch.from_numpy(np.asarray(x)).to(dev)
            model(xt.to(dtype) if dtype is not None and xt.is_floating_point() else xt)
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


def torch_gradients(
    tm: tnn.Module,
    x: np.ndarray,
    y: np.ndarray,
    loss: str,
    masks: SharedDropout | None,
    step: int,
    given: Mapping | None = None,
    private: bool = False,
) -> tuple[dict[str, np.ndarray], set[str], list[str], dict]:
    """``(grads, names without a grad, leaf call order, dropout uniforms)`` of ``loss(tm(x), y)``.

    ``tm`` runs in its current mode and dtype (``x`` is cast to it); a parameter without a
    gradient counts as zero. ``given`` replays the dropout uniforms of an earlier run.
    ``private``: ``tm`` is a copy no one else uses, so the gradients are numpy views of its
    ``.grad`` tensors instead of copies (a float64 ResNet-18 holds 94 MB less).
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
    grad = (lambda t: t.detach().cpu().numpy()) if private else to_numpy
    grads = {
        n: (grad(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), to_numpy(p).dtype))
        for n, p in tm.named_parameters()
    }
    return grads, {n for n, p in tm.named_parameters() if p.grad is None}, order, record


@dataclass(frozen=True)
class FlaxCapture:
    """What :meth:`FlaxSide.activations` captures: the torch run to align with, the name map,
    the flatten shapes of dense layers fed by a flatten, whether each Flax layer gets the torch
    layer's input (``reinject``) and whether torch's dropout masks are replayed; ``inputs``, when
    given, receives each captured layer's own input (``{(torch name, call): array}``)."""

    run: TorchRun
    to_flax: Callable[[str], str]
    flatten_shapes: Mapping[str, Sequence[int]]
    reinject: bool
    shared_masks: bool
    inputs: dict | None = None


class TorchSide:
    """A torch model seen through the same methods as :class:`FlaxSide`; every method works on
    a private copy, so the model is never modified. Inputs are channels-first numpy."""

    kind = "torch"

    def __init__(self, model: tnn.Module) -> None:
        self.model = model

    def copy(self, train: bool, float64: bool = False) -> tnn.Module:
        """A private copy in ``train`` or eval mode (float64 on request)."""
        tm = copy.deepcopy(self.model).train(train)
        return tm.double() if float64 else tm

    def forward(
        self,
        x: np.ndarray,
        train: bool,
        masks: SharedDropout | None = None,
        given: Mapping | None = None,
        float64: bool = False,
    ) -> tuple[np.ndarray, dict]:
        """``(output, dropout uniforms)`` of one pass (shared masks when ``masks``; ``given``
        replays earlier ones)."""
        tm = self.copy(train, float64)
        with contextlib.ExitStack() as stack:
            record = stack.enter_context(torch_shared_dropout(tm, masks, 0, given=given)) if masks else {}
            stack.enter_context(torch.no_grad())
            xt = torch.from_numpy(x).to(torch_device(tm))
            out = tm(xt.to(next(tm.parameters()).dtype) if xt.is_floating_point() else xt)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the torch model returned {type(out).__name__}, not a tensor")
        return to_numpy(out), record

    def activations(
        self,
        x: np.ndarray,
        train: bool,
        masks: SharedDropout | None,
        given: Mapping | None = None,
        step: int = 0,
        float64: bool = False,
    ) -> TorchRun:
        """Every leaf call of one pass on a private copy (:func:`run_torch`); ``run.model`` is
        the copy, with its statistics updated in train mode."""
        if float64:
            x = x.astype(np.float64) if x.dtype.kind == "f" else x
            return run_torch(
                copy.deepcopy(self.model).double(), x, train, masks, given_uniforms=given, step=step
            )
        return run_torch(copy.deepcopy(self.model), x, train, masks, given_uniforms=given, step=step)

    def gradients(
        self,
        x: np.ndarray,
        y: np.ndarray,
        loss: str,
        train: bool,
        masks: SharedDropout | None,
        step: int,
        given: Mapping | None = None,
        float64: bool = False,
    ) -> tuple[dict[str, np.ndarray], set[str], list[str], dict, tnn.Module]:
        """:func:`torch_gradients` on a private copy, and that copy (the gradients are views of
        its ``.grad`` tensors)."""
        tm = self.copy(train, float64)
        return (*torch_gradients(tm, x, y, loss, masks, step, given=given, private=True), tm)

    def bn_stats(self) -> dict[str, dict[str, np.ndarray]]:
        """``{bn_name: {'mean', 'var'}}`` of the running statistics."""
        return {
            n: {"mean": to_numpy(m.running_mean), "var": to_numpy(m.running_var)}
            for n, m in self.model.named_modules()
            if isinstance(m, tnn.modules.batchnorm._BatchNorm)
        }
