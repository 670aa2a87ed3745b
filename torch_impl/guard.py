"""Runtime mode guard for PyTorch: evaluate without losing modes, and refuse to train in eval mode.

PyTorch keeps the mode in a mutable flag, ``Module.training``, on every submodule; whoever
called ``train()`` / ``eval()`` last decides how BatchNorm and Dropout behave. This module
gives the tools the catalogue (``MODE_BUGS.md``) recommends:

* :func:`eval_mode` — a context manager for an evaluation: it captures every submodule's
  ``training`` flag, calls ``model.eval()`` and, on exit (exception included), writes each
  flag back exactly. It never calls ``.train()`` on the root, which would unfreeze a BatchNorm
  frozen on purpose with ``bn.eval()``. This is PyTorch Lightning's ``_ModuleMode``
  capture/restore (``lightning.pytorch.utilities.model_helpers``, used around validation since
  2.2 after its users' frozen-BN reports). :func:`train_mode` is the mirror image for a
  training block and keeps modules marked frozen in eval mode.
* :func:`assert_training` — raises :class:`ModeError` naming every BatchNorm / Dropout module
  (by qualified name, e.g. ``bn1``) found in eval mode during a training step, except those the
  user declared frozen: passed in ``frozen=`` (names or module objects) or marked on the module
  with :func:`mark_frozen`. It also names declared-frozen modules found in *train* mode, which
  is how a later ``model.train()`` silently unfreezing them shows up.
* :func:`guarded_step` — a decorator that calls :func:`assert_training` before each call of a
  training step, e.g. ``torch_impl.train.train_step``.
* :func:`training_guard` — the same check from a forward pre-hook, for loops you cannot edit:
  every forward pass of the root with autograd enabled (a *training-step pass*, the definition
  :class:`torch_impl.audit.ModeAudit` uses) is checked.

The BatchNorm / Dropout modules are enumerated by :func:`torch_impl.audit.mode_layers`, the
same set :class:`torch_impl.audit.ModeAudit` records. Only those modules read ``training`` in
this project's models; a custom module that reads the flag itself is not checked.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from torch_impl.audit import mode_layers

__all__ = [
    "FROZEN_ATTR",
    "ModeError",
    "assert_training",
    "capture_modes",
    "eval_mode",
    "frozen_modules",
    "guarded_step",
    "mark_frozen",
    "mode_report",
    "restore_modes",
    "set_train",
    "train_mode",
    "training_guard",
    "unmark_frozen",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute set on a module by :func:`mark_frozen`; read by :func:`assert_training` and
#: :func:`train_mode`. A mark on a container covers every module under it.
FROZEN_ATTR = "_parity_frozen"


class ModeError(RuntimeError):
    """A training step found modules in the wrong mode; the message names each one.

    A ``RuntimeError`` rather than an ``AssertionError`` on purpose: it reports the state of a
    running program (like PyTorch's own mode errors), it must not be mistaken for a failed test
    assertion, and it is raised whether or not Python runs with ``-O``.

    Attributes: ``in_eval`` (names of unfrozen BN/Dropout modules found in eval mode) and
    ``frozen_in_train`` (names of declared-frozen modules found in train mode).
    """

    def __init__(self, message: str, in_eval: list[str], frozen_in_train: list[str]) -> None:
        super().__init__(message)
        self.in_eval = in_eval
        self.frozen_in_train = frozen_in_train


# --------------------------------------------------------------------------- capture/restore


def capture_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every submodule of ``model`` (the root included) with its current ``training`` flag.

    Modules are held by reference, so :func:`restore_modes` restores the same objects even if
    attributes were renamed in between; modules added after the capture are left alone.
    """
    return [(m, m.training) for m in model.modules()]


def restore_modes(captured: Iterable[tuple[nn.Module, bool]]) -> None:
    """Write each captured ``training`` flag back, module by module (no ``train()`` call)."""
    for m, flag in captured:
        m.training = flag


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate inside the block; afterwards every submodule has exactly its previous mode.

    ``model.eval()`` is called on entry (so a subclass's ``train()`` override is honoured);
    on exit, normal or by exception, each submodule's ``training`` flag is set back to what it
    was, so a BatchNorm frozen with ``bn.eval()`` inside a model in train mode stays frozen.
    Does not disable autograd: combine with ``torch.no_grad()`` as needed (see MODE_BUGS.md row 3)::

        with eval_mode(model), torch.no_grad():
            logits = model(x_test)
    """
    captured = capture_modes(model)
    try:
        model.eval()
        yield model
    finally:
        restore_modes(captured)


@contextlib.contextmanager
def train_mode(model: nn.Module, frozen: Iterable[str | nn.Module] = ()) -> Iterator[nn.Module]:
    """Train inside the block with every module in train mode except the frozen ones (marked
    with :func:`mark_frozen` or named in ``frozen``, see :func:`set_train`); afterwards every
    submodule has exactly its previous mode."""
    captured = capture_modes(model)
    try:
        set_train(model, frozen)
        yield model
    finally:
        restore_modes(captured)


# ------------------------------------------------------------------------------- freezing


def mark_frozen(module: nn.Module) -> nn.Module:
    """Declare ``module`` (and everything under it) intentionally frozen, and put it in eval mode.

    :func:`assert_training` then accepts it in eval mode, and reports it if something (a
    later ``model.train()``) put it back in train mode; :func:`set_train` and
    :func:`train_mode` keep it in eval mode. Returns ``module``. Freezing the *parameters*
    (``requires_grad_(False)`` or leaving them out of the optimizer) is a separate decision.
    """
    setattr(module, FROZEN_ATTR, True)
    module.eval()
    return module


def unmark_frozen(module: nn.Module) -> nn.Module:
    """Undo :func:`mark_frozen` (the mode is not changed). Returns ``module``."""
    if hasattr(module, FROZEN_ATTR):
        delattr(module, FROZEN_ATTR)
    return module


def frozen_modules(model: nn.Module, frozen: Iterable[str | nn.Module] = ()) -> set[str]:
    """Qualified names of the modules of ``model`` declared frozen, containers expanded.

    ``frozen`` holds qualified names (``"bn1"``, ``"backbone.layer1"``) or module objects; a
    module marked with :func:`mark_frozen` counts too. A name or object that is not part of
    ``model`` raises ``ValueError`` (a typo must not silently disable the check).
    """
    named = dict(model.named_modules())
    by_id = {id(m): name for name, m in named.items()}
    roots: set[str] = set()
    for f in frozen:
        if isinstance(f, nn.Module):
            if id(f) not in by_id:
                raise ValueError(
                    f"frozen module {type(f).__name__} is not a submodule of {type(model).__name__}"
                )
            roots.add(by_id[id(f)])
        elif isinstance(f, str):
            if f not in named:
                raise ValueError(
                    f"frozen name {f!r} is not a submodule of {type(model).__name__}; "
                    f"known: {', '.join(n for n in named if n) or '(none)'}"
                )
            roots.add(f)
        else:
            raise TypeError(f"frozen entries are names or modules, got {type(f).__name__}")
    roots |= {name for name, m in named.items() if getattr(m, FROZEN_ATTR, False)}
    return {name for name in named if any(r == "" or name == r or name.startswith(r + ".") for r in roots)}


def set_train(model: nn.Module, frozen: Iterable[str | nn.Module] = ()) -> nn.Module:
    """``model.train()``, then put the frozen modules (marked, or named in ``frozen``) back in
    eval mode: the fine-tuning-safe replacement for a bare ``model.train()``. Returns ``model``."""
    names = frozen_modules(model, frozen)
    model.train()
    for name, m in model.named_modules():
        if name in names:
            m.training = False
    return model


# -------------------------------------------------------------------------------- the guard


def mode_report(model: nn.Module, frozen: Iterable[str | nn.Module] = ()) -> tuple[list[str], list[str]]:
    """``(in_eval, frozen_in_train)``: names of unfrozen BN/Dropout modules in eval mode, and of
    declared-frozen BN/Dropout modules in train mode (both in module order)."""
    names = frozen_modules(model, frozen)
    layers = mode_layers(model)
    in_eval = [n for n, m in layers.items() if not m.training and n not in names]
    frozen_in_train = [n for n, m in layers.items() if m.training and n in names]
    return in_eval, frozen_in_train


def _describe(model: nn.Module, names: list[str]) -> str:
    layers = mode_layers(model)
    return ", ".join(f"{n or '<root>'} ({type(layers[n]).__name__})" for n in names)


def assert_training(
    model: nn.Module, frozen: Iterable[str | nn.Module] = (), *, check_frozen: bool = True
) -> None:
    """Raise :class:`ModeError` unless every BatchNorm / Dropout of ``model`` is in train mode.

    Modules declared frozen (``frozen`` names or objects, containers included, or
    :func:`mark_frozen`) may be in eval mode; with ``check_frozen`` (the default) they *must*
    be, so a ``model.train()`` that silently unfroze them is reported too. Cost: one walk over
    ``named_modules()``; no tensor is touched, so it never synchronises a GPU.
    """
    frozen = tuple(frozen)
    in_eval, frozen_in_train = mode_report(model, frozen)
    if not check_frozen:
        frozen_in_train = []
    if not in_eval and not frozen_in_train:
        return
    parts = []
    if in_eval:
        parts.append(
            f"training step with {len(in_eval)} BatchNorm/Dropout module(s) in eval mode: "
            f"{_describe(model, in_eval)}. BatchNorm would normalise with its running statistics "
            "(and not update them) and Dropout would be off. Usual cause: an evaluation helper "
            "called model.eval() and nothing restored train mode; call model.train() at the start "
            "of every epoch, or evaluate inside torch_impl.guard.eval_mode(model). If these "
            "modules are frozen on purpose, pass frozen=[...] or mark them with mark_frozen()"
        )
    if frozen_in_train:
        parts.append(
            f"{len(frozen_in_train)} module(s) declared frozen are in train mode: "
            f"{_describe(model, frozen_in_train)}. A later model.train() unfroze them; use "
            "torch_impl.guard.set_train(model) (or train_mode) instead of model.train()"
        )
    raise ModeError("; ".join(parts) + ".", in_eval, frozen_in_train)


def guarded_step(
    step: F | None = None,
    /,
    *,
    model: nn.Module | None = None,
    frozen: Iterable[str | nn.Module] = (),
    check_frozen: bool = True,
) -> F | Callable[[F], F]:
    """Decorate a training step so that every call first runs :func:`assert_training`.

    The model checked is ``model=`` if given, else the call's first positional argument (the
    convention of ``torch_impl.train.train_step(model, optimizer, x, y)``)::

        step = guarded_step(torch_impl.train.train_step)           # checks its first argument

        @guarded_step(model=net, frozen=["bn1"])
        def step(x, y): ...
    """
    if isinstance(step, nn.Module):
        raise TypeError("guarded_step decorates a step function; pass the model as model=...")
    frozen = tuple(frozen)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            target = model if model is not None else (args[0] if args else None)
            if not isinstance(target, nn.Module):
                raise TypeError(
                    f"guarded_step({fn.__name__}): no model to check; pass model= or "
                    "call the step with the model as its first argument"
                )
            assert_training(target, frozen, check_frozen=check_frozen)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate(step) if step is not None else decorate


@contextlib.contextmanager
def training_guard(
    model: nn.Module,
    frozen: Iterable[str | nn.Module] = (),
    *,
    check_frozen: bool = True,
    on_violation: Callable[[ModeError], None] | None = None,
) -> Iterator[nn.Module]:
    """Inside the block, every forward pass of ``model`` with autograd enabled runs
    :func:`assert_training` first, so a training loop you cannot edit raises :class:`ModeError`
    at its first step in the wrong mode::

        with training_guard(model):
            torch_impl.train.fit_seed_bug(model, ...)   # raises at the first step of epoch 1

    Passes under ``torch.no_grad()`` / ``torch.inference_mode()`` (evaluation) are not checked,
    so an evaluation must run under one of them (``torch_impl.train.evaluate`` does). The hook
    is removed on exit.

    ``on_violation``, if given, receives the :class:`ModeError` instead of it being raised, so a
    study can record where the guard would have stopped a run and let the run go on.
    """
    frozen = tuple(frozen)
    frozen_modules(model, frozen)  # validate the names now, not at step 1

    def hook(module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():
            try:
                assert_training(module, frozen, check_frozen=check_frozen)
            except ModeError as e:
                if on_violation is None:
                    raise
                on_violation(e)

    handle = model.register_forward_pre_hook(hook)
    try:
        yield model
    finally:
        handle.remove()
